"""The layers point one way, and Dagster's private API is touched in one module only.

Read from the source (imports anywhere in a module, including inside
functions), so a shortcut taken in a hurry fails here rather than in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "billing_assets"

# Which top-level parts of the package a part may import (besides itself).
ALLOWED = {
    "core": set(),
    "settings": {"core"},
    "registry": {"core", "settings"},
    "transport": {"core", "registry", "settings"},
    "storage": {"core", "settings"},
    "accounts": {"core", "registry", "delivery", "settings"},
    "delivery": {"core", "registry", "transport", "settings"},
    "pipeline": {"core", "registry", "storage", "transport", "settings", "accounts", "delivery"},
    "reports": {"core", "registry", "storage", "settings"},
    "defs": {"core", "registry", "storage", "transport", "pipeline", "reports", "settings", "accounts", "delivery"},
    "definitions": {"defs"},
    "cli": {"core", "registry", "storage", "transport", "pipeline", "reports", "defs", "definitions", "exporter", "devtools", "settings", "accounts", "delivery", "receiver"},
    "exporter": {"core"},
    "receiver": {"core", "exporter", "transport"},
    "devtools": set(),
}
PRIVATE_API_ADAPTER = "billing_assets/defs/dagster_internals.py"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        yield relative, ast.parse(path.read_text(), str(relative))


def _imports(tree) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _part(relative: Path) -> str:
    return relative.parts[1].removesuffix(".py")


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for relative, tree in _modules():
        part = _part(relative)
        if part not in ALLOWED:
            continue
        for name in _imports(tree):
            if name.startswith("billing_assets."):
                target = name.split(".")[1]
                if target != part and target not in ALLOWED[part]:
                    wrong.append(f"{relative} imports {name}")
    assert wrong == []


def test_every_part_of_the_package_has_a_place_in_the_layering():
    parts = {_part(relative) for relative, _ in _modules() if len(relative.parts) > 2 or relative.name != "__init__.py"}
    assert parts - {"__init__", "__main__"} <= set(ALLOWED)


def test_dagster_private_api_only_in_the_adapter():
    users = sorted(
        str(relative)
        for relative, tree in _modules()
        if any(name == "dagster._core" or name.startswith("dagster._") for name in _imports(tree))
    )
    assert users == [PRIVATE_API_ADAPTER]


def test_no_import_cycle_between_modules():
    """Module-level imports only (a function-level import is a deliberate late binding)."""
    graph: dict[str, set[str]] = {}
    for relative, tree in _modules():
        module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        targets = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("billing_assets"):
                targets |= {f"{node.module}.{alias.name}" for alias in node.names}
                targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("billing_assets")}
        graph[module] = targets
    # `from pkg import sub` loads the submodule, not a name defined by pkg/__init__.
    graph = {
        module: {t for t in targets if t in graph and t != module and not any(o.startswith(t + ".") and o in graph for o in targets)}
        for module, targets in graph.items()
    }
    cycles, state = [], {}

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_a_dagster_deprecation_reached_from_our_code_fails_the_test():
    """The pytest config turns deprecation and supersession warnings into errors when our code is the caller.

    The probe warns the way Dagster does (`warnings.warn` attributed to the
    caller's module); Dagster itself can mute its warnings per context, so
    the probe does not go through Dagster.
    """
    import pytest

    import dagster as dg

    for category in (DeprecationWarning, dg.SupersessionWarning):
        probe = compile("import warnings\nwarnings.warn('x is deprecated', category)\n", "billing_assets/probe.py", "exec")
        with pytest.raises(category, match="x is deprecated"):
            exec(probe, {"__name__": "billing_assets.probe", "category": category})
        exec(probe, {"__name__": "someone_else", "category": category})  # Dagster calling itself is not ours to fix
