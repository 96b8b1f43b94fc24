"""How the recipes' command lines end on a user's error: one ``error:`` line and exit status 2.

A user's error is anything the user fixes by changing a config, a file or a folder: a config key, the
data (CSV, images, splits, label columns), a prior, a model setting, teacher checkpoints of other data,
a non-finite loss, a folder that another live process holds, or a write that failed (disk full, no
permission, read-only). Everything else is a bug, and keeps its traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from rskd_loss.errors import RSKDError


def user_errors() -> tuple[type[BaseException], ...]:
    """What :func:`run_command` reports as one line: every error class of the package and the recipes
    (:class:`rskd_loss.RSKDError`: config, data, splits, prior, model, run lock, disk, sweep), a missing
    file, and a non-finite loss (``FloatingPointError``, raised by the training loop)."""
    return (RSKDError, FileNotFoundError, FloatingPointError)


def run_command(main: Callable[[], Any], also: tuple[type[BaseException], ...] = ()) -> Any:
    """``main()``; a user's error (or one of ``also``) becomes one ``error: ...`` line on stderr and
    exit status 2."""
    try:
        return main()
    except (*user_errors(), *also) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
