"""A non-editable install holds every package of the source tree (pip install ., not only -e)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_package_and_the_shipped_experiments(tmp_path):
    source = tmp_path / "source"  # a clean copy: a build/ folder left in the checkout could hide a missing package
    source.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md", "gflow", "solvers"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set(zipfile.ZipFile(next(tmp_path.glob("gflow-*.whl"))).namelist())
    packages = {str(p.parent.relative_to(ROOT)) for top in ("gflow", "solvers") for p in (ROOT / top).rglob("__init__.py")}
    assert packages and all(f"{package}/__init__.py" in names for package in packages), packages - {
        n.rsplit("/", 1)[0] for n in names}
    assert {"gflow/store/reader.py", "gflow/store/validate.py"} <= names
    assert any(n.startswith("gflow/experiments/") and n.endswith(".toml") for n in names)
