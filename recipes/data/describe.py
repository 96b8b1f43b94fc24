"""Describe a multi-label data set the way the paper does, from its labels CSV alone.

``python -m recipes.data.describe --csv DIR/labels.csv [--partition partition.json] --out OUT``
prints and writes (PNG via matplotlib's Agg backend, every file written atomically):

* ``class_counts.png``: per-class positives, sorted, log scale, coloured by head / medium / tail
  (the paper's Fig. 1);
* the labels-per-image table (Table 2: images with 1, 2, 3 and more than 3 labels; images with no
  label are counted separately as ``0``);
* head / medium / tail membership by :func:`rskd_loss.metrics.shot_groups`, the one rule of the
  project: head = at least ``thresholds[0]`` (100) positives, tail = fewer than ``thresholds[1]``
  (20), medium between (a class with exactly 100 is head, one with exactly 20 medium; the
  many / medium / few-shot numbers of OLTR, Liu et al., CVPR 2019). The same function groups the
  classes of Table 3's mAP columns (:func:`rskd_loss.metrics.group_map`) and of the shot teachers
  (``SubsetPartitioner(rule="shot")``). A group with no class (a small data set) is shown empty:
  there is no fallback here, because a display grouping that differs from the one the results are
  reported by would misdescribe them;
* ``cooccurrence.png``: the class co-occurrence matrix (images holding both labels; the diagonal is
  the class count), classes sorted by count;
* with ``--partition``: ``subsets.png``, one panel per subset with its classes' counts among the
  images that hold a positive of the subset, and per subset the imbalance ratio (max / min count)
  next to the whole data set's (the paper's Fig. 4), and how many of those images also hold a label
  outside the subset (the label co-occurrence that teachers trained on subsets do not see).

``python -m recipes.data.describe --csv DIR/labels.csv --write-prior DIR/prior.json`` writes a
starting prior for the region and feature rules listing the CSV's label columns, each class in a
group of its own (:func:`rskd_loss.priors.template_prior`; edit the groups, format in
``rskd_loss/priors.py``); ``--out`` is then optional.

Partition JSON: ``{"subsets": [[class indices], ...], "names": [...], "num_classes": C, ...}``
(other keys are ignored); subsets must be disjoint, cover every class and ``num_classes`` must match
the CSV. ``summary.json`` holds every number printed.
"""
from __future__ import annotations

import argparse
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rskd_loss.fileio import atomic_write_bytes, atomic_write_text
from rskd_loss.metrics import GROUPS, shot_group_of

from .csv_dataset import LabelTable, label_columns_message, read_label_csv

__all__ = [
    "DEFAULT_THRESHOLDS",
    "labels_per_image",
    "cooccurrence_matrix",
    "load_partition_json",
    "subset_statistics",
    "describe",
    "main",
]

DEFAULT_THRESHOLDS = (100, 20)
_COLORS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728"}


def labels_per_image(targets: np.ndarray) -> dict[str, int]:
    """Images with 0, 1, 2, 3 and more than 3 labels (the paper's Table 2 rows) and the total."""
    k = np.asarray(targets).sum(axis=1)
    return {"0": int((k == 0).sum()), "1": int((k == 1).sum()), "2": int((k == 2).sum()),
            "3": int((k == 3).sum()), "3+": int((k > 3).sum()), "sum": int(k.size)}


def cooccurrence_matrix(targets: np.ndarray) -> np.ndarray:
    """``(C, C)`` int64: images holding both class i and class j (diagonal: class counts)."""
    y = np.asarray(targets, dtype=np.int64)
    return y.T @ y


