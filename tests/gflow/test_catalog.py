"""The catalog of a directory of runs, queries on it, and the paper's figures."""

import json

import pytest

import gflow
from gflow import GflowError, RunConfig
from gflow.catalog import catalog, where
from gflow.cli import main
from gflow.plots import KINDS, plot


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("catalog")
    base = RunConfig(ptr=40, pte=20, t_end=5.0, saves=4, kernel_n=10, kernel_every=2, hessian_k=1)
    for alpha in (0.5, 2.0):
        for width in (6, 12):
            for seed in (0, 1):
                gflow.run(base.replace(alpha=alpha, width=width, seed=seed),
                          out / f"a{alpha}-h{width}-s{seed}.h5", progress=False)
    (out / "junk.h5").write_bytes(b"not a trajectory")
    return out


def test_catalog_has_a_row_per_file_with_config_and_results(runs):
    table = catalog(runs)
    assert len(table) == 9
    good = table[table["status"] == "finished"]
    assert len(good) == 8 and set(good["alpha"]) == {0.5, 2.0} and set(good["width"]) == {6, 12}
    row = good[good["file"] == "a2.0-h12-s1.h5"].iloc[0]
    traj = gflow.open(runs / "a2.0-h12-s1.h5")
    assert row["evals"] == traj.summary()["evals"] and row["test_err"] == traj.read("saves/test_err")[-1]
    assert row["kernel_change"] == traj.read("kernel/change")[-1] and row["kernel_change"] > 0
    bad = table[table["status"] == "unreadable"].iloc[0]
    assert bad["file"] == "junk.h5" and "not an HDF5 file" in bad["stop_reason"]


def test_where_filters_by_parsed_conditions(runs):
    table = catalog(runs)
    assert set(where(table, ["alpha>=1", "status==finished"])["alpha"]) == {2.0}
    assert len(where(table, ["width=6", "seed!=0"])) == 2
    with pytest.raises(GflowError, match="no column 'alpah'"):
        where(table, ["alpah>1"])
    with pytest.raises(GflowError, match="expected COLUMN OP VALUE"):
        where(table, ["__import__('os')"])
    with pytest.raises(GflowError, match="< needs a number"):
        where(table, ["status<finished"])


