import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gflow import ConfigError, GflowError, RunConfig
from gflow.config import FIELD_TYPES


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("alpha", -1.0, "alpha = -1.0: must lie in [1e-150, 1e150]"),
        ("alpha", 1e300, "alpha = 1e+300: must lie in [1e-150, 1e150]: the loss divides by alpha"),
        ("alpha", 0.0, "alpha = 0.0"),
        ("width", 0, "width = 0: must be >= 1"),
        ("dataset", "cifar", "must be one of digits, fashion-mnist, mnist, teacher"),
        ("act", "gelu", "must be one of softplus, relu, swish, tanh"),
        ("solver", "adam", "solver = 'adam'"),
        ("loss", "l1", "must be one of softhinge, hinge, qhinge, mse"),
        ("t_end", 0.0, "t_end = 0.0"),
        ("t_end", math.inf, "t_end = inf"),
        ("ptr", "many", "ptr = 'many': must be an integer"),
        ("centered", 1, "must be true or false"),
    ],
)
def test_bad_field_names_the_field_and_what_is_allowed(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        RunConfig(**{field: value})
    assert info.value.field == field


def test_toml_round_trip_preserves_every_field(tmp_path):
    cfg = RunConfig(alpha=0.3, width=17, classes=(1, 3, 5), max_dout=math.inf, stop_margin=1.0, centered=False)
    cfg.save(tmp_path / "run.toml")
    assert RunConfig.load(tmp_path / "run.toml") == cfg


def test_json_round_trip_preserves_every_field():
    cfg = RunConfig(alpha=1e-3, pca=10, seed=4)
    assert RunConfig.from_json(cfg.to_json()) == cfg


def test_toml_accepts_a_run_table_and_integer_for_float_fields(tmp_path):
    (tmp_path / "a.toml").write_text("[run]\nalpha = 2\nwidth = 8\n")
    cfg = RunConfig.load(tmp_path / "a.toml")
    assert cfg.alpha == 2 and cfg.width == 8


@pytest.mark.parametrize(
    "text,message",
    [("alpha = ", "not valid TOML"), ("colour = 1", "unknown field 'colour'"), ("alpha = -2", "alpha = -2")],
)
def test_unreadable_or_invalid_toml_is_a_clear_error(tmp_path, text, message):
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(GflowError, match=message):
        RunConfig.load(tmp_path / "bad.toml")


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(GflowError, match="cannot read config"):
        RunConfig.load(tmp_path / "absent.toml")


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.integers(-3, 12), max_size=4))


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.sampled_from(sorted(FIELD_TYPES)), _VALUES, max_size=6))
def test_random_configs_are_valid_or_one_clean_error(data):
    try:
        cfg = RunConfig.from_dict(data)
    except GflowError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert RunConfig.from_json(cfg.to_json()) == cfg


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_random_toml_text_is_a_config_or_one_clean_error(tmp_path, text):
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        RunConfig.load(path)
    except GflowError as e:
        assert str(e)


def test_config_parsing_never_evaluates_code(tmp_path):
    path = tmp_path / "evil.toml"
    path.write_text('dataset = "__import__(\'os\').system(\'touch pwned\')"\n')
    with pytest.raises(GflowError, match="dataset"):
        RunConfig.load(path)
    assert not (tmp_path / "pwned").exists()


def test_float_fields_reject_nan_and_infinite_budgets_are_clean(tmp_path):
    with pytest.raises(GflowError, match="alpha"):
        RunConfig(alpha=float("nan"))
    assert np.isfinite(RunConfig().t_end)


def test_the_papers_tau_schedule_is_tau_over_h_times_sqrt_h_alpha_capped():
    cfg = RunConfig(solver="momentum", tau_over_h=1e-3, tau_alpha_crit=1e3, width=100)
    assert cfg.replace(alpha=1.0).time_constant == pytest.approx(1e-3 * 10.0)
    assert cfg.replace(alpha=1e3).time_constant == pytest.approx(1e-3 * 1e3)  # sqrt(h) alpha = 1e4, capped
    assert RunConfig(solver="momentum", tau_over_h=1e-2, width=400, alpha=0.5).time_constant == pytest.approx(0.1)
    assert RunConfig(solver="momentum", tau=3.0).time_constant == 3.0


@pytest.mark.parametrize("changes,field", [
    ({"tau_alpha_crit": 1e3}, "tau_alpha_crit"),
    ({"tau_over_h": 1e-3, "tau": 2.0}, "tau"),
    ({"tau_over_h": -1.0}, "tau_over_h"),
])
def test_the_tau_schedule_is_given_whole_or_not_at_all(changes, field):
    with pytest.raises(ConfigError, match=field):
        RunConfig(solver="momentum", **changes)


@pytest.mark.parametrize("fields,message", [
    ({"save_at": [2.0, 1.0]}, "save_at = [2.0, 1.0]: must be increasing, without repeats"),
    ({"save_at": [0.0, 1.0]}, "each a finite number > 0"),
    ({"save_at": [1.0], "saves": 5}, "saves = 5: save_at lists the save times"),
    ({"save_at": [1.0, 2e4]}, "must lie in (0, t_end = 10000]"),
    ({"save_spacing": "cubic"}, "save_spacing = 'cubic': must be one of log, linear"),
    ({"device": "gpu0"}, "device = 'gpu0': must be cpu, cuda or cuda:N"),
    ({"threads": 0}, "threads = 0: must be >= 1"),
    ({"batchnorm": "train"}, "batchnorm = 'train': must be one of calibrate, as-is, refuse"),
    ({"weight_decay": -1.0}, "weight_decay = -1.0: must be a finite number >= 0"),
    ({"weight_decay_center": "w0"}, "must be one of zero, init"),
    ({"width_from": "channels"}, "width_from = 'channels': names a model_args key"),
])
def test_new_fields_are_validated_in_one_line(fields, message):
    with pytest.raises(GflowError) as e:
        RunConfig(**fields)
    assert message in str(e.value)


def test_save_schedules_explicit_linear_and_log():
    from gflow.methods import save_times

    assert save_times(RunConfig(save_at=[60.0, 70.0, 110.0], t_end=200.0)) == [0.0, 60.0, 70.0, 110.0, 200.0]
    assert save_times(RunConfig(save_spacing="linear", saves=5, save_t_min=20.0, t_end=100.0)) == \
        [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    log = save_times(RunConfig(saves=3, save_t_min=1.0, t_end=100.0))
    assert log == pytest.approx([0.0, 1.0, 10.0, 100.0])


def test_network_width_of_builtin_and_user_models():
    assert RunConfig(width=30).network_width == 30
    assert RunConfig(model="a:b", model_args={"width": 64}).network_width == 64
    assert RunConfig(model="a:b", model_args={"channels": 16}, width_from="channels").network_width == 16
    assert math.isnan(RunConfig(model="a:b", model_args={"depth": 2}).network_width)


def test_list_fields_round_trip_through_toml_and_json(tmp_path):
    cfg = RunConfig(save_at=[1.5, 3.0], device="cuda:1", threads=2)
    cfg.save(tmp_path / "c.toml")
    assert RunConfig.load(tmp_path / "c.toml") == cfg == RunConfig.from_json(cfg.to_json())
