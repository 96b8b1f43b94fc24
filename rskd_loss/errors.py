"""The one base class of every error this package (and its recipes) raises on purpose.

Each error class keeps the built-in base its callers already catch (``PriorError`` is a
``ValueError``, ``DiskWriteError`` an ``OSError``) and adds :class:`RSKDError`, so one ``except``
catches them all::

    try:
        ...  # anything of rskd_loss or recipes/
    except rskd_loss.RSKDError as exc:
        print(f"error: {exc}")  # a data, config, prior, model or disk problem to fix; the message says how

An exception that is not an ``RSKDError`` (a ``RuntimeError`` from torch, an ``IndexError``) is a bug
or a failure outside the package, and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["RSKDError"]


class RSKDError(Exception):
    """Base of every error class of ``rskd_loss`` and ``recipes``: ``except RSKDError`` catches them all.

    Derive a new error class from it and from the built-in it stands for, in that order, e.g.
    ``class PriorError(RSKDError, ValueError)``.
    """
