"""Every error class of the library derives from :class:`rskd_loss.RSKDError` and keeps its built-in base.

The classes are found in the source (:mod:`ast`, no import: the integrations' frameworks may be
absent) of ``rskd_loss/`` and ``baselines/`` (installed as ``rskd_loss.baselines``): a class whose name
or a base's name ends in ``Error`` or ``Exception``. A new error class that is not listed below with
the built-in it stands for fails here, and so does a listed one without the base class.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import rskd_loss
from rskd_loss import RSKDError

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"rskd_loss": ROOT / "rskd_loss", "rskd_loss.baselines": ROOT / "baselines"}
#: "module:class" -> the built-in exception its callers catch it as
BUILTIN_BASE = {"rskd_loss.priors:PriorError": ValueError, "rskd_loss.fileio:DiskWriteError": OSError}


def _base_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def declared_error_classes() -> set[str]:
    """``module:class`` of every exception class declared in the library's source (``RSKDError`` left out)."""
    found = set()
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            module = ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                if not isinstance(node, ast.ClassDef) or node.name == "RSKDError":
                    continue
                names = [node.name, *(_base_name(b) for b in node.bases)]
                if any(n.endswith(("Error", "Exception")) for n in names):
                    found.add(f"{module}:{node.name}")
    return found


def _cls(spec: str) -> type[BaseException]:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def test_every_library_error_is_listed():
    assert declared_error_classes() == set(BUILTIN_BASE)


@pytest.mark.parametrize("spec", sorted(BUILTIN_BASE))
def test_each_library_error_is_caught_as_rskd_error_and_as_its_builtin(spec):
    cls = _cls(spec)
    assert issubclass(cls, RSKDError) and issubclass(cls, BUILTIN_BASE[spec]), cls.__mro__
    exc = cls(28, "disk full", "f") if issubclass(cls, OSError) else cls("no prior for the rule 'region'")
    for base in (RSKDError, BUILTIN_BASE[spec]):
        with pytest.raises(base):
            raise exc


def test_rskd_error_is_exported_and_a_plain_exception():
    assert "RSKDError" in rskd_loss.__all__ and rskd_loss.RSKDError is RSKDError
    assert RSKDError.__bases__ == (Exception,)
    # the OSError subclass keeps its errno, file name and one-line message under the second base
    exc = _cls("rskd_loss.fileio:DiskWriteError")(28, "cannot write f: disk full (ENOSPC)", "f")
    assert (exc.errno, exc.filename, str(exc)) == (28, "f", "cannot write f: disk full (ENOSPC)")
