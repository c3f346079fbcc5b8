"""The package's shape, checked from the source: no import cycle, the lower layers import nothing
above them, no module grows past what a reader takes in at once.

The import graph is built from the AST of every module under imagetools/, with every import
statement wherever it stands: at the top, inside a function (a lazy import still makes the module
depend on the other), or under `if TYPE_CHECKING:` (a type-only import still couples the two).
An edge goes to the module an import names: `from .fs import base` and `from .fs.base import X`
both lead to imagetools.fs.base, `from .fs import open_filesystem` to imagetools.fs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "imagetools"
MAX_LINES = 600
# The lower layers, lowest first. A module of a layer may import, from imagetools: its own
# layer, the layers before it in this list, and leaf modules (top-level modules that import
# nothing from imagetools but imagetools.errors: errors, mender, sparse, tools, ...).
LAYERS = ("imagetools.strict", "imagetools.image", "imagetools.fs")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _target(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name `from ... import` starts from."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str) -> str:
    """The imagetools module `name` is, or is inside of (a name imported from a module)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str) -> set[str]:
    """Every imagetools module `module` imports, anywhere in its source."""
    path = MODULES[module]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {_known(alias.name) for alias in node.names if alias.name.startswith("imagetools")}
        elif isinstance(node, ast.ImportFrom):
            start = _target(module, path, node)
            if start == "imagetools" or start.startswith("imagetools."):
                found |= {_known(f"{start}.{alias.name}") for alias in node.names}
    return found - {module}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {module: _imports(module) for module in MODULES}


def _cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start → ... → start, if one exists (depth-first, each module visited once)."""
    stack, seen = [(start, [start])], set()
    while stack:
        module, path = stack.pop()
        for other in sorted(graph[module]):
            if other == start:
                return path + [start]
            if other not in seen:
                seen.add(other)
                stack.append((other, path + [other]))
    return None


def test_the_graph_sees_top_level_lazy_and_relative_imports(graph):
    """The parser behind the other checks: imports at the top, inside functions (the CLI loads its
    commands' libraries there) and relative ones (`from .base import`, `from ..image import`)."""
    assert "imagetools.menderconf.read" in graph["imagetools.verify"]
    assert "imagetools.menderconf.modify" in graph["imagetools.cli.config_cmd"]  # inside the command
    assert "imagetools.fs.base" in graph["imagetools.fs.ext4"]  # from .base import ...
    assert "imagetools.image.delta" in graph["imagetools.emit.unit"]  # from ..image import delta as ...


def test_no_import_cycle(graph):
    found = {frozenset(c): c for c in (_cycle_from(graph, m) for m in sorted(graph)) if c}
    cycles = {" → ".join(c) for c in found.values()}
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def _layer(module: str) -> int | None:
    return next((i for i, top in enumerate(LAYERS) if module == top or module.startswith(top + ".")), None)


def test_lower_layers_import_nothing_above_them(graph):
    leaves = {m for m, deps in graph.items() if m.count(".") == 1 and deps <= {"imagetools.errors"}}
    assert {"imagetools.errors", "imagetools.mender", "imagetools.sparse"} <= leaves
    wrong = []
    for module, deps in graph.items():
        layer = _layer(module)
        if layer is None:
            continue
        for dep in deps - leaves:
            if _layer(dep) is None or _layer(dep) > layer:
                wrong.append(f"{module} imports {dep}")
    assert not wrong, "imports from above their layer:\n" + "\n".join(sorted(wrong))


def test_no_module_over_600_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_verify_needs_no_server_client_and_no_preauth(graph):
    """verify runs per card on a station: nothing it imports, however indirectly, may reach the
    server client (httpx) or the preauth operations."""
    reached, todo = set(), ["imagetools.verify"]
    while todo:
        for dep in graph[todo.pop()] - reached:
            reached.add(dep)
            todo.append(dep)
    assert not {m for m in reached if m.startswith(("imagetools.server", "imagetools.preauth"))}
    assert "imagetools.menderconf.modify" not in reached and "imagetools.menderconf.validate" not in reached
