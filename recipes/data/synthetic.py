"""A synthetic, long-tailed, multi-label "fundus" benchmark, written in the generic CSV layout.

``generate_synthetic(out_dir)`` (or ``python -m recipes.data.synthetic --out DIR``) writes::

    DIR/images/syn_00000.png ...   fundus-like RGB images (default 64 x 64)
    DIR/labels.csv                 image,<class 1>,...,<class C>   (0/1, read by MultiLabelCSVDataset)
    DIR/prior.json                 region / phenotype groups of the classes (rskd_loss/priors format)
    DIR/meta.json                  seed, sizes, generator version, realised counts

and is read like any other data set: ``MultiLabelCSVDataset(DIR/"labels.csv", DIR/"images")``.

**Images.** A circular field on black; an orange-red background with a low-frequency texture, fine
grain and a darker rim (vignetting); a yellow-white optic disc with a pale cup on one side (left or
right eye at random); a darker macula about 2.5 disc diameters from it; a random vessel tree leaving
the disc (four arcades with branches). Per image: field centre and size, disc/macula position,
brightness, colour balance, texture, vessel tree.

**Classes.** Each class is one visual *motif* drawn in one *region* (:data:`CATALOGUE`):

=================  ==============================================================================
motif              what is drawn
=================  ==============================================================================
``red_dots``       small dark-red dots / blots (haemorrhage-like)
``yellow_spots``   clusters of small bright yellow spots (exudate / drusen-like)
``pale_patch``     soft whitish patches (cotton-wool / pallor / sheathing-like)
``dark_pigment``   irregular near-black clumps (pigmentation-like)
``ring``           a dark ring (hole / cupping / laser-scar / aneurysm-like)
=================  ==============================================================================

Regions: ``optic_disc`` (on and around the disc), ``macula`` (within the macula),
``vessels`` (on or beside vessel segments away from the disc), ``global`` (scattered over the
mid-periphery, avoiding disc and macula). Every motif recurs in several regions as different classes
and every region holds several motifs, so both relations the paper builds subsets from (region,
Table 1 / Fig. 3; shared phenotype, "feature-based" rule, Sec. 2.1) exist, and ``prior.json`` states
them. The catalogue's order is the frequency rank: column 0 is the most frequent class.

**Labels.** Decisions, measured at the defaults (``meta.json`` records the realised numbers):

* class frequencies decay exponentially, ``m_c proportional to imbalance_ratio ** (-c / (C - 1))``
  (default ratio 150, above the paper's "exceeds 100", Sec. 1), rounded so that they sum to the
  number of label slots; the realised counts equal these targets exactly;
* labels per image follow the paper's Lesion-10 statistics (Table 2: 5929 / 1569 / 321 / 52 images
  with 1 / 2 / 3 / 3+ labels; "3+" is drawn as 4), capped at ``num_classes``;
* every image has at least one label by default (Lesion-10's Table 2 has no zero row);
  ``normal_fraction`` > 0 adds label-free "normal" images;
* co-occurrence: every labelled image gets one *primary* label (a random permutation of the
  primaries); the extra slots of multi-label images get *companion* labels, whose per-class totals
  are proportional to the class frequencies, so companions are mostly head classes. Each class's
  companions go to images chosen at random with weight = free slots x ``(1 + cooccurrence)``
  (default 3) if the image already holds a *partner* of the class: the most frequent other class
  sharing its motif or sharing its region (symmetric). So head classes often accompany tail
  classes (at the defaults, 35 % of tail-class positives carry another label), through both
  relations. Primaries + companions = the target counts exactly. (In a tiny data set an image
  whose primary is the class itself may block a companion; it then swaps its primary with a
  single-label image, which keeps every count.)

**Determinism.** One ``numpy.random.Generator`` stream for the labels (``[seed, 0]``) and one per
image (``[seed, 1, index]``): the same arguments give byte-identical CSV, PNGs (no metadata chunk)
and JSON files, whatever ``workers`` is.

**Default size**: 4000 images of 64 x 64, 16 classes (counts 1485 ... 10, ratio 148.5; 3013 / 797 /
163 / 27 images with 1 / 2 / 3 / 4 labels). Measured on the project's shared 2-core CPU machine:
generation 15 s wall (17 s CPU, 2 workers, ~32 MB of PNGs); labels alone (:func:`synthetic_labels`)
0.015 s.

**Version 1 (the default) is ambiguous in the tail, not only rare.** Each tail class shares its motif
with a head class drawn "globally", about 1 px away at 64 px: disc haemorrhage / disc drusen are red
dots / yellow spots 1.0-1.7 disc radii from the disc centre, the global haemorrhages / hard exudates
keep only 2.0 disc radii away; bone spicules and macroaneurysm lie 0.02-0.05 field radii from a vessel
point, where global pigmentation may also fall. So a tail class's negatives include head images that
look like its positives, and ERM's tail stays near chance whatever the long-tail method. Measured
(ERM, EfficientNet-Lite0 ImageNet-pretrained, one run each): at ratio 8 (12,000 images; 3 blocks
frozen, Adam 3e-4, 12 epochs) test AP bone spicules 67, disc drusen 58, macroaneurysm 79, disc
haemorrhage 88, every other class 94-100; with plenty of data (docs/results/synthetic_v2/: ratio
1.5, 6,000 images, 259-389 training positives a class, the ``cpu_pretrained`` profile) validation AP
bone spicules 50, disc drusen 49, macroaneurysm 61, disc haemorrhage 76, every other class 80-100.
Version 1 stays the default so that earlier generations and results reproduce byte for byte.

**Version 2** (``version=2``, ``data.synthetic.version=2``): every class learnable from its own
images, the tail hard by scarcity only. Same catalogue, regions, motifs, prior, label model and
labels-per-image; what changes:

* global lesions keep :data:`V2_GLOBAL_DISC_CLEARANCE` (4) disc radii from the disc centre,
  :data:`V2_GLOBAL_MACULA_CLEARANCE` (1.5) macula radii from the macula and
  :data:`V2_GLOBAL_VESSEL_CLEARANCE` (0.18) field radii from every vessel centreline; a spot of a
  cluster strays at most :data:`V2_CLUSTER_SPREAD` field radii from its site;
* the regional classes sharing those motifs are drawn within :data:`V2_DISC_BAND` (1.05-1.45 disc
  radii) / :data:`V2_VESSEL_BAND` (0.03 field radii of a vessel point), and with an appearance of
  their own: disc haemorrhage as 3-4 bright-red splinter blots along the disc margin, disc drusen as an arc of
  4-6 large bright yellow-white beads round the disc, bone spicules as 3-5 near-black streaks along a
  vessel, macroaneurysm as a red sac with a thick dark rim on a vessel, macular pigment clump as 2-3
  large near-black blots; at 64 px their radii / half-lengths are 1.0-2.6 px (a spicule's
  half-width 0.7-1.0 px; version 1's tail: radii 0.55-1.4 px);
* at 64 px the drawn pixels are apart: global red dots / yellow spots >= 3.5 disc radii from the disc
  centre, disc haemorrhage / drusen <= 2.4; global pigment >= 0.12 field radii (~3.5 px) from every
  vessel centreline, each bone spicule / macroaneurysm touching a vessel (tests check both);
* companion labels: an image with more free label slots than classes still to come must take the
  current class, so low imbalance ratios are drawn (version 1 refuses some, e.g. ratio 2 at 4000
  images: ``cannot give class 15 all its companion labels``); ``imbalance_ratio=1`` is the balanced
  draw of the learnability control.

Measured the same way on the balanced draw (ratio 1, 6,000 images, 319-320 training positives a
class, two training seeds): validation AP 82-99 for every class (disc cupping 82-89, macroaneurysm
83-84, bone spicules 86-88, disc drusen 90-92, disc haemorrhage 97-99), test AP 77-100. 64 px is kept (not 96): that
control learns every class there, and 96 px would cost ~2.2x the pixels in every run of the sweep. At 12,000 images and
ratio 150 the counts are 4454 ... 30 (ratio 148.5), with 9039 / 2392 / 490 / 79 images holding
1 / 2 / 3 / 4 labels; the rarest class has 30 images in all.
"""
from __future__ import annotations

