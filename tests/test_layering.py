"""No import runs up the house: each module of robustsig imports only from its own layer or those below it (the
layers of DESIGN.md, with the study split into its core, the analyses and what assembles them). Imports under
``if TYPE_CHECKING:`` are for type hints only and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "robustsig"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "_atomic", "_cache", "_cells", "_contents", "_locks", "_progress", "_stamps", "_yaml", "distributed"),
    ("metrics",),
    ("data",),
    ("models",),
    ("extraction",),
    ("train",),
    ("study", "study.sections", "study._messages", "study.results", "study.pool", "study.ledger", "study.runlog",
     "study.baseline", "study.subjects", "study.tasks", "study.stores", "study.plan", "study.streams",
     "study.presets", "study.analysis"),
    ("report", "report.tables", "report.figures", "report.page"),
    ("study.analyses",),
    ("study.registry", "study.config"),
    ("report.html",),
    ("runner",),
    ("demo", "cli", "__main__"),
)
"""From the bottom up: metrics are pure math; the study's core holds what every analysis shares; the report's
primitives (pages, tables, figures) serve the analyses, which the registry lists; the config, the page assembly and
the runner sit on top of them, and the command line and the demo on top of everything."""


def layer_of(module: str) -> int:
    """The layer of ``robustsig.X.Y`` (the longest prefix listed); ``robustsig`` itself (its lazily loaded names and
    ``__version__``) is at the bottom."""
    if module == "robustsig":
        return 0
    name = module.removeprefix("robustsig.")
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer of {__name__}.LAYERS: add it")
    return best[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every robustsig import in the file, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
               for node in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith(
                "robustsig"):
            folder = SRC.parent.joinpath(*node.module.split("."))
            modules = [f"{node.module}.{alias.name}" for alias in node.names
                       if (folder / alias.name).is_dir() or (folder / f"{alias.name}.py").is_file()]
            found += [(node.lineno, target) for target in modules or [node.module]]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names
                      if alias.name.startswith("robustsig.")]
    return found


MODULES = sorted(path for path in SRC.rglob("*.py") if module_name(path) != "robustsig")


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_no_module_imports_from_a_layer_above_it(path):
    own = layer_of(module_name(path))
    upward = [f"line {line}: {target} (layer {layer_of(target)} > {own})" for line, target in imports(path)
              if layer_of(target) > own]
    assert upward == [], f"{module_name(path)} imports from above its layer: {upward}"


def test_the_check_sees_an_upward_import(tmp_path):
    """The oracle is real: a metrics module importing the study is caught."""
    source = tmp_path / "robustsig" / "metrics" / "bad.py"
    source.parent.mkdir(parents=True)
    source.write_text("from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    from robustsig.study.config import StudyConfig\n"
                      "def f():\n    from robustsig.report.html import build_report\n")
    assert [target for _, target in imports(source)] == ["robustsig.report.html"]
    assert layer_of("robustsig.report.html") > layer_of("robustsig.metrics.bad")
