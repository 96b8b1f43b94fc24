r"""Relational class subsets (Ju et al., MICCAI 2021, Sec. 2.1): shot-, region- and feature-based rules.

The classes :math:`\{0, \dots, C-1\}` are divided into :math:`k` disjoint, non-empty subsets
:math:`S^1, \dots, S^k` that together cover every class; one teacher is trained per subset.

- ``rule="shot"``: by the number of training positives per class (many / medium / few shot).
- ``rule="region"``: by the fundus region where the class's sign appears (a prior, Table 1).
- ``rule="feature"``: by a shared phenotype, from a prior or by clustering class embeddings.

:class:`SubsetPartitioner` applies a rule and returns a :class:`Partition`, a frozen, validated
value that can be saved to JSON, fingerprinted, reported (the paper's Fig. 4: subsets are less
imbalanced than the whole set) and asked which images and columns a teacher trains on
(:meth:`Partition.teacher_view`).

Example:
    >>> from rskd_loss.partition import SubsetPartitioner
    >>> part = SubsetPartitioner("shot").partition(class_counts=[500, 120, 60, 30, 10, 3])
    >>> part.names, part.subsets
    (('head', 'medium', 'tail'), ((0, 1), (2, 3), (4, 5)))
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import priors as _priors
from .fileio import atomic_write_text
from .metrics import SHOT_MODES, shot_cuts, shot_groups
from .validation import as_class_counts, as_class_names, as_multi_hot, check_int, check_thresholds

__all__ = [
    "Partition",
    "TeacherView",
    "SubsetPartitioner",
    "RULES",
    "PARTITION_RULES",
    "SHOT_MODES",
    "SHOT_NAMES",
    "ON_EMPTY",
    "LINKAGES",
    "TEACHER_IMAGES",
]

RULES = ("shot", "region", "feature")
PARTITION_RULES = RULES + ("custom",)
SHOT_NAMES = ("head", "medium", "tail")
ON_EMPTY = ("warn", "raise")
LINKAGES = ("average", "complete", "single")
TEACHER_IMAGES = ("all", "positive", "balanced")
_DICT_KEYS_REQUIRED = ("subsets", "names", "num_classes")
_DICT_KEYS = _DICT_KEYS_REQUIRED + ("rule", "class_names")


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def _first(items: Sequence[Any], n: int = 10, *, plain: bool = False) -> str:
    """``[a, b, ...]`` of the first ``n`` items (``repr`` of each, or ``str`` with ``plain=True``)."""
    shown = ", ".join(str(x) if plain else repr(x) for x in list(items)[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}]"


# ----------------------------------------------------------------------------------------------
# TeacherView
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TeacherView:
    """Which images and target columns the teacher of one subset trains on.

    Attributes:
        subset: the subset index ``k``.
        columns: the class indices (target columns) of subset ``k``, sorted.
        sample_indices: read-only int64 array of the row indices of the images it trains on.
        images: ``"all"``, ``"positive"`` or ``"balanced"`` (see :meth:`Partition.teacher_view`).

    Two views are equal when all four fields are equal (the arrays element-wise).
    """

    subset: int
    columns: tuple[int, ...]
    sample_indices: np.ndarray
    images: str

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TeacherView):
            return NotImplemented
        return (
            self.subset == other.subset
            and self.columns == other.columns
            and self.images == other.images
            and np.array_equal(self.sample_indices, other.sample_indices)
        )

    __hash__ = None  # type: ignore[assignment]


# ----------------------------------------------------------------------------------------------
# Partition
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Partition:
    r"""A validated division of the classes ``0..num_classes-1`` into named, disjoint subsets.

    .. math::

        \bigcup_{j=1}^{k} S^j = \{0, \dots, C-1\}, \qquad S^i \cap S^j = \varnothing \ (i \ne j),
        \qquad S^j \ne \varnothing.

    Lists are accepted and normalised to tuples; each subset is sorted. Invalid input raises
    ``ValueError`` (overlap: names the class and both subsets; missing classes: lists them;
    out-of-range index; empty subset; wrong number of or repeated names; wrong number of class
    names) or ``TypeError`` (a non-integer index, a non-string name).

    Args:
        subsets: the class indices of each subset, e.g. ``[[0, 1], [2, 3], [4, 5]]``.
        names: one unique, non-empty name per subset, e.g. ``("head", "medium", "tail")``.
        num_classes: C.
        rule: how it was made: ``"shot" | "region" | "feature" | "custom"`` (default ``"custom"``,
            a partition built by hand). Not part of :meth:`fingerprint`.
        class_names: optional name of every class (C,), used in reports and error messages.

    Shape:
        - :meth:`class_to_subset`: (C,) tuple, the subset index of each class.
        - ``targets`` of :meth:`teacher_view` / :meth:`report_rows`: (N, C) multi-hot.

    Example:
        >>> p = Partition([[2, 0], [1]], names=["a", "b"], num_classes=3)
        >>> p.subsets, p.class_to_subset()
        (((0, 2), (1,)), (0, 1, 0))
    """

    subsets: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]
    num_classes: int
    rule: str = "custom"
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        num_classes = check_int(self.num_classes, "num_classes", minimum=1)
        if not isinstance(self.rule, str) or self.rule not in PARTITION_RULES:
            raise ValueError(f"rule must be one of {PARTITION_RULES}, got {self.rule!r}")
        class_names = None
        if self.class_names is not None:
            class_names = as_class_names(self.class_names, name="class_names")
            if len(class_names) != num_classes:
                raise ValueError(
                    f"class_names must have num_classes={num_classes} entries, got {len(class_names)}"
                )
        names = as_class_names(self.names, name="names")
        raw = self.subsets
        if isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
            raise TypeError(f"subsets must be a sequence of sequences of ints, got {type(raw).__name__}")
        raw = list(raw)
        if len(names) != len(raw):
            raise ValueError(
                f"names must have one entry per subset: expected {len(raw)}, got {len(names)}"
            )

        def label(i: int) -> str:
            return f"{i} ({class_names[i]!r})" if class_names is not None else str(i)

        owner: dict[int, int] = {}
        subsets: list[tuple[int, ...]] = []
        for k, members in enumerate(raw):
            where = f"subset {k} ({names[k]!r})"
            if isinstance(members, (str, bytes)) or not isinstance(members, Iterable):
                raise TypeError(f"{where} must be a sequence of class indices, got {type(members).__name__}")
            idx = [check_int(i, f"class index in {where}") for i in members]
            if not idx:
                raise ValueError(f"{where} is empty; every subset must hold at least one class")
            for i in idx:
                if not 0 <= i < num_classes:
                    raise ValueError(
                        f"{where} holds class index {i}, expected 0 <= index < num_classes={num_classes}"
                    )
                if i in owner:
                    j = owner[i]
                    if j == k:
                        raise ValueError(f"class {label(i)} appears twice in {where}")
                    raise ValueError(
                        f"class {label(i)} is in two subsets, {names[j]!r} (subset {j}) and "
                        f"{names[k]!r} (subset {k}); subsets must be disjoint"
                    )
                owner[i] = k
            subsets.append(tuple(sorted(idx)))
        missing = [i for i in range(num_classes) if i not in owner]
        if missing:
            raise ValueError(
                f"subsets must cover every class 0..{num_classes - 1}; {len(missing)} class(es) "
                f"missing: {_first([label(i) for i in missing], plain=True)}"
            )
        object.__setattr__(self, "num_classes", num_classes)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "subsets", tuple(subsets))
        object.__setattr__(self, "class_names", class_names)

    # -- lookups --------------------------------------------------------------------------------
    @property
    def num_subsets(self) -> int:
        """The number of subsets k."""
        return len(self.subsets)

    def class_to_subset(self) -> tuple[int, ...]:
        """The subset index of every class, (C,)."""
        out = [0] * self.num_classes
        for k, members in enumerate(self.subsets):
            for i in members:
                out[i] = k
        return tuple(out)

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``subsets``, ``names``, ``num_classes``, ``rule``, ``class_names``."""
        return {
            "subsets": [list(s) for s in self.subsets],
            "names": list(self.names),
            "num_classes": self.num_classes,
            "rule": self.rule,
            "class_names": None if self.class_names is None else list(self.class_names),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Partition:
        """Inverse of :meth:`to_dict`; unknown keys and missing required keys raise ``ValueError``."""
        if not isinstance(d, Mapping):
            raise TypeError(f"a partition dict must be a mapping, got {type(d).__name__}")
        unknown = sorted(str(k) for k in d if k not in _DICT_KEYS)
        if unknown:
            raise ValueError(f"unknown partition key(s) {unknown}; allowed keys are {_DICT_KEYS}")
        missing = [k for k in _DICT_KEYS_REQUIRED if k not in d]
        if missing:
            raise ValueError(f"missing partition key(s) {missing}; required are {_DICT_KEYS_REQUIRED}")
        return cls(
            subsets=d["subsets"],
            names=d["names"],
            num_classes=d["num_classes"],
            rule=d.get("rule", "custom"),
            class_names=d.get("class_names"),
        )

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` atomically (temporary file + ``os.replace``)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n", fsync=True)
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Partition:
        """Read a partition written by :meth:`to_json`."""
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"partition file {os.fspath(path)!r} is not valid JSON ({exc})") from exc
        return cls.from_dict(d)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the canonical JSON of ``subsets, names, num_classes, class_names``.

        The rule is left out: the same division made by hand or by a rule has the same fingerprint.
        Canonical JSON: sorted keys, no spaces, ASCII escapes.
        """
        payload = {
            "subsets": [list(s) for s in self.subsets],
            "names": list(self.names),
            "num_classes": self.num_classes,
            "class_names": None if self.class_names is None else list(self.class_names),
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    # -- reports --------------------------------------------------------------------------------
    def report_rows(self, class_counts: object = None, targets: object = None) -> list[dict[str, Any]]:
        r"""Per-subset statistics, then one row ``"all"`` for the whole label set.

        Each row: ``subset`` (name), ``index`` (k, ``None`` for ``"all"``), ``classes`` (class names
        when known, else indices), ``num_classes``, ``num_images`` (images with at least one positive
        among the row's classes; needs ``targets``), ``min_positives``, ``max_positives`` and

        .. math::

            \text{imbalance\_ratio} = \frac{\max_{i \in S} n_i}{\min_{i \in S} n_i}
            \quad (\infty \text{ if some } n_i = 0),

        where :math:`n_i` is the number of positives of class :math:`i` (``class_counts`` if given,
        else the column sums of ``targets``). Statistics that cannot be computed are ``None``.
        Subsets with a smaller ratio than the ``"all"`` row are less imbalanced (the paper's Fig. 4).

        Args:
            class_counts: (C,) training positives per class.
            targets: (N, C) multi-hot matrix (numpy or torch).
        """
        counts = None
        if class_counts is not None:
            counts = as_class_counts(class_counts, self.num_classes).numpy()
        t = None
        if targets is not None:
            t = as_multi_hot(targets, "targets", self.num_classes)
            if counts is None:
                counts = t.sum(axis=0).astype(np.float64)
        groups: list[tuple[str, int | None, tuple[int, ...]]] = [
            (name, k, members) for k, (name, members) in enumerate(zip(self.names, self.subsets))
        ]
        groups.append(("all", None, tuple(range(self.num_classes))))
        rows = []
        for name, k, members in groups:
            row: dict[str, Any] = {
                "subset": name,
                "index": k,
                "classes": tuple(self.class_names[i] for i in members)
                if self.class_names is not None
                else members,
                "num_classes": len(members),
                "num_images": None,
                "min_positives": None,
                "max_positives": None,
                "imbalance_ratio": None,
            }
            if t is not None:
                row["num_images"] = int(t[:, list(members)].any(axis=1).sum())
            if counts is not None:
                sub = counts[list(members)]
                lo, hi = float(sub.min()), float(sub.max())
                row["min_positives"], row["max_positives"] = lo, hi
                row["imbalance_ratio"] = math.inf if lo == 0 else hi / lo
            rows.append(row)
        return rows

    def report(self, class_counts: object = None, targets: object = None) -> str:
        """A plain-text table of :meth:`report_rows` (one line per subset, then ``all``)."""
        rows = self.report_rows(class_counts=class_counts, targets=targets)

        def fmt(v: Any) -> str:
            if v is None:
                return "-"
            if isinstance(v, float):
                return "inf" if math.isinf(v) else f"{v:.4g}"
            return str(v)

        header = ("subset", "#classes", "#images", "min pos", "max pos", "imbalance", "classes")
        table = [header]
        for r in rows:
            classes = ", ".join(str(c) for c in r["classes"])
            if len(classes) > 60:
                classes = classes[:57] + "..."
            table.append(
                (
                    r["subset"],
                    fmt(r["num_classes"]),
                    fmt(r["num_images"]),
                    fmt(r["min_positives"]),
                    fmt(r["max_positives"]),
                    fmt(r["imbalance_ratio"]),
                    classes,
                )
            )
        widths = [max(len(line[j]) for line in table) for j in range(len(header) - 1)]
        lines = [
            f"Partition rule={self.rule!r}: {self.num_subsets} subsets of {self.num_classes} classes "
            f"(fingerprint {self.fingerprint()[:12]})"
        ]
        for line in table:
            cells = [line[j].ljust(widths[j]) for j in range(len(widths))] + [line[-1]]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    # -- teachers -------------------------------------------------------------------------------
    def teacher_view(self, k: int, targets: object, images: str = "positive", seed: int = 0) -> TeacherView:
        """The sample indices and target columns that the teacher of subset ``k`` trains on.

        - ``images="positive"`` (default): only images with at least one positive in subset ``k``.
        - ``images="all"``: every image; the columns are subset ``k``'s classes, so an image with
          no positive among them is an all-negative example for this teacher.
        - ``images="balanced"``: the positive images plus as many images without a positive in the
          subset (all of them if there are fewer), drawn uniformly without replacement with
          ``numpy.random.default_rng(seed)``; indices sorted.

        The paper does not say which it used. The student distils the teachers' logits on every
        image, so a teacher that never saw an image without its classes (``"positive"``) is asked
        about images unlike any it trained on; ``"balanced"`` shows it negatives at a fraction of
        the cost of ``"all"``. Which view gives teachers that are good on the student's images is a
        measurement on validation data (``docs/experiments/``: teacher-view and cpu_pretrained choices).

        Args:
            k: subset index, ``0 <= k < num_subsets``.
            targets: (N, C) multi-hot training targets (numpy array or torch tensor).
            images: ``"all"``, ``"positive"`` or ``"balanced"``.
            seed: the draw of the negatives of ``"balanced"`` (ignored otherwise).

        Shape:
            - targets: (N, C); ``sample_indices``: (M,) int64 with M = N for ``"all"``.

        Example:
            >>> import numpy as np
            >>> p = Partition([[0], [1, 2]], names=["a", "b"], num_classes=3)
            >>> y = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0]])
            >>> p.teacher_view(1, y, images="positive").sample_indices.tolist()
            [1]
            >>> len(p.teacher_view(1, y, images="balanced").sample_indices)
            2
        """
        if images not in TEACHER_IMAGES:
            raise ValueError(f"images must be one of {TEACHER_IMAGES}, got {images!r}")
        k = check_int(k, "k")
        if not 0 <= k < self.num_subsets:
            raise ValueError(f"k must be a subset index in [0, {self.num_subsets - 1}], got {k}")
        t = as_multi_hot(targets, "targets", self.num_classes)
        columns = self.subsets[k]
        seed = check_int(seed, "seed")
        if images == "all":
            idx = np.arange(t.shape[0], dtype=np.int64)
        else:
            has_positive = t[:, list(columns)].any(axis=1)
            idx = np.flatnonzero(has_positive).astype(np.int64)
            if images == "balanced":
                negatives = np.flatnonzero(~has_positive)
                drawn = np.random.default_rng(seed).choice(negatives, size=min(len(idx), len(negatives)),
                                                           replace=False)
                idx = np.sort(np.concatenate([idx, drawn])).astype(np.int64)
        idx.setflags(write=False)
        return TeacherView(subset=k, columns=columns, sample_indices=idx, images=images)


# ----------------------------------------------------------------------------------------------
# SubsetPartitioner
# ----------------------------------------------------------------------------------------------
class SubsetPartitioner:
    r"""Divide the classes into relational subsets by one of the paper's three rules (Sec. 2.1).

    **rule="shot"** (``partition(class_counts=...)``, :math:`n_i` = training positives of class
    :math:`i`), with thresholds :math:`(t_h, t_t)`:

    .. math::

        \text{head} = \{i : n_i \ge t_h\},\quad
        \text{medium} = \{i : t_t \le n_i < t_h\},\quad
        \text{tail} = \{i : n_i < t_t\}.

    ``mode="fixed"`` uses ``thresholds`` (default ``(100, 20)``: the head/middle/tail split of the
    Distribution-Balanced loss code, ``wutong16/DistributionBalancedLoss``
    ``tools/create_longtail_dataset.py``, ``create_coco_longtail``/``create_voc_longtail``:
    head ``>= 100``, middle ``[20, 100)``, tail ``< 20``; the same 100/20 many/medium/few-shot
    numbers as ``zhmiao/OpenLongTailRecognition-OLTR`` ``utils.py::shot_acc``
    (``many_shot_thr=100, low_shot_thr=20``), whose boundaries differ slightly: OLTR puts 20 in
    few-shot (``<= 20``), ``facebookresearch/classifier-balancing`` ``utils.py::shot_acc`` puts 100
    in medium (``> 100`` for many)). ``mode="quantile"`` (for small data sets, where fixed
    thresholds leave a group empty) applies the same rule with :math:`t_h, t_t` the 2/3 and 1/3
    quantiles of the counts (numpy's default linear interpolation, computed exactly with
    rationals, so ties always fall into the same group and a count equal to a cut goes to the
    upper group); ``thresholds`` is then unused. With C = 2 it gives head and tail, with C = 1 head.
    Both modes call :func:`rskd_loss.metrics.shot_groups`, the rule :func:`~rskd_loss.metrics.group_map`
    reports head / medium / tail mAP by, so a subset teacher and a mAP column hold the same classes.
    A group that comes out empty (e.g. no class below 20) is dropped with a ``UserWarning`` naming
    it (``on_empty="warn"``) or raises ``ValueError`` (``on_empty="raise"``); a partition never holds
    an empty subset.

    **rule="region"** (``partition(class_names=...)``): the class names are looked up in ``prior``,
    the name of a shipped prior (:func:`rskd_loss.priors.available_priors`, e.g. ``"rfmid"``,
    ``"lesion10"``), a path to a prior JSON file, a loaded prior dict, or a dict
    ``{class_name: region}``. Subsets follow the prior's region order; regions with no class
    present are absent. Every class name must be in the prior.

    **rule="feature"**: either the prior's ``"feature"`` (shared-phenotype) groups, looked up as for
    regions, or data-driven: ``partition(embeddings=E)`` with ``E`` (C, D), e.g. the mean
    penultimate feature of each class's positive images under an ERM model, clustered by
    ``sklearn.cluster.AgglomerativeClustering(n_clusters=num_subsets, metric="cosine",
    linkage=linkage)`` (deterministic). Default ``linkage="average"``: scikit-learn's own default,
    ``"ward"``, only works with Euclidean distances. Clusters are ordered by their smallest class
    index and named ``"cluster0"``, ``"cluster1"``, ... We know of no other library that builds
    class subsets for subset-teacher distillation from class embeddings.

    Args:
        rule: ``"shot" | "region" | "feature"``.
        thresholds: ``(t_h, t_t)`` for ``rule="shot", mode="fixed"``, positive, ``t_h > t_t``.
        mode: ``"fixed"`` (default) or ``"quantile"`` (shot rule).
        prior: see above; required for ``rule="region"``; for ``rule="feature"`` either ``prior`` or
            ``num_subsets`` (embedding clustering). Not accepted for ``rule="shot"``.
        num_subsets: the number of clusters for embedding clustering, ``1 <= num_subsets <= C``.
        linkage: ``"average"`` (default), ``"complete"`` or ``"single"``.
        on_empty: ``"warn"`` (default) or ``"raise"`` when a shot group is empty.

    Example:
        >>> names = ["DR", "ARMD", "ODC", "BRVO"]
        >>> p = SubsetPartitioner("region", prior="rfmid").partition(class_names=names)
        >>> dict(zip(p.names, p.subsets))
        {'optic_disc': (2,), 'macula': (1,), 'vessels': (3,), 'global': (0,)}
    """

    def __init__(
        self,
        rule: str,
        *,
        thresholds: Sequence[float] = (100, 20),
        mode: str = "fixed",
        prior: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        num_subsets: int | None = None,
        linkage: str = "average",
        on_empty: str = "warn",
    ) -> None:
        if not isinstance(rule, str) or rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if mode not in SHOT_MODES:
            raise ValueError(f"mode must be one of {SHOT_MODES}, got {mode!r}")
        if on_empty not in ON_EMPTY:
            raise ValueError(f"on_empty must be one of {ON_EMPTY}, got {on_empty!r}")
        if linkage not in LINKAGES:
            raise ValueError(
                f"linkage must be one of {LINKAGES} (ward needs Euclidean distances, these use "
                f"cosine), got {linkage!r}"
            )
        self.rule = rule
        self.thresholds = check_thresholds(thresholds)
        self.mode = mode
        self.linkage = linkage
        self.on_empty = on_empty
        self.prior = prior
        self._prior_name: str | None = None
        self._class_to_group: dict[str, str] = {}
        self._group_order: tuple[str, ...] = ()

        if rule == "shot" and prior is not None:
            raise ValueError(
                "prior is used by rule='region' and rule='feature'; rule='shot' splits by "
                f"class_counts, got prior={prior!r}"
            )
        if num_subsets is not None and rule != "feature":
            raise ValueError(
                f"num_subsets is used by rule='feature' (embedding clustering) only, got "
                f"num_subsets={num_subsets!r} with rule={rule!r}"
            )
        if rule == "region" and prior is None:
            raise ValueError(
                "rule='region' needs prior=: the name of a shipped prior "
                f"{_priors.available_priors()}, the path of a prior JSON file, or a dict "
                "{class_name: region}"
            )
        if rule == "feature":
            if prior is None and num_subsets is None:
                raise ValueError(
                    "rule='feature' needs either prior= (the phenotype groups of a prior, e.g. "
                    "'rfmid') or num_subsets= (to cluster class embeddings), got neither"
                )
            if prior is not None and num_subsets is not None:
                raise ValueError(
                    "rule='feature' takes either prior= or num_subsets= (embedding clustering), "
                    f"not both; got prior={prior!r} and num_subsets={num_subsets!r}"
                )
        self.num_subsets = None
        if num_subsets is not None:
            self.num_subsets = check_int(num_subsets, "num_subsets", minimum=1)
        if prior is not None:
            self._resolve_prior(prior, "region" if rule == "region" else "feature")

    def __repr__(self) -> str:
        extra = {
            "shot": f"thresholds={self.thresholds}, mode={self.mode!r}, on_empty={self.on_empty!r}",
            "region": f"prior={self._prior_name!r}",
            "feature": f"prior={self._prior_name!r}"
            if self._prior_name is not None
            else f"num_subsets={self.num_subsets}, linkage={self.linkage!r}",
        }[self.rule]
        return f"SubsetPartitioner(rule={self.rule!r}, {extra})"

    # -- prior lookup ---------------------------------------------------------------------------
    def _resolve_prior(self, prior: object, key: str) -> None:
        if isinstance(prior, (str, os.PathLike)):
            loaded = _priors.load_prior(prior)
            name = loaded["name"]
            grouping = loaded[key]
        elif isinstance(prior, Mapping):
            if prior and all(isinstance(v, str) for v in prior.values()):
                # a plain {class_name: group} mapping
                name = "<mapping>"
                grouping = {}
                for cls_name, group in prior.items():
                    if not isinstance(cls_name, str) or not cls_name:
                        raise ValueError(f"prior keys must be non-empty class names, got {cls_name!r}")
                    if not group:
                        raise ValueError(f"prior maps class {cls_name!r} to an empty group name")
                    grouping.setdefault(group, []).append(cls_name)
            else:
                loaded = _priors.validate_prior(prior, source="prior dict")
                name = loaded["name"]
                grouping = loaded[key]
        else:
            raise TypeError(
                "prior must be a prior name, a path, a loaded prior dict or a dict "
                f"{{class_name: group}}, got {type(prior).__name__}"
            )
        self._prior_name = name
        self._group_order = tuple(grouping)
        self._class_to_group = {c: g for g, members in grouping.items() for c in members}

    # -- entry point ----------------------------------------------------------------------------
    def partition(
        self,
        *,
        class_counts: object = None,
        class_names: Sequence[str] | None = None,
        embeddings: object = None,
    ) -> Partition:
        """Apply the rule and return a :class:`Partition`.

        Args:
            class_counts: (C,) training positives per class; required for ``rule="shot"``, checked
                for length (and otherwise unused) by the other rules.
            class_names: (C,) class names; required for prior lookups, else stored in the result.
            embeddings: (C, D) class embeddings (numpy or torch) for ``rule="feature"`` without a
                prior; refused by the other rules.
        """
        names = None if class_names is None else as_class_names(class_names)
        if embeddings is not None and (self.rule != "feature" or self._prior_name is not None):
            raise ValueError(
                "embeddings are used by rule='feature' with num_subsets= (no prior) only; this "
                f"partitioner is {self!r}"
            )
        counts = None
        if class_counts is not None:
            counts = as_class_counts(class_counts, None if names is None else len(names))
        if self.rule == "shot":
            if counts is None:
                raise ValueError("rule='shot' needs class_counts=(C,), the training positives per class")
            return self._shot(counts.tolist(), names)
        if self._prior_name is not None:
            if names is None:
                raise ValueError(
                    f"rule={self.rule!r} with prior {self._prior_name!r} needs class_names=(C,) to "
                    "look the classes up"
                )
            return self._from_prior(names)
        if embeddings is None:
            raise ValueError(
                "rule='feature' with num_subsets= needs embeddings=(C, D), e.g. the mean penultimate "
                "feature of each class's positive images"
            )
        part = self._cluster(embeddings, names)
        if counts is not None and counts.numel() != part.num_classes:
            raise ValueError(
                f"class_counts must have one entry per embedding row ({part.num_classes}), got "
                f"{counts.numel()}"
            )
        return part

    # -- rules ----------------------------------------------------------------------------------
    def _shot(self, counts: list[float], names: tuple[str, ...] | None) -> Partition:
        # the rule itself is rskd_loss.metrics.shot_groups (shared with group_map and the recipes)
        n = len(counts)
        t_head, t_tail = shot_cuts(counts, self.thresholds, mode=self.mode)
        groups = {g: idx.tolist() for g, idx in shot_groups(counts, self.thresholds, mode=self.mode).items()}
        if self.mode == "fixed":
            expected: tuple[str, ...] = SHOT_NAMES
            cuts = f"thresholds={tuple(int(t) if t.is_integer() else t for t in self.thresholds)}"
        else:
            expected = SHOT_NAMES if n >= 3 else (("head", "tail") if n == 2 else ("head",))
            cuts = f"count tertiles t_head={t_head:g}, t_tail={t_tail:g}"
        conditions = {
            "head": f"count >= {t_head:g}",
            "medium": f"{t_tail:g} <= count < {t_head:g}",
            "tail": f"count < {t_tail:g}",
        }
        for group in expected:
            if groups[group]:
                continue
            hint = (
                "use mode='quantile' to split by count tertiles, or change thresholds"
                if self.mode == "fixed"
                else "the class counts tie across a tertile"
            )
            msg = (
                f"shot partition: group {group!r} is empty (no class with {conditions[group]}; "
                f"{cuts}; class_counts range {min(counts):g}..{max(counts):g})"
            )
            if self.on_empty == "raise":
                raise ValueError(f"{msg}; {hint}, or pass on_empty='warn' to drop it")
            warnings.warn(f"{msg}; dropped. To keep three groups, {hint}.", UserWarning, stacklevel=3)
        kept = [g for g in SHOT_NAMES if groups[g]]
        return Partition(
            subsets=[groups[g] for g in kept],
            names=kept,
            num_classes=n,
            rule="shot",
            class_names=names,
        )

    def _from_prior(self, names: tuple[str, ...]) -> Partition:
        missing = [c for c in names if c not in self._class_to_group]
        if missing:
            raise ValueError(
                f"{len(missing)} class name(s) not in prior {self._prior_name!r}: {_first(missing)}; "
                f"the prior knows {len(self._class_to_group)} classes, e.g. "
                f"{_first(list(self._class_to_group), 5)}"
            )
        by_group: dict[str, list[int]] = {g: [] for g in self._group_order}
        for i, c in enumerate(names):
            by_group[self._class_to_group[c]].append(i)
        kept = [g for g in self._group_order if by_group[g]]
        return Partition(
            subsets=[by_group[g] for g in kept],
            names=kept,
            num_classes=len(names),
            rule=self.rule,
            class_names=names,
        )

    def _cluster(self, embeddings: object, names: tuple[str, ...] | None) -> Partition:
        if isinstance(embeddings, torch.Tensor):
            e = embeddings.detach().to("cpu", torch.float64).numpy()
        else:
            try:
                e = np.asarray(embeddings, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"embeddings must be a (C, D) numeric array or tensor, got {type(embeddings).__name__}"
                ) from exc
        if e.ndim != 2 or e.shape[0] < 1 or e.shape[1] < 1:
            raise ValueError(f"embeddings must be 2-D (C, D) with C, D >= 1, got shape {tuple(e.shape)}")
        c = e.shape[0]
        if names is not None and len(names) != c:
            raise ValueError(f"class_names must have one entry per embedding row ({c}), got {len(names)}")

        def label(rows: np.ndarray) -> str:
            items = [f"{i} ({names[i]!r})" if names is not None else str(i) for i in rows.tolist()]
            return _first(items, plain=True)

        bad = np.flatnonzero(~np.isfinite(e).all(axis=1))
        if bad.size:
            raise ValueError(f"embeddings must be finite; NaN or Inf in the row(s) of class(es) {label(bad)}")
        zero = np.flatnonzero(np.linalg.norm(e, axis=1) == 0)
        if zero.size:
            raise ValueError(
                f"embeddings must be non-zero rows (cosine distance is undefined for a zero vector); "
                f"zero row(s) for class(es) {label(zero)}"
            )
        k = self.num_subsets
        assert k is not None  # guaranteed by __init__ for this path
        if k > c:
            raise ValueError(f"num_subsets must be <= the number of classes C={c}, got {k}")
        if c == 1:
            labels = np.zeros(1, dtype=np.int64)
        else:
            from sklearn.cluster import AgglomerativeClustering

            labels = AgglomerativeClustering(
                n_clusters=k, metric="cosine", linkage=self.linkage
            ).fit_predict(e)
        clusters: dict[int, list[int]] = {}
        for i, lab in enumerate(labels.tolist()):
            clusters.setdefault(lab, []).append(i)
        ordered = sorted(clusters.values(), key=min)
        return Partition(
            subsets=ordered,
            names=[f"cluster{j}" for j in range(len(ordered))],
            num_classes=c,
            rule="feature",
            class_names=names,
        )
