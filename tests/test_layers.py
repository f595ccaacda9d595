"""The house stays standing: sdopt's modules import one way, down the layers declared here, with no circle.

Every ``import`` counts, function-level ones included (they are still a dependency, only a later one);
imports under ``if TYPE_CHECKING:`` do not (they exist for annotations only). A module may import from
its own layer or a lower one. A new module must be given a layer here: the test names it otherwise.
See docs/architecture.md for the picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "sdopt"

# Bottom first. A module matches the first pattern that names it or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundations",
        (
            "sdopt._version",
            "sdopt.errors",
            "sdopt.logging",
            "sdopt._noise",
            "sdopt.cache_dir",
            "sdopt.requirements",
            "sdopt.transaction",
            "sdopt.undo",
            "sdopt.anatomy",
            "sdopt.timing",
            "sdopt.outputs",
        ),
    ),
    ("machine facts", ("sdopt.probes", "sdopt.capabilities")),
    (
        "calls and simulation",
        ("sdopt.calls", "sdopt.timed_calls", "sdopt.fidelity", "sdopt.originals", "sdopt.simulation"),
    ),
    (
        "optimization kit",
        ("sdopt.weights", "sdopt.verification", "sdopt.speed_guard", "sdopt.footprint", "sdopt.optimization"),
    ),
    ("optimizations", ("sdopt.optimizations",)),
    ("registry and presets", ("sdopt.registry", "sdopt.presets", "sdopt.tier_versions", "sdopt.tiers")),
    ("planning", ("sdopt.report", "sdopt.planning")),
    ("engine", ("sdopt.engine",)),
    ("tuning", ("sdopt.tuning",)),
    ("facade", ("sdopt.api",)),
    ("measurement and loading", ("sdopt.loading", "sdopt.bench", "sdopt.quality", "sdopt.optimization_docs")),
    ("apps", ("sdopt.cli", "sdopt.commands", "sdopt.generate", "sdopt.serve", "sdopt.distributed", "sdopt.fit")),
    ("for users' tests and scripts", ("sdopt.testing", "sdopt.architectures")),
    ("package root (re-exports only)", ("sdopt",)),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}


def layer_of(module: str) -> int:
    for index, (_, patterns) in enumerate(LAYERS):
        if any(module == pattern or module.startswith(pattern + ".") for pattern in patterns if pattern != "sdopt"):
            return index
    if module == "sdopt":
        return len(LAYERS) - 1
    raise AssertionError(f"{module} has no layer: add it to LAYERS in tests/test_layers.py")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str) -> set[str]:
    """The sdopt modules ``module`` imports anywhere in its code, except under ``if TYPE_CHECKING:``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    resolved = set()
    for name in found:
        while name not in MODULES and "." in name:
            name = name.rpartition(".")[0]
        # A module importing a package above it (other than the root) adds no dependency: Python has
        # run that package's __init__ before the module itself (sdopt.serve.app -> sdopt.serve).
        own_package = module.startswith(name + ".") and name != "sdopt"
        if name in MODULES and name != module and name.startswith("sdopt") and not own_package:
            resolved.add(name)
    return resolved


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_from_a_layer_above_it() -> None:
    climbs = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not climbs, "imports that climb a layer:\n" + "\n".join(climbs)


def test_the_import_graph_has_no_circle() -> None:
    state: dict[str, str] = {}
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                circle = [*path[path.index(target) :], target]
                pytest.fail("import circle: " + " -> ".join(circle))
            if target not in state:
                walk(target)
        path.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            walk(module)


def test_nothing_imports_the_package_root() -> None:
    assert [module for module, targets in GRAPH.items() if "sdopt" in targets] == []


def test_product_modules_do_not_import_the_testing_package() -> None:
    users = [
        m
        for m, targets in GRAPH.items()
        if not m.startswith("sdopt.testing")
        and "sdopt.testing" in {t if not t.startswith("sdopt.testing.") else "sdopt.testing" for t in targets}
    ]
    assert users == []


def test_optimizations_import_no_other_optimization_nor_the_registry() -> None:
    def public_optimization(module: str) -> bool:  # an optimization, not a _helper private to the folder
        inside = module.removeprefix("sdopt.optimizations.").split(".")
        return module.startswith("sdopt.optimizations.") and not any(part.startswith("_") for part in inside)

    reaching = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if public_optimization(module)
        for target in targets
        if public_optimization(target) or target == "sdopt.registry"
    ]
    assert reaching == []


def test_no_module_is_over_600_lines() -> None:
    long = {module: n for module, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 600}
    assert long == {}


def test_the_layer_test_sees_function_level_imports_and_skips_type_checking_ones(tmp_path: Path) -> None:
    # The rules above are only as good as the parser: a climb hidden in a function still counts.
    assert "sdopt.tuning" in GRAPH["sdopt.api"]  # `from sdopt.tuning import optimize_tuned` inside optimize()
    assert "sdopt.tuning" not in GRAPH["sdopt.report"]  # under TYPE_CHECKING only


def test_plugins_written_for_the_old_base_module_still_import_it() -> None:
    from sdopt.optimizations.base import Optimization as Old

    from sdopt import registry
    from sdopt.optimization import Optimization

    assert Old is Optimization
    assert "base" not in registry.names()