import argparse
import csv
import inspect
import io
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rskd_loss.fileio import atomic_write_bytes, atomic_write_text

__all__ = [
    "GENERATOR_VERSION",
    "VERSIONS",
    "DEFAULT_VERSION",
    "REGIONS",
    "MOTIFS",
    "LesionClass",
    "CATALOGUE",
    "DEFAULT_NUM_IMAGES",
    "DEFAULT_NUM_CLASSES",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_IMBALANCE_RATIO",
    "LESION10_LABELS_PER_IMAGE",
    "SyntheticInfo",
    "target_class_counts",
    "synthetic_labels",
    "synthetic_prior",
    "render_fundus",
    "generate_synthetic",
    "generation_meta",
    "generation_differences",
    "main",
]

GENERATOR_VERSION = "1"  # the default version (``meta.json`` records the one used, as a string)
#: generator versions: 1 (the original, byte-for-byte reproducible), 2 (separable tail, module doc)
VERSIONS = (1, 2)
DEFAULT_VERSION = 1
REGIONS = ("optic_disc", "macula", "vessels", "global")
MOTIFS = ("red_dots", "yellow_spots", "pale_patch", "dark_pigment", "ring")

DEFAULT_NUM_IMAGES = 4000
DEFAULT_NUM_CLASSES = 16
DEFAULT_IMAGE_SIZE = 64
DEFAULT_IMBALANCE_RATIO = 150.0
DEFAULT_COOCCURRENCE = 3.0
#: images with 1, 2, 3, 3+ labels in Lesion-10 (paper, Table 2)
LESION10_LABELS_PER_IMAGE = (5929, 1569, 321, 52)


@dataclass(frozen=True)
class LesionClass:
    """One synthetic class: a name, the region it lives in and the motif drawn there."""

    name: str
    region: str
    motif: str


#: every class the generator can draw, most frequent first; ``num_classes`` takes a prefix
CATALOGUE: tuple[LesionClass, ...] = (
    LesionClass("hemorrhage", "global", "red_dots"),
    LesionClass("hard_exudate", "global", "yellow_spots"),
    LesionClass("drusen", "macula", "yellow_spots"),
    LesionClass("disc_cupping", "optic_disc", "ring"),
    LesionClass("cotton_wool_spot", "global", "pale_patch"),
    LesionClass("perivascular_hemorrhage", "vessels", "red_dots"),
    LesionClass("pigmentation", "global", "dark_pigment"),
    LesionClass("macular_hypopigmentation", "macula", "pale_patch"),
    LesionClass("disc_pallor", "optic_disc", "pale_patch"),
    LesionClass("perivascular_sheathing", "vessels", "pale_patch"),
    LesionClass("macular_hole", "macula", "ring"),
    LesionClass("macular_pigment_clump", "macula", "dark_pigment"),
    LesionClass("bone_spicules", "vessels", "dark_pigment"),
    LesionClass("disc_hemorrhage", "optic_disc", "red_dots"),
    LesionClass("macroaneurysm", "vessels", "ring"),
    LesionClass("disc_drusen", "optic_disc", "yellow_spots"),
    LesionClass("macular_hemorrhage", "macula", "red_dots"),
    LesionClass("peripapillary_pigment", "optic_disc", "dark_pigment"),
    LesionClass("vessel_plaque", "vessels", "yellow_spots"),
    LesionClass("laser_scars", "global", "ring"),
)


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return int(value)


