"""The house rules of the package layout, read from the source (every import, also those inside
functions): no import circle anywhere, ``correction`` never imports ``daemon``, the contract module
imports no part, and each part of ``daemon`` imports only parts below it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: daemon's parts, lowest first: a part may import only itself and parts before it. The movies'
#: way: discover and settle (intake), metadata and dose (series), correct (work), record (state),
#: publish (feed, handoff, dashboard); the engine drives them, the commands start it.
LAYERS = ("events", "exitcodes", "intake", "settings", "system", "series", "work", "state",
          "feed", "handoff", "dashboard", "engine", "simulation", "commands")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), at any depth of the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for top in ("correction", "daemon") for p in (ROOT / top).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    assert len(modules) > 50, "the sources were not found: every rule below would hold vacuously"
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            # "from daemon.x import y" names either module daemon.x.y or attribute y of daemon.x
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.endswith("__main__") or node.endswith("__main__"):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _parent_packages(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_module_imports_itself_back_through_any_chain_of_imports():
    graph = _graph()
    # a package's __init__ is imported with each of its modules: not an edge of the design
    graph = {m: {t for t in ts if t not in _parent_packages(m)} for m, ts in graph.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


#: what the pure library may import beside the standard library and itself (ncempy: the
#: optional ``dm4`` extra, imported only when a .dm4 gain is read)
LIBRARY_IMPORTS = {"numpy", "scipy", "mrcfile", "tifffile", "imagecodecs", "ncempy"}


def test_correction_imports_only_its_own_libraries_never_daemon_nor_service_libraries():
    """Not only watchdog, zmq, structlog, starfile and daemon: any package outside the
    library's list (pandas, rich, psutil ...) was let through before."""
    for name, targets in _graph().items():
        if name.startswith("correction"):
            assert not any(t.startswith("daemon") for t in targets), (name, targets)
    allowed = LIBRARY_IMPORTS | set(sys.stdlib_module_names) | {"__future__", "correction"}
    for path in (ROOT / "correction").rglob("*.py"):
        roots = {m.split(".")[0] for m in _imports(path) if m}
        assert roots <= allowed, (path, sorted(roots - allowed))


def _layer(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "daemon" or len(parts) < 2:
        return None
    return parts[1]


@pytest.mark.parametrize("part", LAYERS)
def test_each_part_of_daemon_imports_only_the_contract_and_parts_below_it(part):
    graph = _graph()
    allowed = set(LAYERS[: LAYERS.index(part) + 1])
    wrong = {}
    for name, targets in graph.items():
        if _layer(name) != part:
            continue
        bad = {t for t in targets if _layer(t) is not None and _layer(t) not in allowed}
        if bad:
            wrong[name] = sorted(bad)
    assert not wrong, f"{part} imports parts above it: {wrong}"


def test_the_contract_module_imports_the_standard_library_only():
    """Every part imports it: it brings nothing else along (numpy, the library, a part)."""
    roots = {m.split(".")[0] for m in _imports(ROOT / "daemon" / "events.py")}
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots


def test_every_daemon_module_belongs_to_a_named_part():
    for name in _graph():
        layer = _layer(name)
        assert layer is None or layer in LAYERS or layer in ("__main__",), name


def test_every_daemon_package_says_what_lives_there_and_what_it_may_import():
    for init in (ROOT / "daemon").rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 80 and "import" in doc.lower(), f"{init} needs a docstring naming its imports"


def test_the_release_the_records_name_is_the_one_the_daemon_says():
    """``S.motion.json``'s ``software.version`` (the installed distribution's, from
    pyproject.toml) and the daemon's ``__version__`` (its journal, feed and ``--version``)
    name one release: a release whose outputs differ is told apart by both."""
    from importlib import metadata

    from correction.report import software_record
    from daemon import __version__

    assert software_record()["version"] == metadata.version("motionwatch") == __version__
