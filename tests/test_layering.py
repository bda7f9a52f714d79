"""The house's layering: the library (``magicremover/``) imports no harness, baseline or entry point, and no module
imports another that imports it back (directly or through others), counting imports inside functions too. The harness
folders are installed as ``magicremover.<folder>`` (``setup.py``), so every import names them that way."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ("baselines", "eval", "experiments")
PACKAGES = ("magicremover", *HARNESS)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = ("magicremover", *parts) if parts[0] in HARNESS else parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def in_library(module: str) -> bool:
    return module.startswith("magicremover") and not module.startswith(tuple(f"magicremover.{h}" for h in HARNESS))


def imported_names(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for candidate in candidates:
                if candidate in modules:
                    targets.add(candidate)
                    break
        graph[name] = targets - {name}
    return graph


def test_the_library_imports_nothing_above_it():
    upward = {
        (module, target)
        for module, targets in import_graph().items()
        if in_library(module)
        for target in targets
        if not in_library(target) or target == "magicremover.api"
    }
    assert not {pair for pair in upward if pair[0] != "magicremover"}, sorted(upward)


def test_no_import_circles():
    graph, circles = import_graph(), []

    def visit(module, path):
        for target in sorted(graph[module]):
            if target in path:
                circles.append(path[path.index(target) :] + [target])
            elif target not in finished:
                visit(target, path + [target])
        finished.add(module)

    finished = set()
    for module in sorted(graph):
        if module not in finished:
            visit(module, [module])
    # A package's __init__ re-exporting its own modules is not a circle of behaviour.
    real = [c for c in circles if not any(c[i + 1].startswith(c[i] + ".") for i in range(len(c) - 1))]
    assert not real, real


def test_every_import_uses_the_one_installed_name():
    """``import eval`` works in a checkout by accident of the working directory; the wheel has no such package."""
    files = [p for folder in (*PACKAGES, "tests") for p in (ROOT / folder).rglob("*.py") if "oracles" not in p.parts]
    stale = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in imported_names(path)
        if name.split(".")[0] in HARNESS
    ]
    assert not stale, stale