def _check_float(value: Any, name: str, low: float, high: float | None = None, *,
                 low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    ok = np.isfinite(v) and (v > low if low_open else v >= low) and (high is None or v <= high)
    if not ok:
        lo = "(" if low_open else "["
        raise ValueError(f"{name} must be in {lo}{low:g}, {'inf' if high is None else f'{high:g}'}], "
                         f"got {value!r}")
    return v


def _check_version(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)):
        raise TypeError(f"version must be an int (one of {', '.join(map(str, VERSIONS))}), "
                        f"got {type(value).__name__}")
    if str(value) not in {str(v) for v in VERSIONS}:
        raise ValueError(f"version must be one of {', '.join(map(str, VERSIONS))}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------
def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    exact = weights / weights.sum() * total
    base = np.floor(exact).astype(np.int64)
    rest = total - int(base.sum())
    order = np.argsort(-(exact - base), kind="stable")
    base[order[:rest]] += 1
    return base


def _cardinalities(num_images: int, num_classes: int, normal_fraction: float) -> np.ndarray:
    """How many images get 0, 1, 2, 3, 4 labels (exact integers, Lesion-10 proportions)."""
    n_normal = int(round(normal_fraction * num_images))
    n_lab = num_images - n_normal
    w = np.asarray(LESION10_LABELS_PER_IMAGE, dtype=np.float64)
    kmax = min(len(w), num_classes)
    w = np.concatenate([w[: kmax - 1], [w[kmax - 1:].sum()]])  # cap at num_classes
    counts = _largest_remainder(w, n_lab)
    return np.concatenate([[n_normal], counts])  # index = number of labels


def target_class_counts(
    num_images: int = DEFAULT_NUM_IMAGES,
    num_classes: int = DEFAULT_NUM_CLASSES,
    *,
    imbalance_ratio: float = DEFAULT_IMBALANCE_RATIO,
    normal_fraction: float = 0.0,
) -> np.ndarray:
    """The exact per-class positive counts the generator realises, ``(C,)`` int64, non-increasing.

    ``m_c`` is proportional to ``imbalance_ratio ** (-c / (C - 1))`` and the counts sum to the number
    of label slots fixed by the labels-per-image distribution (Lesion-10, paper Table 2).
    """
    num_images = _check_int(num_images, "num_images", 1)
    num_classes = _check_int(num_classes, "num_classes", 2, len(CATALOGUE))
    imbalance_ratio = _check_float(imbalance_ratio, "imbalance_ratio", 1.0)
    normal_fraction = _check_float(normal_fraction, "normal_fraction", 0.0, 1.0)
    card = _cardinalities(num_images, num_classes, normal_fraction)
    slots = int((card * np.arange(len(card))).sum())
    w = imbalance_ratio ** (-np.arange(num_classes) / (num_classes - 1))
    m = _largest_remainder(w, slots)
    if m.min() < 1:
        raise ValueError(f"num_images={num_images} is too small for {num_classes} classes with "
                         f"imbalance_ratio={imbalance_ratio:g}: the rarest class would get "
                         f"{int(m.min())} images")
    return m


def _partner_matrix(classes: Sequence[LesionClass]) -> np.ndarray:
    """Symmetric (C, C) bool: each class and the most frequent other class sharing its motif, and
    the most frequent other class sharing its region."""
    n = len(classes)
    out = np.zeros((n, n), dtype=bool)
    for c, cls in enumerate(classes):
        for attr in ("motif", "region"):
            same = [d for d in range(n) if d != c and getattr(classes[d], attr) == getattr(cls, attr)]
            if same:
                out[c, same[0]] = out[same[0], c] = True
    return out


def _swap_primaries(y: np.ndarray, k: np.ndarray, free: np.ndarray, c: int, short: int,
                    rng: np.random.Generator) -> None:
    """Make ``short`` more images able to take class ``c`` as a companion, keeping every count.

    An image with a free slot whose primary is ``c`` cannot take ``c`` again; it swaps its primary
    with a single-label image holding some ``d`` it lacks (``c`` <-> ``d``). Only happens for tiny
    data sets; raises ``ValueError`` if no swap is possible.
    """
    blocked = rng.permutation(np.flatnonzero((free > 0) & (y[:, c] == 1)))
    singles = list(rng.permutation(np.flatnonzero((k == 1) & (y[:, c] == 0))))
    for j in blocked:
        if short == 0:
            break
        for pos, i in enumerate(singles):
            d = int(np.flatnonzero(y[i])[0])
            if y[j, d] == 0:
                y[j, c], y[j, d], y[i, d], y[i, c] = 0, 1, 0, 1
                singles.pop(pos)
                short -= 1
                break
    if short:
        raise ValueError(f"cannot give class {c} all its companion labels: too few images "
                         f"(use more images or a lower imbalance_ratio)")


def synthetic_labels(
    num_images: int = DEFAULT_NUM_IMAGES,
    num_classes: int = DEFAULT_NUM_CLASSES,
    *,
    seed: int = 0,
    imbalance_ratio: float = DEFAULT_IMBALANCE_RATIO,
    normal_fraction: float = 0.0,
    cooccurrence: float = DEFAULT_COOCCURRENCE,
    version: int = DEFAULT_VERSION,
) -> np.ndarray:
    """The ``(N, C)`` uint8 label matrix of a generation, without rendering any image (fast).

    Column sums equal :func:`target_class_counts`; row sums follow Lesion-10's labels-per-image
    distribution (paper, Table 2). See the module doc for the co-occurrence model.

    Example::

        >>> y = synthetic_labels(4000, 16, seed=0)
        >>> y.shape, int(y.sum(0)[0]) // int(y.sum(0)[-1]) >= 100
        ((4000, 16), True)
    """
    seed = _check_int(seed, "seed", 0)
    cooccurrence = _check_float(cooccurrence, "cooccurrence", 0.0)
    version = _check_version(version)
    m = target_class_counts(num_images, num_classes, imbalance_ratio=imbalance_ratio,
                            normal_fraction=normal_fraction)
    card = _cardinalities(num_images, num_classes, normal_fraction)
    rng = np.random.default_rng([seed, 0])
    k = np.repeat(np.arange(len(card)), card).astype(np.int64)  # labels per image
    rng.shuffle(k)
    labelled = np.flatnonzero(k > 0)
    extra = int((k - 1)[labelled].sum())  # label slots beyond the first of each image
    # companions (second, third, ... labels) per class, proportional to frequency, keeping at least
    # one primary per class; primaries take the rest and sum to the number of labelled images
    comp = _largest_remainder(m.astype(np.float64), extra)
    over = np.maximum(comp - (m - 1), 0)
    comp -= over
    comp[0] += int(over.sum())
    if comp[0] > m[0] - 1 or comp[0] > len(labelled) - 1:
        raise ValueError(f"cannot realise class counts {m.tolist()} with {num_images} images "
                         f"(lower imbalance_ratio or normal_fraction, or use more images)")
    prim = m - comp
    y = np.zeros((num_images, num_classes), dtype=np.uint8)
    y[labelled, rng.permutation(np.repeat(np.arange(num_classes), prim))] = 1
    free = k - 1
    free[k == 0] = 0
    _assign_companions(y, k, free, comp, rng, cooccurrence=cooccurrence, forced=version >= 2)
    return y


def _assign_companions(y: np.ndarray, k: np.ndarray, free: np.ndarray, comp: np.ndarray,
                       rng: np.random.Generator, *, cooccurrence: float, forced: bool) -> None:
    """Give each class ``c`` its ``comp[c]`` companion labels in place, most companions first.

    Images are drawn with weight = free slots x ``(1 + cooccurrence)`` if they hold a partner of
    ``c``. ``forced`` (version 2): an image with more free slots than classes still to come that it
    lacks must take ``c`` now, or a slot would stay empty and a later class short (what refuses some
    low imbalance ratios in version 1: ``cannot give class ... all its companion labels``).
    """
    num_classes = y.shape[1]
    partner = _partner_matrix(CATALOGUE[:num_classes])
    order = np.argsort(-comp, kind="stable")
    for t, c in enumerate(order):
        if comp[c] == 0:
            continue
        eligible = np.flatnonzero((free > 0) & (y[:, c] == 0))
        if len(eligible) < comp[c]:
            _swap_primaries(y, k, free, int(c), int(comp[c]) - len(eligible), rng)
            eligible = np.flatnonzero((free > 0) & (y[:, c] == 0))
        must = np.zeros(len(eligible), dtype=bool)
        if forced:
            later = order[t + 1:][comp[order[t + 1:]] > 0]
            must = free[eligible] > (y[np.ix_(eligible, later)] == 0).sum(axis=1)
        w = free[eligible].astype(np.float64)
        if partner[c].any():
            w *= np.where(y[np.ix_(eligible, np.flatnonzero(partner[c]))].any(axis=1),
                          1.0 + cooccurrence, 1.0)
        chosen = _draw_companions(eligible, w, must, int(comp[c]), rng)
        y[chosen, c] = 1
        free[chosen] -= 1


def _draw_companions(eligible: np.ndarray, weight: np.ndarray, must: np.ndarray, size: int,
                     rng: np.random.Generator) -> np.ndarray:
    """``size`` of ``eligible`` drawn without replacement with probability ``weight``, the ``must``
    ones first (all of them if they fit)."""
    if not must.any():  # version 1's draw, unchanged
        return rng.choice(eligible, size=size, replace=False, p=weight / weight.sum())
    first = eligible[must]
    if len(first) >= size:
        return rng.choice(first, size=size, replace=False)
    rest, w = eligible[~must], weight[~must]
    return np.concatenate([first, rng.choice(rest, size=size - len(first), replace=False, p=w / w.sum())])


def synthetic_prior(num_classes: int = DEFAULT_NUM_CLASSES, *, version: int = DEFAULT_VERSION) -> dict[str, Any]:
    """The region / phenotype prior of the first ``num_classes`` catalogue classes.

    Same format as ``rskd_loss/priors/*.json``; groups with no class are left out. The groups are the
    same in every version (version 2 changes how classes look, not where they are or which motif).
    """
    num_classes = _check_int(num_classes, "num_classes", 2, len(CATALOGUE))
    version = _check_version(version)
    classes = CATALOGUE[:num_classes]
    region = {r: [c.name for c in classes if c.region == r] for r in REGIONS}
    feature = {f: [c.name for c in classes if c.motif == f] for f in MOTIFS}
    return {
        "name": "synthetic",
        "description": ("Synthetic long-tailed fundus benchmark: each class is one visual motif "
                        "drawn in one fundus region; 'region' groups classes by where they are "
                        "drawn, 'feature' by the motif (phenotype) they share."),
        "sources": [f"recipes/data/synthetic.py, CATALOGUE (generator version {version})"],
        "classes": [c.name for c in classes],
        "region": {k: v for k, v in region.items() if v},
        "feature": {k: v for k, v in feature.items() if v},
    }


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------
_GRID_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(w: int) -> tuple[np.ndarray, np.ndarray]:
    if w not in _GRID_CACHE:
        yy, xx = np.mgrid[0:w, 0:w].astype(np.float32) + 0.5
        _GRID_CACHE[w] = (yy, xx)
    return _GRID_CACHE[w]


def _window(img: np.ndarray, cy: float, cx: float, pad: float):
    """The box of ``img`` within ``pad`` of (cy, cx), clipped, and the pixel-centre offsets (dy column,
    dx row) from (cy, cx); None when the box is empty."""
    h, w, _ = img.shape
    y0, y1 = max(0, int(cy - pad)), min(h, int(cy + pad) + 1)
    x0, x1 = max(0, int(cx - pad)), min(w, int(cx + pad) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - cy)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - cx)
    return (y0, y1, x0, x1), dy, dx


