"""Every error class of the recipes derives from :class:`rskd_loss.RSKDError` and keeps its built-in base,
so that ``recipes/cli.py`` reports each of them as one ``error:`` line by naming the base class alone."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from recipes.cli import run_command, user_errors
from rskd_loss import RSKDError

ROOT = Path(__file__).resolve().parents[2]
#: "module:class" -> the built-in exception its callers catch it as
BUILTIN_BASE = {
    "recipes.config:ConfigError": ValueError,
    "recipes.data.csv_dataset:CSVDataError": ValueError,
    "recipes.data.csv_dataset:BadImageError": OSError,
    "recipes.data.splits:SplitsMismatchError": ValueError,
    "recipes.engine.run_lock:RunLockedError": RuntimeError,
    "recipes.engine.run_record:RecordError": ValueError,
    "recipes.engine.trunk_cache:TrunkCacheError": ValueError,
    "recipes.models.base:ModelError": ValueError,
    "recipes.table3.rows:SweepError": RuntimeError,
}


def declared_error_classes() -> set[str]:
    """``module:class`` of every class under recipes/ whose name ends in ``Error`` (read with ast, no import)."""
    found = set()
    for path in (ROOT / "recipes").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                found.add(f"{module}:{node.name}")
    return found


def _cls(spec: str) -> type[BaseException]:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def test_every_recipes_error_is_listed():
    assert declared_error_classes() == set(BUILTIN_BASE)


@pytest.mark.parametrize("spec", sorted(BUILTIN_BASE))
def test_each_recipes_error_derives_from_rskd_error_and_its_builtin(spec):
    cls = _cls(spec)
    assert issubclass(cls, RSKDError) and issubclass(cls, BUILTIN_BASE[spec]), cls.__mro__
    assert issubclass(cls, user_errors())  # one error line, exit status 2


def test_run_command_reports_any_rskd_error_as_one_line(capsys):
    class NewError(RSKDError, ValueError):
        pass

    def main():
        raise NewError("the config key x must be > 0, got -1")

    with pytest.raises(SystemExit) as stop:
        run_command(main)
    assert stop.value.code == 2 and capsys.readouterr().err == "error: the config key x must be > 0, got -1\n"
    with pytest.raises(KeyError):  # a bug keeps its traceback
        run_command(lambda: {}["x"])
