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


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_gflow_imports(path: Path) -> set[str]:
    """gflow modules imported at module level (imports inside functions are deferred: no cycle)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{module}.{a.name}" if f"{module}.{a.name}" in _ALL else module for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gflow"):
            found.add(node.module)
    return {m for m in found if m in _ALL}


_ALL = {_module_name(p) for p in _modules("gflow")}


def test_gflow_has_no_import_cycles():
    graph = {_module_name(p): _top_level_gflow_imports(p) - {_module_name(p)} for p in _modules("gflow")}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, set()):
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


@pytest.mark.parametrize("module", ["gflow.store.format", "gflow.store.reader"])
def test_the_reader_never_imports_networks_or_user_code(module):
    """Opening a file needs no model: the format and the reader import only the config and errors."""
    path = ROOT / (module.replace(".", "/") + ".py")
    allowed = {"gflow.config", "gflow.errors", "gflow.store.format", "gflow.store.validate"}
    assert _top_level_gflow_imports(path) <= allowed