def test_query_csv_has_a_header_of_field_and_result_names(runs, capsys):
    assert main(["query", str(runs), "--where", "status==finished", "--columns", "alpha", "width", "seed",
                 "status", "evals", "test_err", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "alpha,width,seed,status,evals,test_err" and len(lines) == 9
    assert main(["query", str(runs), "--where", "alpha<1", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 4 and all(r["alpha"] == 0.5 for r in records)


def test_query_table_shows_what_differs_between_runs_and_csv_keeps_every_column(runs, capsys):
    assert main(["query", str(runs)]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header[:2] == ["file", "status"] and set(header[2:5]) == {"alpha", "width", "seed"}
    assert {"evals", "test_err", "kernel_change", "sharpness"} <= set(header) and "depth" not in header
    assert header[-1] == "stop_reason"  # junk.h5 is unreadable: its reason is shown
    assert main(["query", str(runs), "--where", "status==finished"]) == 0
    assert "stop_reason" not in capsys.readouterr().out.splitlines()[0].split()
    for extra in (["--format", "csv"], ["--columns", "all"]):
        assert main(["query", str(runs), *extra]) == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert len(first.replace(",", " ").split()) == len(catalog(runs).columns), extra


@pytest.mark.parametrize("kind", KINDS)
def test_every_figure_is_drawn_to_a_png(runs, tmp_path, kind):
    out = plot(runs, kind, tmp_path / f"{kind}.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_learning_curves_of_one_scale_name_it_in_the_legend_not_in_a_colour_bar(runs, tmp_path):
    from gflow.plots import learning_curves_figure

    assert len(learning_curves_figure(runs).axes) == 5  # four panels and the colour bar of sqrt(h) alpha
    base = RunConfig(ptr=40, pte=20, width=6, t_end=5.0, saves=4)
    for seed in (0, 1):
        gflow.run(base.replace(seed=seed), tmp_path / f"s{seed}.h5", progress=False)
    fig = learning_curves_figure(tmp_path)
    assert len(fig.axes) == 4
    assert fig.axes[0].get_legend().get_title().get_text().endswith(f"= {6 ** 0.5:.3g}")


def test_plot_errors_are_clean(tmp_path):
    with pytest.raises(GflowError, match="no such directory"):
        plot(tmp_path / "missing", "phase", tmp_path / "x.png")
    with pytest.raises(GflowError, match="kind = 'pie'"):
        plot(tmp_path, "pie", tmp_path / "x.png")


def test_a_figure_without_a_suffix_gets_png_and_says_so(runs, tmp_path, capsys):
    assert main(["plot", str(runs), "--kind", "phase", "-o", str(tmp_path / "x")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'x.png'}" and (tmp_path / "x.png").exists()


@pytest.mark.parametrize("name,message", [("missing/x.png", "directory .*missing does not exist"),
                                          ("x.tiff", "unknown format '.tiff'")])
def test_a_figure_path_that_cannot_be_written_is_one_line_exit_2(runs, tmp_path, capsys, name, message):
    assert main(["plot", str(runs), "--kind", "phase", "-o", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and __import__("re").search(message, err)
    assert list(tmp_path.iterdir()) == []


def test_the_ensemble_figure_with_one_seed_per_point_is_a_clear_error(runs, tmp_path):
    one_seed = tmp_path / "one"
    one_seed.mkdir()
    for path in runs.glob("*-s0.h5"):
        (one_seed / path.name).write_bytes(path.read_bytes())
    with pytest.raises(GflowError, match="at least two seeds per point"):
        plot(one_seed, "ensemble", tmp_path / "e.png")


def test_weight_scaling_recovers_the_lazy_slope_with_an_offset_per_width():
    import numpy as np
    import pandas as pd

    from gflow.timescales import weight_scaling

    rows = []
    for width, offset in ((25, 2.0), (100, 1.0)):
        for alpha in (10.0, 100.0, 1000.0):
            scale = np.sqrt(width) * alpha
            rows.append({"status": "finished", "width": width, "alpha": alpha,
                         "weight_change": offset * scale**-1.0 / np.sqrt(width)})
    fit = weight_scaling(pd.DataFrame(rows))
    assert fit["exponent"] == pytest.approx(-1.0) and fit["runs"] == 5  # h = 25, alpha = 10 is below 100
    with pytest.raises(GflowError, match="two or more values"):
        weight_scaling(pd.DataFrame(rows[:1]))


def test_rows_are_sorted_by_the_numbers_in_file_names(runs):
    from gflow.catalog import natural_key

    files = [f for f in catalog(runs)["file"] if f != "junk.h5"]
    assert files == sorted(files, key=natural_key)
    assert files.index("a0.5-h12-s0.h5") < files.index("a2.0-h6-s0.h5")
    names = ["alpha=10_x", "alpha=2_y", "alpha=1e-2_z", "h=100", "h=30"]
    assert sorted(names, key=natural_key) == ["alpha=1e-2_z", "alpha=2_y", "alpha=10_x", "h=30", "h=100"]


def test_a_user_models_width_is_the_key_width_from_names_or_nan(tmp_path):
    base = RunConfig(model="tests.gflow.usercode:mlp", ptr=30, pte=10, t_end=2.0, saves=2)
    gflow.run(base.replace(model_args={"width": 8}), tmp_path / "w.h5", progress=False)
    gflow.run(base.replace(model_args={"width": 6}, width_from="width"), tmp_path / "n.h5", progress=False)
    gflow.run(base.replace(model="tests.gflow.layers:layernorm", model_args={}), tmp_path / "none.h5", progress=False)
    widths = catalog(tmp_path).set_index("file")["width"]
    assert widths["w.h5"] == 8 and widths["n.h5"] == 6 and widths.isna()["none.h5"]