def _blend_blob(img: np.ndarray, cy: float, cx: float, r: float, color: Sequence[float], alpha: float,
                soft: float = 0.6, ring: float | None = None) -> None:
    """Alpha-blend a soft disc (or, with ``ring`` = thickness, an annulus) into ``img`` in place."""
    win = _window(img, cy, cx, r + soft + (ring or 0) + 1)
    if win is None:
        return
    (y0, y1, x0, x1), dy, dx = win
    d = np.sqrt(dy * dy + dx * dx)
    if ring is None:
        a = np.clip((r - d) / soft + 0.5, 0.0, 1.0)
    else:
        a = np.clip((ring / 2 - np.abs(d - r)) / soft + 0.5, 0.0, 1.0)
    a = (alpha * a)[..., None]
    patch = img[y0:y1, x0:x1]
    patch *= 1.0 - a
    patch += a * np.asarray(color, dtype=np.float32)


def _darken(img: np.ndarray, cy: float, cx: float, r: float) -> None:
    """Darken (and brown) a Gaussian spot of radius ~``r`` in place: the macula."""
    win = _window(img, cy, cx, 2.5 * r)
    if win is None:
        return
    (y0, y1, x0, x1), dy, dx = win
    g = np.exp(-(dy * dy + dx * dx) * np.float32(1.2 / (r * r)))[..., None]
    img[y0:y1, x0:x1] *= (1 - 0.30 * g) * (1 - g * np.array([0.0, 0.08, 0.1], np.float32))


def _vessel_tree(rng: np.random.Generator, disc: tuple[float, float], side: int, big_r: float,
                 centre: tuple[float, float]) -> list[tuple[list[tuple[float, float]], float]]:
    """Polylines ``(points as (x, y), width)`` of a random vessel tree leaving the disc."""
    out: list[tuple[list[tuple[float, float]], float]] = []
    step = 0.075 * big_r

    r2max = (1.02 * big_r) ** 2

    def walk(x: float, y: float, ang: float, n: int, width: float, depth: int) -> None:
        u = rng.random((4, n)).tolist()  # one draw per walk: wiggle, branch?, branch side, spread
        turn = 0.12 * (u[0][0] - 0.5)
        pts = [(x, y)]
        for k in range(n):
            ang += turn + 0.4 * (u[0][k] - 0.5)
            x += step * math.cos(ang)
            y += step * math.sin(ang)
            if (x - centre[0]) ** 2 + (y - centre[1]) ** 2 > r2max:
                break
            pts.append((x, y))
            if depth < 1 and 2 <= k <= n - 3 and u[1][k] < 0.22:
                walk(x, y, ang + (1 if u[2][k] < 0.5 else -1) * (0.4 + 0.5 * u[3][k]),
                     max(3, n - k - 2), width * 0.7, depth + 1)
        if len(pts) > 1:
            out.append((pts, width))

    # arcades: two towards the macula (temporal, curving above/below it), two nasal
    t = np.pi if side > 0 else 0.0  # direction from disc towards the macula
    for sgn in (-1, 1):
        walk(disc[0], disc[1], t + sgn * rng.uniform(0.9, 1.2), 14, 0.032 * big_r, 0)
        walk(disc[0], disc[1], t + np.pi + sgn * rng.uniform(0.5, 1.0), 9, 0.026 * big_r, 0)
    return out


class _Geometry(NamedTuple):
    """Where one image's fundus lies (pixels of the output image)."""

    cx: float  # field centre
    cy: float
    R: float  # field radius
    side: int  # +1: disc right of centre
    disc: tuple[float, float]  # optic disc centre (x, y)
    rd: float  # disc radius
    mac: tuple[float, float]  # macula centre (x, y)
    rm: float  # macula radius


def _fundus_geometry(rng: np.random.Generator, W: int) -> _Geometry:
    """Field centre and size, eye side, disc and macula position and size."""
    cx = W / 2 + rng.normal(0, 0.02 * W)
    cy = W / 2 + rng.normal(0, 0.02 * W)
    R = W * rng.uniform(0.43, 0.48)
    side = int(rng.choice([-1, 1]))  # +1: disc right of centre
    disc = (cx + side * (0.38 + rng.normal(0, 0.03)) * R, cy + rng.normal(0, 0.05) * R)
    rd = R * rng.uniform(0.10, 0.13)
    mac = (cx - side * (0.17 + rng.normal(0, 0.03)) * R, cy + rng.normal(0, 0.04) * R)
    rm = R * rng.uniform(0.14, 0.18)
    return _Geometry(cx, cy, R, side, disc, rd, mac, rm)


def _background(rng: np.random.Generator, W: int,
                g: _Geometry) -> tuple[np.ndarray, np.float32, np.ndarray]:
    """The textured, vignetted background with the macula and the optic disc.

    Returns ``(img, bright, d)``: the float32 ``(W, W, 3)`` image, the brightness factor and each
    pixel's distance from the field centre in field radii.
    """
    from PIL import Image

    yy, xx = _grid(W)
    base = (np.array([0.80, 0.36, 0.15]) + rng.normal(0, [0.04, 0.03, 0.02])).astype(np.float32)
    bright = np.float32(rng.uniform(0.78, 1.12))
    low = rng.normal(0, 1, (6, 6)).astype(np.float32)
    tex = np.asarray(Image.fromarray(low, mode="F").resize((W, W), Image.Resampling.BICUBIC))
    grain = rng.standard_normal((W, W), dtype=np.float32)
    d = np.sqrt((yy - np.float32(g.cy)) ** 2 + (xx - np.float32(g.cx)) ** 2) / np.float32(g.R)
    shade = bright * (1 + 0.07 * tex + 0.035 * grain) * (1 - 0.38 * d * d * np.sqrt(d))
    img = base[None, None, :] * shade[..., None]
    # macula: darker, browner (a Gaussian dip, computed on its bounding box only)
    _darken(img, g.mac[1], g.mac[0], g.rm)
    # optic disc with a pale cup
    disc, rd = g.disc, g.rd
    _blend_blob(img, disc[1], disc[0], rd, (1.0, 0.83, 0.55), 0.95, soft=0.25 * rd)
    _blend_blob(img, disc[1] + rng.normal(0, 0.1) * rd, disc[0] + rng.normal(0, 0.1) * rd,
                rd * rng.uniform(0.3, 0.45), (1.0, 0.95, 0.82), 0.9, soft=0.2 * rd)
    return img, bright, d


def _draw_vessels(img: np.ndarray, tree: list[tuple[list[tuple[float, float]], float]],
                  bright: np.float32) -> np.ndarray:
    """``img`` with the vessel ``tree`` painted in: drawn at 4x on a mask, box-filtered down
    (anti-aliased sub-pixel widths)."""
    from PIL import Image, ImageDraw

    W = img.shape[0]
    k = 4
    mask = Image.new("L", (W * k, W * k), 0)
    draw = ImageDraw.Draw(mask)
    for pts, width in tree:
        draw.line([(k * x, k * y) for x, y in pts], fill=255, width=max(1, int(round(k * width))),
                  joint="curve")
    mask = mask.resize((W, W), Image.Resampling.BOX)
    va = (np.asarray(mask, dtype=np.float32) / 255.0 * 0.75)[..., None]
    return img * (1 - va) + va * (np.array([0.50, 0.10, 0.07], np.float32) * bright)


