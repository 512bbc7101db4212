"""Project-wide properties of the source: the dependency direction, and nothing read by
pickle or eval."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", _modules("solvers"), ids=lambda p: p.name)
def test_solvers_never_imports_gflow(path):
    assert "gflow" not in _imports(path)


@pytest.mark.parametrize("path", _modules("solvers") + _modules("gflow"), ids=lambda p: p.name)
def test_nothing_is_read_with_pickle_or_eval(path):
    tree = ast.parse(path.read_text())
    assert not _imports(path) & {"pickle", "dill", "cloudpickle", "marshal", "shelve"}
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not calls & {"eval", "exec"}
    keywords = [k for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords]
    assert not any(k.arg in ("allow_pickle", "weights_only") and getattr(k.value, "value", None) is (k.arg == "allow_pickle")
                   for k in keywords), "numpy/torch loads must not unpickle"
