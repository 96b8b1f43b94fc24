"""Input checks (and the reduction and compute-dtype rules) shared by every criterion in ``rskd_loss``
and ``baselines``.

Every check raises ``TypeError`` (wrong type) or ``ValueError`` (wrong shape or value) with a message
that names what was expected and what was given, so that a user's mistake never surfaces as a
traceback from deep inside torch.

Shape and dtype checks are free. Value checks (targets in {0, 1}, finite logits) read the tensor,
which on a GPU costs a host synchronisation per call; they are on by default and can be switched off
for a benchmarked training loop with :func:`value_checks` (``with value_checks(False): ...``) or
globally with the environment variable ``RSKD_VALUE_CHECKS=0``.

Under ``torch.compile`` the value checks are skipped while the code is traced: reading a tensor's
values on the host (``.item()``, ``bool(tensor)``) would split the graph, so
:func:`value_checks_enabled` returns ``False`` whenever ``torch.compiler.is_compiling()`` is true, and
every criterion of ``rskd_loss`` and ``baselines`` compiles to one graph. Shape, dtype and device checks
still run while tracing (they read no values). In eager mode nothing changes: the checks run unless
switched off. A compiled training step therefore does not see a NaN logit or a target of 2; check
the data once where it is read, or run a few eager steps first.
"""
from __future__ import annotations

import contextlib
import math
import operator
import os
import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

__all__ = [
    "REDUCTIONS",
    "check_reduction",
    "reduce_loss",
    "compute_dtype",
    "check_logits_targets",
    "check_same_shape",
    "as_class_counts",
    "as_float_vector",
    "as_multi_hot",
    "value_checks",
    "value_checks_enabled",
    "is_compiling",
    "check_probability",
    "check_positive",
    "check_int",
    "as_class_metric",
    "as_class_names",
    "check_thresholds",
]

REDUCTIONS = ("mean", "sum", "none")

_VALUE_CHECKS = os.environ.get("RSKD_VALUE_CHECKS", "1") not in ("0", "false", "False", "no")


def _dynamo_is_compiling() -> bool:
    # torch < 2.3 has no torch.compiler.is_compiling; torch._dynamo is loaded once anything compiles.
    dynamo = sys.modules.get("torch._dynamo")
    fn = getattr(dynamo, "is_compiling", None)
    return bool(fn()) if fn is not None else False


_is_compiling: Callable[[], bool] = getattr(
    getattr(torch, "compiler", None), "is_compiling", None
) or _dynamo_is_compiling


def is_compiling() -> bool:
    """Whether ``torch.compile`` is tracing the calling code now (``torch.compiler.is_compiling``; on a
    torch without it, ``torch._dynamo.is_compiling``). Always ``False`` in eager mode."""
    return bool(_is_compiling())


def value_checks_enabled() -> bool:
    """Whether value checks (binary targets, finite logits) run: the switch of :func:`value_checks`
    (``RSKD_VALUE_CHECKS``), and never while ``torch.compile`` traces the code (a check reads the
    tensor's values, which would split the graph)."""
    return _VALUE_CHECKS and not is_compiling()


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Context manager that switches the value checks on or off, then restores the previous state."""
    global _VALUE_CHECKS
    previous = _VALUE_CHECKS
    _VALUE_CHECKS = bool(enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS = previous


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is one of ``'mean' | 'sum' | 'none'``, else raise ``ValueError``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce a per-element loss: ``'mean'`` over all elements, ``'sum'``, or ``'none'`` (unchanged)."""
    check_reduction(reduction)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a loss is computed in: float16 / bfloat16 inputs in float32 (as autocast does for
    ``binary_cross_entropy_with_logits``), every other dtype as it is."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` unless two tensors have the same shape and device."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b} must have the same shape as {name_a}, expected {tuple(a.shape)}, "
            f"got {tuple(b.shape)}"
        )
    if a.device != b.device:
        raise ValueError(f"{name_b} must be on the same device as {name_a} ({a.device}), got {b.device}")


