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


def user_errors() -> tuple[type[BaseException], ...]:
    from recipes.config import ConfigError
    from recipes.data import BadImageError, CSVDataError
    from recipes.data.splits import SplitsMismatchError
    from recipes.engine.run_lock import RunLockedError
    from recipes.models.backbones import ModelError
    from rskd_loss.fileio import DiskWriteError
    from rskd_loss.priors import PriorError

    return (ConfigError, FileNotFoundError, CSVDataError, BadImageError, ModelError, FloatingPointError,
            SplitsMismatchError, PriorError, RunLockedError, DiskWriteError)


def run_command(main: Callable[[], Any], also: tuple[type[BaseException], ...] = ()) -> Any:
    """``main()``; a user's error (or one of ``also``) becomes one ``error: ...`` line on stderr and
    exit status 2."""
    try:
        return main()
    except (*user_errors(), *also) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
