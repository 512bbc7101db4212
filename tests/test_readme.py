"""Every README snippet runs as printed: the Python blocks in order in one interpreter (in a
scratch directory), the TOML blocks parse as a config or a sweep."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gflow import RunConfig
from gflow._toml import read_toml
from gflow.sweep import Sweep

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_the_readme_has_the_snippets_this_test_runs():
    assert len(_blocks("python")) >= 4 and len(_blocks("toml")) >= 2 and len(_blocks("bash")) == 2


@pytest.mark.slow
def test_python_snippets_run_as_printed(tmp_path):
    script = tmp_path / "readme.py"
    script.write_text("\n\n".join(_blocks("python")))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = [float(v) for v in proc.stdout.split()[:4]]
    assert values[0] == pytest.approx(4.36e-5, rel=0.01) and values[2] == pytest.approx(4.5399929762484854e-05, rel=1e-12)


def test_toml_snippets_are_valid_configs_and_sweeps(tmp_path):
    for i, text in enumerate(_blocks("toml")):
        path = tmp_path / f"snippet{i}.toml"
        path.write_text(text)
        data = read_toml(path, "snippet")
        if "grid" in data:
            assert Sweep.load(path).runs()
        else:
            assert RunConfig.from_dict(data).model == data.get("model")


def test_quick_start_commands_are_the_ones_ci_runs():
    install_run, install_test = (block.strip() for block in _blocks("bash"))
    assert install_run.startswith("pip install torch==2.13.0 && pip install -e .") and "gflow run" in install_run
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q torch==2.13.0" in ci and "python -m pytest -q" in ci
    assert install_test.endswith("python -m pytest -q")