def load_partition_json(path: str | os.PathLike[str], num_classes: int) -> tuple[list[list[int]], list[str]]:
    """Read and check a partition file; returns ``(subsets, names)``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise
    except ValueError as exc:
        raise ValueError(f"{path}: expected a JSON partition, got invalid JSON ({exc})") from exc
    if not isinstance(doc, dict) or "subsets" not in doc:
        raise ValueError(f"{path}: expected an object with a 'subsets' key")
    subsets = doc["subsets"]
    if not isinstance(subsets, list) or not all(isinstance(s, list) and s for s in subsets):
        raise ValueError(f"{path}: 'subsets' must be a list of non-empty lists of class indices")
    if doc.get("num_classes", num_classes) != num_classes:
        raise ValueError(f"{path}: expected num_classes {num_classes} (the CSV's), got "
                         f"{doc.get('num_classes')}")
    flat = [i for s in subsets for i in s]
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_classes for i in flat):
        raise ValueError(f"{path}: subset entries must be class indices in [0, {num_classes})")
    if len(flat) != len(set(flat)) or len(flat) != num_classes:
        raise ValueError(f"{path}: subsets must be disjoint and cover all {num_classes} classes, got "
                         f"{len(flat)} entries ({len(set(flat))} distinct)")
    names = doc.get("names") or [f"subset {k}" for k in range(len(subsets))]
    if len(names) != len(subsets):
        raise ValueError(f"{path}: expected {len(subsets)} names (one per subset), got {len(names)}")
    return [list(map(int, s)) for s in subsets], [str(n) for n in names]


def subset_statistics(targets: np.ndarray, subsets: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    """Per subset: its images (a positive in the subset), class counts, imbalance, outside labels."""
    y = np.asarray(targets).astype(bool)
    out = []
    for s in subsets:
        s = list(s)
        mine = y[:, s].any(axis=1)
        outside = np.ones(y.shape[1], dtype=bool)
        outside[s] = False
        counts = y[mine][:, s].sum(axis=0)
        nz = counts[counts > 0]
        out.append({
            "classes": s,
            "images": int(mine.sum()),
            "counts": counts.astype(int).tolist(),
            "imbalance_ratio": float(nz.max() / nz.min()) if nz.size else float("nan"),
            "images_with_outside_labels": int((y[mine][:, outside].any(axis=1)).sum()),
            "images_with_2plus_in_subset": int((y[mine][:, s].sum(axis=1) >= 2).sum()),
        })
    return out


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


class _Stats(NamedTuple):
    """The whole-data-set statistics :func:`describe` prints and plots."""

    table: LabelTable            # the CSV read
    names: list[str]             # class names, in the CSV's order
    counts: np.ndarray           # (C,) positives per class
    group_of: list[str]          # head / medium / tail of each class
    groups: dict[str, list[int]]  # class indices of each group
    order: np.ndarray            # class indices sorted by count, largest first
    co: np.ndarray               # (C, C) co-occurrence matrix
    summary: dict[str, Any]      # what summary.json holds


def describe(
    csv_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    partition: str | os.PathLike[str] | None = None,
    image_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    verbose: bool = True,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Compute, print and plot the statistics of a labels CSV (see the module doc); returns them."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    table = read_label_csv(csv_path, image_column=image_column, label_columns=label_columns,
                           class_names=class_names)
    if verbose:
        print(label_columns_message(table))
    st = _statistics(table, thresholds)
    summary = st.summary
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    lines = _table_lines(st, thresholds)
    fig = _class_counts_figure(st)
    _save(fig, out / "class_counts.png")
    plt.close(fig)
    fig = _cooccurrence_figure(st)
    _save(fig, out / "cooccurrence.png")
    plt.close(fig)

    if partition is not None:
        subsets, sub_names = load_partition_json(partition, len(st.names))
        stats = subset_statistics(table.targets, subsets)
        summary["partition"] = {"path": str(partition), "names": sub_names, "subsets": stats}
        lines += _partition_lines(partition, sub_names, stats, summary["head_tail_ratio"])
        fig = _subsets_figure(st, sub_names, stats)
        _save(fig, out / "subsets.png")
        plt.close(fig)

    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "summary.txt", text)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    if verbose:
        print(text, end="")
    return summary


def _statistics(table: LabelTable, thresholds: Sequence[float]) -> _Stats:
    """Class counts, head / medium / tail groups, labels per image and co-occurrence of ``table``."""
    y, names = table.targets, list(table.class_names)
    counts = y.sum(axis=0).astype(int)
    group_of = shot_group_of(counts, tuple(thresholds))
    groups = {g: [i for i in range(len(names)) if group_of[i] == g] for g in GROUPS}
    table2 = labels_per_image(y)
    co = cooccurrence_matrix(y)
    order = np.argsort(-counts, kind="stable")
    nz = counts[counts > 0]
    summary: dict[str, Any] = {
        "csv": str(table.path), "num_images": int(y.shape[0]), "num_classes": len(names),
        "class_names": names, "class_counts": counts.tolist(),
        "head_tail_ratio": float(nz.max() / nz.min()) if nz.size else float("nan"),
        "labels_per_image": table2, "thresholds": list(thresholds),
        "groups": {g: [names[i] for i in members] for g, members in groups.items()},
        "cooccurrence": co.tolist(),
    }
    return _Stats(table, names, counts, group_of, groups, order, co, summary)


def _table_lines(st: _Stats, thresholds: Sequence[float]) -> list[str]:
    """The printed table: per-class positives, labels per image, groups."""
    names, counts, group_of = st.names, st.counts, st.group_of
    lines = [f"{st.table.path}: {st.table.targets.shape[0]} images, {len(names)} classes, head/tail ratio "
             f"{st.summary['head_tail_ratio']:.1f}", "", "per-class positives (sorted):"]
    lines += [f"  {counts[i]:7d}  {group_of[i]:6s}  {names[i]}" for i in st.order]
    lines += ["", "labels per image (paper Table 2):"]
    lines += [f"  {k:>3s}: {v}" for k, v in st.summary["labels_per_image"].items()]
    lines += ["", f"groups (head >= {thresholds[0]:g}, tail < {thresholds[1]:g} training positives):"]
    lines += [f"  {g:6s} ({len(m)}): {', '.join(names[i] for i in m)}" for g, m in st.groups.items()]
    return lines


def _partition_lines(partition: str | os.PathLike[str], sub_names: Sequence[str],
                     stats: Sequence[dict[str, Any]], head_tail_ratio: float) -> list[str]:
    """The printed lines of a partition: per subset its classes, images, imbalance, outside labels."""
    lines = ["", f"partition {partition}:"]
    for n, st in zip(sub_names, stats):
        lines.append(f"  {n}: {len(st['classes'])} classes, {st['images']} images, imbalance "
                     f"{st['imbalance_ratio']:.1f} (whole set {head_tail_ratio:.1f}), "
                     f"{st['images_with_outside_labels']} with labels outside the subset")
    return lines


def _class_counts_figure(st: _Stats) -> Any:
    """Per-class positives, sorted, log scale, coloured by group (the paper's Fig. 1)."""
    import matplotlib.pyplot as plt

    names, counts, order = st.names, st.counts, st.order
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    ax.bar(range(len(names)), counts[order], color=[_COLORS[st.group_of[i]] for i in order])
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.8)
    ax.set_xticks(range(len(names)), [names[i] for i in order], rotation=90, fontsize=7)
    ax.set_ylabel("positive images")
    ax.set_title("class distribution")
    for g in GROUPS:
        ax.bar([], [], color=_COLORS[g], label=g)
    ax.legend()
    return fig