def _vessel_runs(tree: list[tuple[list[tuple[float, float]], float]],
                 g: _Geometry) -> list[np.ndarray]:
    """Vessel points away from the disc, per polyline (runs of consecutive points follow a
    vessel)."""
    disc, rd = g.disc, g.rd
    runs = []
    for pts, _ in tree:
        a = np.asarray(pts[1:], dtype=np.float64)
        a = a[((a[:, 0] - disc[0]) ** 2 + (a[:, 1] - disc[1]) ** 2) > (2.2 * rd) ** 2]
        if len(a):
            runs.append(a)
    if not runs:  # (never seen) a tree entirely within the disc margin: use every point
        runs = [np.asarray(pts, dtype=np.float64) for pts, _ in tree]
    return runs


#: version 2's sites (module doc, "Version 2"): global lesions keep at least these distances from the
#: disc centre (disc radii), the macula centre (macula radii) and every vessel centreline (field
#: radii); the regional tail lesions sharing their motifs lie within these bands
V2_GLOBAL_DISC_CLEARANCE = 4.0
V2_GLOBAL_MACULA_CLEARANCE = 1.5
V2_GLOBAL_VESSEL_CLEARANCE = 0.18
V2_DISC_BAND = (1.05, 1.45)   # disc-margin sites (disc haemorrhage, disc drusen), disc radii
V2_VESSEL_BAND = 0.03         # on-vessel sites (bone spicules, macroaneurysm): at most this far from
                              # a vessel point, field radii