def check_logits_targets(
    logits: object,
    targets: object,
    *,
    logits_name: str = "logits",
    targets_name: str = "targets",
    binary: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the ``(logits, targets)`` pair of the loss contract and return them.

    ``logits`` must be a finite floating (N, C) tensor and ``targets`` a tensor of the same shape and device
    whose values are in {0, 1} (any dtype; ``binary=False`` admits soft targets in [0, 1]). The
    returned targets are cast to the dtype of ``logits`` (a new tensor; the caller's is untouched).
    The value checks follow :func:`value_checks_enabled` (off while ``torch.compile`` traces).
    """
    logits = _check_tensor(logits, logits_name)
    targets = _check_tensor(targets, targets_name)
    if logits.dim() != 2:
        raise ValueError(
            f"{logits_name} must be 2-D (N, C), got {logits.dim()}-D with shape {tuple(logits.shape)}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"{logits_name} must be a floating-point tensor, got {logits.dtype}")
    check_same_shape(logits, targets, logits_name, targets_name)
    checks = value_checks_enabled()
    if checks and logits.numel() and not bool(torch.isfinite(logits).all()):
        idx = tuple(int(i) for i in (~torch.isfinite(logits)).nonzero()[0])
        raise ValueError(f"{logits_name} must be finite, got {logits[idx].item()} at index {idx}")
    if checks and targets.numel():
        if binary:
            bad = (targets != 0) & (targets != 1)
            if bool(bad.any()):
                idx = tuple(int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"{targets_name} must be multi-hot with values in {{0, 1}}, got "
                    f"{targets[idx].item()!r} at index {idx}"
                )
        else:
            bad = (targets < 0) | (targets > 1) | torch.isnan(targets)
            if bool(bad.any()):
                idx = tuple(int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"{targets_name} must have values in [0, 1] (soft targets), got "
                    f"{targets[idx].item()!r} at index {idx}"
                )
    if targets.dtype != logits.dtype:
        targets = targets.to(logits.dtype)
    return logits, targets


def as_float_vector(values: object, name: str) -> torch.Tensor:
    """A sequence or tensor of one number per class as a new 1-D float64 CPU tensor.

    ``TypeError`` for a non-numeric input, ``ValueError`` for another shape than (C,).
    """
    if isinstance(values, torch.Tensor):
        t = values.detach().to("cpu", torch.float64)
    else:
        try:
            t = torch.as_tensor(values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                f"{name} must be a sequence of numbers or a tensor, got {type(values).__name__}"
            ) from exc
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (C,), one value per class, got shape {tuple(t.shape)}")
    return t


def as_multi_hot(targets: object, name: str = "targets", num_classes: int | None = None) -> np.ndarray:
    """An (N, C) multi-hot matrix (numpy or torch, any numeric or bool dtype) as a new numpy bool array.

    ``TypeError`` for another type or a non-numeric dtype; ``ValueError`` for another shape than
    (N, C) (with ``num_classes`` columns when given) or a value outside {0, 1}, naming its index.
    """
    if isinstance(targets, torch.Tensor):
        t = targets.detach().to("cpu")
        arr = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()
    elif isinstance(targets, np.ndarray):
        arr = targets
    else:
        raise TypeError(f"{name} must be a numpy array or a torch.Tensor (N, C), got {type(targets).__name__}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C), got {arr.ndim}-D with shape {tuple(arr.shape)}")
    if num_classes is not None and arr.shape[1] != num_classes:
        raise ValueError(f"{name} must have num_classes={num_classes} columns, got shape {tuple(arr.shape)}")
    if arr.dtype == np.bool_:
        return arr.copy()
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be numeric or bool, got dtype {arr.dtype}")
    ok = (arr == 0) | (arr == 1)
    if not bool(ok.all()):
        r, c = (int(x) for x in np.argwhere(~ok)[0])
        raise ValueError(
            f"{name} must be multi-hot with values in {{0, 1}}, got {arr[r, c].item()!r} at index ({r}, {c})"
        )
    return arr == 1


def as_class_counts(
    counts: object,
    num_classes: int | None = None,
    *,
    name: str = "class_counts",
    allow_zero: bool = True,
) -> torch.Tensor:
    """Turn a sequence or tensor of per-class counts into a 1-D float64 CPU tensor, checked.

    Raises ``TypeError`` for a non-numeric input, ``ValueError`` for a wrong length, a negative or
    non-finite count, or (``allow_zero=False``) a zero count, naming the offending class index.
    """
    t = as_float_vector(counts, name)
    if num_classes is not None and t.numel() != num_classes:
        raise ValueError(f"{name} must have {num_classes} entries (one per class), got {t.numel()}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not bool(torch.isfinite(t).all()):
        i = int((~torch.isfinite(t)).nonzero()[0])
        raise ValueError(f"{name} must be finite, got {t[i].item()} for class {i}")
    if bool((t < 0).any()):
        i = int((t < 0).nonzero()[0])
        raise ValueError(f"{name} must be >= 0, got {t[i].item():g} for class {i}")
    if not allow_zero and bool((t == 0).any()):
        zeros = (t == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"{name} must be > 0 for every class (the formula divides by it), got 0 for class "
            f"{zeros[0]}" + (f" (and {len(zeros) - 1} more: {zeros[1:6]})" if len(zeros) > 1 else "")
        )
    return t


def check_probability(value: float, name: str, *, low_open: bool = True, high_open: bool = True) -> float:
    """Raise ``ValueError`` unless ``value`` lies in the interval (0, 1) (ends open or closed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    lo_ok = value > 0 if low_open else value >= 0
    hi_ok = value < 1 if high_open else value <= 1
    if not (lo_ok and hi_ok):
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """Raise ``ValueError`` unless ``value`` is a positive (or, with ``allow_zero``, >= 0) number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (value >= 0 if allow_zero else value > 0) or value != value:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """Return ``value`` as a Python int if it is an integer (int, numpy integer, 0-d integer tensor:
    anything with ``__index__``) and, when ``minimum`` is given, ``>= minimum``.

    ``TypeError`` for a bool, a float or any other non-integer (``"{name} must be an int, got float
    2.5"``), ``ValueError`` below ``minimum`` (``"{name} must be >= 1, got 0"``).
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def as_class_metric(metric: object, name: str) -> torch.Tensor:
    """A per-class metric (e.g. AP) as a new 1-D float64 CPU tensor: every entry >= 0 and finite, or NaN
    (undefined, e.g. a class with no validation positive).

    ``TypeError`` for a non-numeric input, ``ValueError`` for another shape than (C,), an infinite or a
    negative entry (naming the class).
    """
    t = as_float_vector(metric, name)
    finite_or_nan = torch.isfinite(t) | torch.isnan(t)
    if not bool(finite_or_nan.all()):
        i = int((~finite_or_nan).nonzero()[0])
        raise ValueError(f"{name} must be finite or NaN (undefined), got {t[i].item()} for class {i}")
    if bool((t < 0).any()):
        i = int((t < 0).nonzero()[0])
        raise ValueError(f"{name} must be >= 0 (a per-class metric such as AP), got {t[i].item()} for class {i}")
    return t


def as_class_names(names: Sequence[str], *, name: str = "class_names") -> tuple[str, ...]:
    """Check a sequence of unique, non-empty class-name strings and return it as a tuple."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"{name} must be a sequence of strings, got {type(names).__name__}")
    out = tuple(names)
    for i, n in enumerate(out):
        if not isinstance(n, str) or not n:
            raise TypeError(f"{name}[{i}] must be a non-empty string, got {n!r}")
    seen: dict[str, int] = {}
    for i, n in enumerate(out):
        if n in seen:
            raise ValueError(f"{name} must be unique, got {n!r} at positions {seen[n]} and {i}")
        seen[n] = i
    return out


def check_thresholds(thresholds: object) -> tuple[float, float]:
    """Shot thresholds ``(head_min, tail_max_exclusive)``: two positive finite numbers, strictly decreasing."""
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
        raise TypeError(
            f"thresholds must be a pair (head_min, tail_max_exclusive) of numbers, got "
            f"{type(thresholds).__name__}"
        )
    if len(thresholds) != 2:
        raise ValueError(f"thresholds must have 2 entries (head, tail), got {len(thresholds)}")
    values = []
    for j, v in enumerate(thresholds):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"thresholds[{j}] must be a number, got {type(v).__name__}")
        if not math.isfinite(float(v)) or float(v) <= 0:
            raise ValueError(f"thresholds must be positive and finite, got thresholds[{j}]={v!r}")
        values.append(float(v))
    hi, lo = values
    if not hi > lo:
        raise ValueError(
            f"thresholds must be strictly decreasing (head threshold > tail threshold), got "
            f"thresholds[0]={thresholds[0]!r} and thresholds[1]={thresholds[1]!r}"
        )
    return hi, lo
