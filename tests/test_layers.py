"""The layers import downwards only: core/ is the torch-free domain every layer shares, the API sends work
through the dispatcher alone, and only workers/ loads models. Read from the source, so a new import that
breaks the rule fails here before it tangles the packages."""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import limits

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "workers", "db", "storage", "core", "cli")
MODEL_LIBRARIES = ("torch", "diffusers", "transformers", "safetensors", "accelerate")


def _runtime_imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in ``path`` that runs (those under ``if TYPE_CHECKING:`` do not)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped.update(id(child) for inner in node.body for child in ast.walk(inner))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)


def _imports(package: str) -> list[tuple[str, str]]:
    return [
        (f"{path.relative_to(REPO)}:{line}", module)
        for path in sorted((REPO / package).rglob("*.py"))
        if "migrations" not in path.parts
        for line, module in _runtime_imports(path)
    ]


def _under(module: str, *roots: str) -> bool:
    return any(module == root or module.startswith(root + ".") for root in roots)


def test_the_api_imports_only_the_dispatcher_and_the_celery_app_from_workers() -> None:
    allowed = ("workers.dispatch", "workers.celery_app")
    wrong = [
        (where, module)
        for where, module in _imports("api")
        if _under(module, "workers") and module != "workers" and not _under(module, *allowed)
    ]
    assert wrong == []


@pytest.mark.parametrize("package", ["workers", "db", "storage", "core"])
def test_nothing_below_the_api_imports_it(package: str) -> None:
    assert [(where, module) for where, module in _imports(package) if _under(module, "api")] == []


@pytest.mark.parametrize("package", ["db", "storage", "core"])
def test_the_lower_layers_never_import_workers(package: str) -> None:
    assert [(where, module) for where, module in _imports(package) if _under(module, "workers")] == []


def test_core_stands_on_its_own() -> None:
    others = ("api", "workers", "db", "storage", "cli", "training")
    assert [(where, module) for where, module in _imports("core") if _under(module, *others)] == []


# cli/ composes the processes (its `up` asks torch whether there is a GPU before it picks a preset).
@pytest.mark.parametrize("package", ["api", "db", "storage", "core"])
def test_only_workers_load_models(package: str) -> None:
    found = [(where, module) for where, module in _imports(package) if _under(module, *MODEL_LIBRARIES)]
    assert found == []


def test_each_limit_is_defined_once() -> None:
    names = {name for name in vars(limits) if name.isupper()}
    defined_elsewhere = []
    for package in (*PACKAGES, "training"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "core" / "limits.py":
                continue
            for node in ast.parse(path.read_text()).body:
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in names:
                        defined_elsewhere.append(f"{path.relative_to(REPO)}:{node.lineno} {target.id}")
    assert defined_elsewhere == []