def _cooccurrence_figure(st: _Stats) -> Any:
    """The co-occurrence matrix, classes sorted by count, log(1 + images) colour scale."""
    import matplotlib.pyplot as plt

    names, order = st.names, st.order
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(names)), max(4, 0.3 * len(names))))
    im = ax.imshow(np.log1p(st.co[np.ix_(order, order)]), cmap="viridis")
    ax.set_xticks(range(len(names)), [names[i] for i in order], rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), [names[i] for i in order], fontsize=6)
    ax.set_title("label co-occurrence (log(1 + images))")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def _subsets_figure(st: _Stats, sub_names: Sequence[str], stats: Sequence[dict[str, Any]]) -> Any:
    """The whole set's counts, then one panel per subset (the paper's Fig. 4)."""
    import matplotlib.pyplot as plt

    names, group_of = st.names, st.group_of
    k = len(stats)
    fig, axes = plt.subplots(1, k + 1, figsize=(3.2 * (k + 1), 3.5), squeeze=False)
    ax0 = axes[0, 0]
    ax0.bar(range(len(names)), st.counts[st.order], color="grey")
    ax0.set_yscale("log")
    ax0.set_ylim(bottom=0.8)
    ax0.set_title("original")
    for j, (n, s) in enumerate(zip(sub_names, stats), 1):
        ax = axes[0, j]
        o = np.argsort(-np.asarray(s["counts"]), kind="stable")
        ax.bar(range(len(o)), np.asarray(s["counts"])[o],
               color=[_COLORS[group_of[s["classes"][i]]] for i in o])
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.8)
        ax.set_xticks(range(len(o)), [names[s["classes"][i]] for i in o], rotation=90, fontsize=6)
        ax.set_title(f"{n} (x{s['imbalance_ratio']:.0f})", fontsize=9)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.data.describe",
                                description="Statistics and figures of a multi-label labels CSV.")
    p.add_argument("--csv", required=True)
    p.add_argument("--out", default=None, help="folder for the figures and summary.json")
    p.add_argument("--write-prior", default=None, metavar="PRIOR.json",
                   help="write a starting prior listing the label columns, each in a group of its own "
                        "(refused if the file exists)")
    p.add_argument("--partition", default=None, help="partition JSON (subsets of class indices)")
    p.add_argument("--image-column", default=None)
    p.add_argument("--class-names", nargs="+", default=None, metavar="COLUMN",
                   help="the label columns (default: every column of 0/1 values)")
    p.add_argument("--thresholds", type=int, nargs=2, default=DEFAULT_THRESHOLDS,
                   metavar=("MANY", "FEW"), help="head >= MANY, tail < FEW (default 100 20)")
    a = p.parse_args(argv)
    if a.out is None and a.write_prior is None:
        p.error("expected --out (the statistics and figures) or --write-prior (a starting prior), got neither")
    if a.write_prior is not None:
        write_template_prior(a.csv, a.write_prior, image_column=a.image_column, class_names=a.class_names)
    if a.out is not None:
        describe(a.csv, a.out, partition=a.partition, image_column=a.image_column,
                 thresholds=tuple(a.thresholds), class_names=a.class_names)
    return 0


def write_template_prior(
    csv_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    image_column: str | None = None,
    class_names: Sequence[str] | None = None,
    name: str | None = None,
) -> Path:
    """Write the starting prior of ``csv_path``'s label columns to ``out`` (refused if it exists).

    The label columns are read as everywhere (detected, or ``class_names``); the prior puts each
    class in a ``region`` and a ``feature`` group of its own (:func:`rskd_loss.priors.template_prior`),
    named ``name`` (default the file's stem). Prints which columns it took and what to do next.
    """
    from rskd_loss.priors import template_prior

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; expected a new file for the starting prior (delete it or "
                              f"choose another name)")
    table = read_label_csv(csv_path, image_column=image_column, class_names=class_names)
    print(label_columns_message(table))
    prior = template_prior(table.class_names, name=name or out.stem or "my_prior")
    atomic_write_text(out, json.dumps(prior, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}: {len(table.class_names)} classes, each in a region and a feature group of its own; "
          f"move classes into shared groups (format: rskd_loss/priors.py), then "
          f"--set method.partition.prior='{out}'")
    return out


if __name__ == "__main__":
    import sys

    try:
        raise SystemExit(main())
    except (ValueError, OSError) as exc:  # CSVDataError, FileExistsError, DiskWriteError: one line
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