def _segment_distance(points: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Distance of each of ``points`` (n, 2) to the nearest of ``segments`` (m, 2, 2), (n,)."""
    a, b = segments[None, :, 0], segments[None, :, 1]
    ab = b - a
    t = np.clip(((points[:, None] - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    near = a + t[..., None] * ab
    return np.sqrt(((points[:, None] - near) ** 2).sum(-1)).min(axis=1)


def _tree_segments(tree: list[tuple[list[tuple[float, float]], float]]) -> np.ndarray:
    """Every segment of the vessel ``tree``, (m, 2, 2) as ((x0, y0), (x1, y1))."""
    segs = [np.stack([np.asarray(pts[:-1]), np.asarray(pts[1:])], axis=1) for pts, _ in tree if len(pts) > 1]
    return np.concatenate(segs).astype(np.float64)


class _LesionSites:
    """Random lesion positions in one image's regions, drawn from that image's ``rng``.

    ``segments`` (the whole vessel tree, version 2 only) lets version 2's global sites keep clear of
    the vessels."""

    def __init__(self, rng: np.random.Generator, g: _Geometry, runs: list[np.ndarray], *,
                 version: int = DEFAULT_VERSION, segments: np.ndarray | None = None) -> None:
        self.rng, self.g, self.runs = rng, g, runs
        self.vessel_pts = np.concatenate(runs)
        self.version, self.segments = version, segments

    def global_clearance(self, x: float, y: float) -> float:
        """Version 2: by how many pixels (x, y) clears the disc, macula and vessel margins of a
        global site (>= 0: it is a valid global site)."""
        (_, _, R, _, disc, rd, mac, rm) = self.g
        slack = [math.hypot(x - disc[0], y - disc[1]) - V2_GLOBAL_DISC_CLEARANCE * rd,
                 math.hypot(x - mac[0], y - mac[1]) - V2_GLOBAL_MACULA_CLEARANCE * rm]
        if self.segments is not None:
            slack.append(float(_segment_distance(np.array([[x, y]]), self.segments)[0])
                         - V2_GLOBAL_VESSEL_CLEARANCE * R)
        return min(slack)

    def _global_point_v2(self) -> tuple[float, float]:
        """A point of the mid-periphery clear of disc, macula and vessels by version 2's margins; the
        clearest of 400 candidates should none clear them (not seen at 64 px)."""
        rng, (cx, cy, R) = self.rng, self.g[:3]
        best, best_slack = (cx, cy), -math.inf
        for _ in range(400):
            rr, a = R * np.sqrt(rng.uniform(0.06, 0.80)), rng.uniform(0, 2 * np.pi)
            x, y = cx + rr * np.cos(a), cy + rr * np.sin(a)
            slack = self.global_clearance(x, y)
            if slack >= 0:
                return x, y
            if slack > best_slack:
                best, best_slack = (x, y), slack
        return best

    def disc_margin_point(self, angle: float | None = None) -> tuple[float, float]:
        """Version 2: a point of the disc margin band (:data:`V2_DISC_BAND` disc radii)."""
        rng, disc, rd = self.rng, self.g.disc, self.g.rd
        rr = rd * rng.uniform(*V2_DISC_BAND)
        a = rng.uniform(0, 2 * np.pi) if angle is None else angle
        return disc[0] + rr * np.cos(a), disc[1] + rr * np.sin(a)

    def on_vessel(self, x: float, y: float) -> tuple[float, float]:
        """Version 2: (x, y), a vessel point, moved at most :data:`V2_VESSEL_BAND` field radii."""
        rr, a = self.g.R * self.rng.uniform(0.0, V2_VESSEL_BAND), self.rng.uniform(0, 2 * np.pi)
        return x + rr * np.cos(a), y + rr * np.sin(a)

    def vessel_run(self, n: int) -> np.ndarray:
        """Up to ``n`` consecutive points along one vessel (longer vessels more likely)."""
        rng, runs = self.rng, self.runs
        lengths = np.array([len(r) for r in runs], dtype=np.float64)
        r = runs[int(rng.choice(len(runs), p=lengths / lengths.sum()))]
        start = int(rng.integers(max(1, len(r) - n + 1)))
        return r[start:start + n]

    def global_point(self) -> tuple[float, float]:
        """A point of the mid-periphery away from the disc and the macula (version 2: by its margins,
        and away from the vessels)."""
        if self.version >= 2:
            return self._global_point_v2()
        rng, (cx, cy, R, _, disc, rd, mac, rm) = self.rng, self.g
        for _ in range(100):
            rr = R * np.sqrt(rng.uniform(0.06, 0.72))
            a = rng.uniform(0, 2 * np.pi)
            x, y = cx + rr * np.cos(a), cy + rr * np.sin(a)
            if ((x - disc[0]) ** 2 + (y - disc[1]) ** 2 > (2.0 * rd) ** 2
                    and (x - mac[0]) ** 2 + (y - mac[1]) ** 2 > (1.3 * rm) ** 2):
                return x, y
        return x, y

    def local_point(self, region: str, spread: float = 1.0) -> tuple[float, float]:
        """A point of ``region`` (``global``: :meth:`global_point`)."""
        rng, (_, _, R, _, disc, rd, mac, rm) = self.rng, self.g
        if region == "macula":
            rr, a = rm * 0.75 * spread * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
            return mac[0] + rr * np.cos(a), mac[1] + rr * np.sin(a)
        if region == "optic_disc":
            rr, a = rd * rng.uniform(1.0, 1.7) * spread, rng.uniform(0, 2 * np.pi)
            return disc[0] + rr * np.cos(a), disc[1] + rr * np.sin(a)
        if region == "vessels":
            x, y = self.vessel_pts[rng.integers(len(self.vessel_pts))]
            rr, a = R * rng.uniform(0.02, 0.05) * spread, rng.uniform(0, 2 * np.pi)
            return x + rr * np.cos(a), y + rr * np.sin(a)
        return self.global_point()

    def n_sites(self, region: str, lo_hi_local: tuple[int, int],
                lo_hi_global: tuple[int, int]) -> int:
        """How many lesion sites: uniform in ``lo_hi_global`` or ``lo_hi_local`` (inclusive)."""
        lo, hi = lo_hi_global if region == "global" else lo_hi_local
        return int(self.rng.integers(lo, hi + 1))


def _draw_red_dots(img: np.ndarray, reg: str, s: _LesionSites) -> None:
    rng, R = s.rng, s.g.R
    if reg == "vessels":  # a beaded row of blots flanking one stretch of vessel
        run = s.vessel_run(5)
        for j, (x0, y0) in enumerate(run):
            nxt = run[min(j + 1, len(run) - 1)] - run[max(j - 1, 0)]
            nrm = np.array([-nxt[1], nxt[0]]) / (np.hypot(*nxt) + 1e-9)
            off = (1 if j % 2 else -1) * 0.045 * R
            _blend_blob(img, y0 + off * nrm[1], x0 + off * nrm[0], R * rng.uniform(0.035, 0.05),
                        (0.40, 0.04, 0.03), 0.92, soft=0.6)
    else:
        for _ in range(s.n_sites(reg, (3, 5), (5, 9))):
            x0, y0 = s.local_point(reg)
            _blend_blob(img, y0, x0, R * rng.uniform(0.028, 0.045), (0.40, 0.04, 0.03), 0.92,
                        soft=0.6)


#: version 2: how far (field radii) a spot of a cluster may stray from its site
V2_CLUSTER_SPREAD = 0.05


def _scatter(s: _LesionSites, sd: float) -> tuple[float, float]:
    """A normal offset (dy, dx) of standard deviation ``sd``; version 2 cuts each coordinate at
    :data:`V2_CLUSTER_SPREAD` field radii so that a cluster stays within its site's margin."""
    dy, dx = s.rng.normal(0, sd), s.rng.normal(0, sd)
    if s.version >= 2:
        cut = V2_CLUSTER_SPREAD * s.g.R / math.sqrt(2)
        dy, dx = float(np.clip(dy, -cut, cut)), float(np.clip(dx, -cut, cut))
    return dy, dx


def _draw_yellow_spots(img: np.ndarray, reg: str, s: _LesionSites) -> None:
    rng, R = s.rng, s.g.R
    for _ in range(s.n_sites(reg, (1, 1), (2, 3))):
        x0, y0 = s.local_point(reg)
        for _ in range(int(rng.integers(3, 6))):
            dy, dx = _scatter(s, 0.04 * R)
            _blend_blob(img, y0 + dy, x0 + dx, R * rng.uniform(0.02, 0.032), (1.0, 0.92, 0.35), 0.92,
                        soft=0.5)


def _draw_pale_patch(img: np.ndarray, reg: str, s: _LesionSites) -> None:
    rng, R, disc, rd = s.rng, s.g.R, s.g.disc, s.g.rd
    if reg == "optic_disc":  # pallor: the whole disc turns white
        _blend_blob(img, disc[1], disc[0], rd * 1.05, (0.97, 0.96, 0.92), 0.85, soft=0.3 * rd)
    elif reg == "vessels":  # sheathing: a pale cuff along a stretch of vessel
        for x0, y0 in s.vessel_run(5):
            _blend_blob(img, y0, x0, R * 0.04, (0.95, 0.9, 0.82), 0.7, soft=0.8)
    else:
        for _ in range(s.n_sites(reg, (1, 1), (2, 3))):
            x0, y0 = s.local_point(reg, 0.6)
            _blend_blob(img, y0, x0, R * rng.uniform(0.065, 0.09), (0.96, 0.9, 0.82), 0.8,
                        soft=0.35 * R * 0.08)


def _draw_dark_pigment(img: np.ndarray, reg: str, s: _LesionSites) -> None:
    rng, R = s.rng, s.g.R
    for _ in range(s.n_sites(reg, (1, 2), (3, 5))):
        x0, y0 = s.local_point(reg)
        for _ in range(3):
            dy, dx = _scatter(s, 0.025 * R)
            _blend_blob(img, y0 + dy, x0 + dx, R * rng.uniform(0.022, 0.036), (0.10, 0.06, 0.04), 0.92,
                        soft=0.5)


def _draw_ring(img: np.ndarray, reg: str, s: _LesionSites) -> None:
    rng, R, disc, rd, mac, rm = s.rng, s.g.R, s.g.disc, s.g.rd, s.g.mac, s.g.rm
    if reg == "optic_disc":
        x0, y0, rr = disc[0], disc[1], rd * rng.uniform(0.62, 0.8)
        _blend_blob(img, y0, x0, rr, (0.30, 0.07, 0.04), 0.9, soft=0.5, ring=0.035 * R)
    else:
        for _ in range(s.n_sites(reg, (1, 1), (3, 5))):
            if reg == "macula":
                x0, y0 = mac[0] + rng.normal(0, 0.1 * rm), mac[1] + rng.normal(0, 0.1 * rm)
            else:
                x0, y0 = s.local_point(reg)
            _blend_blob(img, y0, x0, R * rng.uniform(0.07, 0.095), (0.28, 0.07, 0.04), 0.88,
                        soft=0.5, ring=0.035 * R)


#: one drawing function per motif; any other motif is drawn as a ring
_LESION_DRAWERS = {
    "red_dots": _draw_red_dots,
    "yellow_spots": _draw_yellow_spots,
    "pale_patch": _draw_pale_patch,
    "dark_pigment": _draw_dark_pigment,
    "ring": _draw_ring,
}


def _blend_ellipse(img: np.ndarray, cy: float, cx: float, a: float, b: float, angle: float,
                   color: Sequence[float], alpha: float, soft: float = 0.5) -> None:
    """Alpha-blend a soft ellipse (semi-axes ``a`` along ``angle``, ``b`` across) into ``img`` in place."""
    win = _window(img, cy, cx, max(a, b) + soft + 1)
    if win is None:
        return
    (y0, y1, x0, x1), dy, dx = win
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u, v = (dx * c + dy * s) / np.float32(a), (-dx * s + dy * c) / np.float32(b)
    d = np.sqrt(u * u + v * v)  # 1 on the outline
    w = (alpha * np.clip((1.0 - d) * np.float32(min(a, b)) / soft + 0.5, 0.0, 1.0))[..., None]
    patch = img[y0:y1, x0:x1]
    patch *= 1.0 - w
    patch += w * np.asarray(color, dtype=np.float32)


def _draw_disc_hemorrhage_v2(img: np.ndarray, s: _LesionSites) -> None:
    """Version 2 disc haemorrhage: 3-4 bright-red splinter blots lying along the disc margin (round
    dark-red dots elsewhere). Along, not across: radial streaks looked like the vessels leaving the
    disc; bright red and 2.6-3 px long: darker, smaller ones stayed near 80 validation AP when
    balanced, beside the dark-red vessels and cup ring of the 7 px disc."""
    rng, R, disc = s.rng, s.g.R, s.g.disc
    for _ in range(int(rng.integers(3, 5))):
        x0, y0 = s.disc_margin_point()
        _blend_ellipse(img, y0, x0, R * rng.uniform(0.09, 0.1), R * rng.uniform(0.045, 0.05),
                       math.atan2(y0 - disc[1], x0 - disc[0]) + np.pi / 2, (0.70, 0.04, 0.03), 0.95)


def _draw_macular_pigment_v2(img: np.ndarray, s: _LesionSites) -> None:
    """Version 2 macular pigment clump: 2-3 large near-black blots in the macula (version 1's
    0.6-1 px clumps were hard to tell from the macula's own darkness at 64 px)."""
    rng, R = s.rng, s.g.R
    for _ in range(int(rng.integers(2, 4))):
        x0, y0 = s.local_point("macula")
        _blend_blob(img, y0, x0, R * rng.uniform(0.038, 0.048), (0.05, 0.03, 0.02), 0.95, soft=0.5)


def _draw_disc_drusen_v2(img: np.ndarray, s: _LesionSites) -> None:
    """Version 2 disc drusen: an arc of 4-6 large, bright yellow-white beads around the disc margin
    (clusters of smaller, deeper-yellow spots elsewhere)."""
    rng, R = s.rng, s.g.R
    start = rng.uniform(0, 2 * np.pi)
    for j in range(int(rng.integers(4, 7))):
        x0, y0 = s.disc_margin_point(start + 0.55 * j)
        _blend_blob(img, y0, x0, R * rng.uniform(0.042, 0.052), (1.0, 1.0, 0.72), 1.0, soft=0.5)


def _draw_bone_spicules_v2(img: np.ndarray, s: _LesionSites) -> None:
    """Version 2 bone spicules: 3-5 near-black streaks lying along one stretch of vessel (round
    clumps, clear of the vessels, elsewhere)."""
    rng, R = s.rng, s.g.R
    run = s.vessel_run(6)
    for j in rng.permutation(len(run))[: int(rng.integers(3, 6))]:
        seg = run[min(j + 1, len(run) - 1)] - run[max(j - 1, 0)]
        x0, y0 = s.on_vessel(*run[j])
        _blend_ellipse(img, y0, x0, R * rng.uniform(0.055, 0.065), R * rng.uniform(0.026, 0.032),
                       math.atan2(seg[1], seg[0]) + rng.uniform(-0.4, 0.4), (0.06, 0.04, 0.03), 0.95)


def _draw_macroaneurysm_v2(img: np.ndarray, s: _LesionSites) -> None:
    """Version 2 macroaneurysm: a bright-red sac with a thick dark rim sitting on a vessel (rings
    elsewhere are thinner and hollow)."""
    rng, R = s.rng, s.g.R
    x0, y0 = s.on_vessel(*s.vessel_run(1)[0])
    _blend_blob(img, y0, x0, R * rng.uniform(0.05, 0.06), (0.75, 0.10, 0.06), 0.95, soft=0.5)
    _blend_blob(img, y0, x0, R * rng.uniform(0.075, 0.085), (0.20, 0.04, 0.03), 0.92, soft=0.5,
                ring=0.04 * R)


#: version 2: classes with an appearance of their own, by (motif, region); the rest as version 1.
#: Version 2 is fixed now that results quote it: a change to what it draws is a version 3 (meta.json
#: records the version, not the code, so a folder generated before the change would be reused)
_V2_DRAWERS = {
    ("red_dots", "optic_disc"): _draw_disc_hemorrhage_v2,
    ("yellow_spots", "optic_disc"): _draw_disc_drusen_v2,
    ("dark_pigment", "vessels"): _draw_bone_spicules_v2,
    ("dark_pigment", "macula"): _draw_macular_pigment_v2,
    ("ring", "vessels"): _draw_macroaneurysm_v2,
}


def _draw_lesion(img: np.ndarray, cls: LesionClass, sites: _LesionSites) -> None:
    """Draw the motif of ``cls`` in its region into ``img`` in place."""
    own = _V2_DRAWERS.get((cls.motif, cls.region)) if sites.version >= 2 else None
    if own is not None:
        own(img, sites)
    else:
        _LESION_DRAWERS.get(cls.motif, _draw_ring)(img, cls.region, sites)


def render_fundus(
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    classes: Sequence[LesionClass] | None = None,
    version: int = DEFAULT_VERSION,
) -> np.ndarray:
    """Render one fundus-like image with the lesions of the positive ``labels`` (C,) 0/1.

    Returns an ``(image_size, image_size, 3)`` uint8 RGB array. Deterministic for a given ``rng``
    state. ``version`` 2 draws the tail with its own margins and appearances (module doc).
    """
    version = _check_version(version)
    classes = CATALOGUE[: len(labels)] if classes is None else classes
    W = int(image_size)
    g = _fundus_geometry(rng, W)
    img, bright, d = _background(rng, W, g)
    tree = _vessel_tree(rng, g.disc, g.side, g.R, (g.cx, g.cy))
    img = _draw_vessels(img, tree, bright)
    sites = _LesionSites(rng, g, _vessel_runs(tree, g), version=version,
                         segments=_tree_segments(tree) if version >= 2 else None)
    for c in np.flatnonzero(np.asarray(labels)):
        _draw_lesion(img, classes[int(c)], sites)
    # -- field mask, downsample, quantise -------------------------------------------------------
    field = np.clip((1.0 - d) * np.float32(g.R) + 0.5, 0.0, 1.0)
    img *= field[..., None]
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticInfo:
    """Where a generation lives and what it holds."""

    out_dir: Path
    csv_path: Path
    image_dir: Path
    prior_path: Path
    meta_path: Path
    class_names: tuple[str, ...]
    class_counts: tuple[int, ...]
    num_images: int
    reused: bool
    seconds: float


def _render_job(args: tuple[int, int, int, bytes, str, int]) -> None:
    seed, j, image_size, row, path, version = args
    labels = np.frombuffer(row, dtype=np.uint8)
    rng = np.random.default_rng([seed, 1, j])
    atomic_write_bytes(path, _png_bytes(render_fundus(labels, rng, image_size=image_size, version=version)))


def _synthetic_meta(y: np.ndarray, names: Sequence[str], counts: np.ndarray, *, seed: int,
                    num_images: int, num_classes: int, image_size: int, imbalance_ratio: float,
                    normal_fraction: float, cooccurrence: float, version: int) -> dict[str, Any]:
    """The content of ``meta.json``: the arguments and the realised counts."""
    per_image = np.bincount(y.sum(axis=1), minlength=min(4, num_classes) + 1)
    return {
        "generator": "recipes.data.synthetic",
        "version": str(version),
        "seed": int(seed),
        "num_images": int(num_images),
        "num_classes": int(num_classes),
        "image_size": int(image_size),
        "imbalance_ratio": float(imbalance_ratio),
        "normal_fraction": float(normal_fraction),
        "cooccurrence": float(cooccurrence),
        "class_counts": {n: int(k) for n, k in zip(names, counts)},
        "labels_per_image": {str(k): int(v) for k, v in enumerate(per_image)},
    }


def generation_meta(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``meta.json`` of the generation in ``folder`` as a dict; ``None`` when it holds none of this
    generator (no such file, not JSON, or another ``"generator"``)."""
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == "recipes.data.synthetic" else None


def generation_differences(meta: Mapping[str, Any], options: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(option, value in meta, value asked)`` for each of ``options`` that ``meta`` (a ``meta.json``)
    records with another value. ``options`` are arguments of :func:`generate_synthetic`, ``None``
    standing for its default (as the recipes' ``data.synthetic`` does); those that do not change the
    output (``workers``, ``progress``) are not in ``meta`` and not compared."""
    defaults = {k: p.default for k, p in inspect.signature(generate_synthetic).parameters.items()}
    out = []
    for key, asked in options.items():
        value = defaults.get(key) if asked is None else asked
        if key == "version":  # meta.json writes it as a string ("1"), options give an int
            value = str(value)
        if key in meta and meta[key] != value:
            out.append((key, meta[key], value))
    return out


def _reusable(out: Path, meta_text: str, ids: Sequence[str]) -> bool:
    """Whether ``out`` already holds this very generation (``meta_text`` and every file).

    Raises if ``out`` is a file, or a non-empty folder without a ``meta.json`` of this generator.
    """
    meta_path, image_dir = out / "meta.json", out / "images"
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir must be a folder, got a file: {out}")
    if not (out.is_dir() and any(out.iterdir())):
        return False
    if not meta_path.is_file():
        raise FileExistsError(f"{out} is not empty and holds no meta.json of this generator; "
                              f"refusing to write into it (choose an empty or new folder)")
    if generation_meta(out) is None:
        raise FileExistsError(f"{meta_path} is not a meta.json of recipes.data.synthetic; "
                              f"refusing to write into {out}")
    return (meta_path.read_text("utf-8") == meta_text and (out / "labels.csv").is_file()
            and (out / "prior.json").is_file() and all((image_dir / i).is_file() for i in ids))


def _render_images(jobs: list[tuple[int, int, int, bytes, str, int]], workers: int,
                   progress: bool) -> None:
    """Run the rendering ``jobs`` in this process (``workers`` = 1) or in a pool."""
    num_images = len(jobs)
    step = max(1, num_images // 10)
    if workers == 1:
        for k, job in enumerate(jobs, 1):
            _render_job(job)
            if progress and (k % step == 0 or k == num_images):
                print(f"[synthetic] {k}/{num_images} images", file=sys.stderr, flush=True)
    else:
        import multiprocessing

        with multiprocessing.get_context().Pool(workers) as pool:
            for k, _ in enumerate(pool.imap_unordered(_render_job, jobs, chunksize=32), 1):
                if progress and (k % step == 0 or k == num_images):
                    print(f"[synthetic] {k}/{num_images} images", file=sys.stderr, flush=True)


def _write_generation(out: Path, y: np.ndarray, names: Sequence[str], ids: Sequence[str],
                      meta_text: str, *, seed: int, image_size: int, workers: int,
                      progress: bool, version: int) -> None:
    """(Re)write every file of a generation into ``out``; ``meta.json`` last."""
    image_dir, meta_path = out / "images", out / "meta.json"
    image_dir.mkdir(parents=True, exist_ok=True)
    if meta_path.is_file():
        meta_path.unlink()  # the folder is inconsistent until the new meta.json is written
    keep = set(ids)
    for p in image_dir.glob("syn_*.png"):
        if p.name not in keep:
            p.unlink()
    jobs = [(int(seed), j, image_size, y[j].tobytes(), str(image_dir / ids[j]), version)
            for j in range(len(ids))]
    _render_images(jobs, workers, progress)
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", *names])
    for j in range(len(ids)):
        w.writerow([ids[j], *(int(v) for v in y[j])])
    atomic_write_text(out / "labels.csv", buf.getvalue())
    prior = synthetic_prior(len(names), version=version)
    atomic_write_text(out / "prior.json", json.dumps(prior, indent=2) + "\n")
    atomic_write_text(meta_path, meta_text)  # last: its presence marks a complete generation


def generate_synthetic(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    num_images: int = DEFAULT_NUM_IMAGES,
    num_classes: int = DEFAULT_NUM_CLASSES,
    imbalance_ratio: float = DEFAULT_IMBALANCE_RATIO,
    normal_fraction: float = 0.0,
    cooccurrence: float = DEFAULT_COOCCURRENCE,
    version: int = DEFAULT_VERSION,
    workers: int | None = None,
    progress: bool = False,
) -> SyntheticInfo:
    """Write the synthetic benchmark to ``out_dir`` (see the module doc for what and why).

    Args:
        out_dir: target folder; created if needed. A non-empty folder that holds no ``meta.json`` of
            this generator is refused (it is someone else's data). If its ``meta.json`` matches these
            arguments and every file is there, nothing is rewritten (``reused=True``); otherwise the
            generation is rewritten and images of an older, larger generation are removed.
        seed: the seed of every random choice (default 0).
        image_size: side of the square images in pixels (default 64; >= 32).
        num_images: default 4000.
        num_classes: default 16 (at most ``len(CATALOGUE)`` = 20), a prefix of :data:`CATALOGUE`.
        imbalance_ratio: most / least frequent class count (default 150).
        normal_fraction: share of label-free images (default 0: Lesion-10 has none, Table 2).
        cooccurrence: extra weight of an image already holding a partner class (default 3).
        version: generator version, 1 (default, reproduces every earlier generation byte for byte)
            or 2 (every class separable from the others, the tail hard by scarcity only; module doc).
        workers: processes rendering images (default ``min(2, cpu_count)``); the output does not
            depend on it.
        progress: print a progress count to stderr.

    Example::

        >>> import tempfile
        >>> info = generate_synthetic(tempfile.mkdtemp(), num_images=40, num_classes=4,
        ...                           imbalance_ratio=5, image_size=32)
        >>> info.class_names
        ('hemorrhage', 'hard_exudate', 'drusen', 'disc_cupping')
    """
    t0 = time.perf_counter()
    image_size = _check_int(image_size, "image_size", 32, 1024)
    workers = min(2, os.cpu_count() or 1) if workers is None else _check_int(workers, "workers", 1)
    version = _check_version(version)
    y = synthetic_labels(num_images, num_classes, seed=seed, imbalance_ratio=imbalance_ratio,
                         normal_fraction=normal_fraction, cooccurrence=cooccurrence, version=version)
    out = Path(out_dir)
    image_dir = out / "images"
    csv_path, prior_path, meta_path = out / "labels.csv", out / "prior.json", out / "meta.json"
    names = tuple(c.name for c in CATALOGUE[:num_classes])
    width = max(5, len(str(num_images - 1)))
    ids = [f"syn_{j:0{width}d}.png" for j in range(num_images)]
    counts = y.sum(axis=0).astype(int)
    meta = _synthetic_meta(y, names, counts, seed=seed, num_images=num_images,
                           num_classes=num_classes, image_size=image_size,
                           imbalance_ratio=imbalance_ratio, normal_fraction=normal_fraction,
                           cooccurrence=cooccurrence, version=version)
    meta_text = json.dumps(meta, indent=2) + "\n"
    reused = _reusable(out, meta_text, ids)
    if not reused:
        _write_generation(out, y, names, ids, meta_text, seed=seed, image_size=image_size,
                          workers=workers, progress=progress, version=version)
    return SyntheticInfo(out_dir=out, csv_path=csv_path, image_dir=image_dir, prior_path=prior_path,
                         meta_path=meta_path, class_names=names,
                         class_counts=tuple(int(k) for k in counts), num_images=int(num_images),
                         reused=reused, seconds=time.perf_counter() - t0)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.data.synthetic",
                                description="Write the synthetic long-tailed fundus benchmark.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES)
    p.add_argument("--num-classes", type=int, default=DEFAULT_NUM_CLASSES)
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    p.add_argument("--imbalance-ratio", type=float, default=DEFAULT_IMBALANCE_RATIO)
    p.add_argument("--normal-fraction", type=float, default=0.0)
    p.add_argument("--cooccurrence", type=float, default=DEFAULT_COOCCURRENCE)
    p.add_argument("--generator-version", type=int, default=DEFAULT_VERSION, choices=VERSIONS,
                   help="1 (default: the original benchmark) or 2 (separable tail, hard by scarcity)")
    p.add_argument("--workers", type=int, default=None, help="processes (default min(2, cpus))")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = get_args_parser().parse_args(argv)
    info = generate_synthetic(a.out, seed=a.seed, image_size=a.image_size, num_images=a.num_images,
                              num_classes=a.num_classes, imbalance_ratio=a.imbalance_ratio,
                              normal_fraction=a.normal_fraction, cooccurrence=a.cooccurrence,
                              version=a.generator_version, workers=a.workers, progress=True)
    state = "up to date" if info.reused else f"written in {info.seconds:.1f} s"
    print(f"{info.num_images} images, {len(info.class_names)} classes -> {info.out_dir} ({state})")
    for n, k in zip(info.class_names, info.class_counts):
        print(f"  {k:6d}  {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
