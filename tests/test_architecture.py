"""The package's shape, as docs/architecture.md states it: the import graph has no cycle (imports
inside functions included; those only the type checker reads left out), and nothing outside
``contrib/`` imports ``contrib/``."""

from __future__ import annotations

import ast
import pathlib

import asyncbridge

PACKAGE = pathlib.Path(asyncbridge.__file__).parent


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its text (a function body too)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # "from . import x" imports the module x; "from .m import x" imports m (x may be
                # one of m's names or a submodule of the package m)
                targets = [f"{stem}.{alias.name}" for alias in node.names]
                if node.module:
                    targets.append(stem)
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            found.update(t for t in targets if t in modules)
        found.discard(name)
        graph[name] = found
    return graph


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that can run, imports inside functions included: all but ``if TYPE_CHECKING:``
    blocks, which only the type checker reads."""
    found: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_core_imports_no_adapter_of_contrib() -> None:
    offenders = {
        module: sorted(d for d in deps if d.startswith("asyncbridge.contrib"))
        for module, deps in import_graph().items()
        if not module.startswith("asyncbridge.contrib")
    }
    assert {m: d for m, d in offenders.items() if d} == {}


# The modules that are the handle (docs/architecture.md, "The handle"): only they touch its fields.
HANDLE_MODULES = {
    "_result",
    "_machine",
    "_reading",
    "_by_id",
    "_callbacks",
    "_unread",
    "_blocking",
    "_awaiting",
    "_progress",
    "_cf_compat",
    "_waiters",
    "_state",
}
# What work may read of its own handle (its name, limits, runner, source, the cancel request);
# everything else goes through the producer API (methods), and nothing outside writes any field.
READABLE_FIELDS = {"_label", "_time_limit", "_deadline", "_attempts", "_loop", "_src", "_cancel_requested"}
# Fields of the same name on objects that are not handles (multiprocessing's own, after a fork).
NOT_HANDLES = {("_process", "tracker._lock"), ("_process", "server._lock")}


def handle_field_uses() -> list[tuple[str, int, str, bool]]:
    """(module, line, expression, is_write) for each use of a handle's field on another object."""
    fields = set(ab_slots())
    found = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path).removeprefix("asyncbridge.")
        if name in HANDLE_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Attribute) and node.attr in fields):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue  # an object's own field of that name (a stand-in's, a pool's)
            text = ast.unparse(node)
            if (name, text) in NOT_HANDLES:
                continue
            found.append((name, node.lineno, text, isinstance(node.ctx, ast.Store | ast.Del)))
    return found


def ab_slots() -> list[str]:
    return [slot for cls in asyncbridge.Result.__mro__ for slot in getattr(cls, "__slots__", ())]


def test_only_the_handle_writes_its_fields() -> None:
    writes = [f"{m}:{line} {text}" for m, line, text, is_write in handle_field_uses() if is_write]
    assert writes == []


def test_work_reads_only_what_the_producer_api_lets_it() -> None:
    reads = [
        f"{m}:{line} {text}"
        for m, line, text, is_write in handle_field_uses()
        if not is_write and text.rpartition(".")[2] not in READABLE_FIELDS
    ]
    assert reads == []
