"""Where a student's teacher logits come from: the partition of ``method.partition``, the subset
teachers' checkpoints (checked against this run's data and partition), and the teacher-logit bank of
the fold's training images (``method.teacher_mode='bank'``) or the teachers run online.

Cross-fitted teachers (``method.crossfit_k`` = K >= 2): the fold's training images are split into K
parts (:func:`crossfit_positions`); the teachers of ``part<k>/`` trained on every part but k, and the
bank takes each image's logits from the set that left it out (:class:`rskd_loss.CrossFitTeachers`)."""
from __future__ import annotations

import hashlib
import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from recipes.config import ConfigError, default_prior, needs_prior
from recipes.data.folds import make_dataset
from recipes.data.views import View
from recipes.distributed import barrier
from recipes.engine.checkpoints import load_checkpoint
from recipes.engine.trunk_cache import check_same_trunk
from recipes.models.backbones import build_model
from rskd_loss import (
    CrossFitTeachers,
    Partition,
    SubsetPartitioner,
    SubsetTeachers,
    TeacherLogitBank,
    crossfit_parts,
    file_sha256,
)
from rskd_loss.priors import PriorError, resolve_prior
from rskd_loss.workflow import build_bank


def make_partition(cfg: Mapping, class_counts: Sequence[int], class_names: Sequence[str]) -> Partition:
    """The partition of ``method.partition`` on this fold's training counts (used by the sweep too).

    The region and feature rules read a prior: ``method.partition.prior`` (a shipped name or a JSON
    file), else the one shipped for ``data.dataset``; a missing prior, or one without some of the
    data set's classes, is a :class:`ConfigError` that names them and says how to write one.
    """
    p = cfg["method"]["partition"]
    if p["rule"] == "feature" and p["num_subsets"] is not None:
        raise ConfigError("method.partition: the feature rule by embedding clustering needs class "
                          "embeddings; the recipes use the prior's phenotype groups (set method.partition.prior)")
    with warnings.catch_warnings(record=True) as caught:  # a prior's warnings too ("groups nothing")
        warnings.simplefilter("always")
        if needs_prior(cfg):
            kw: dict[str, Any] = {"prior": _prior(cfg, class_names)}
        else:
            kw = {"thresholds": tuple(p["thresholds"]), "mode": p["mode"]}
        part = SubsetPartitioner(p["rule"], **kw).partition(class_counts=class_counts, class_names=class_names)
    for w in caught:
        print(f"partition: {w.message}", file=sys.stderr)
    return part


def _prior(cfg: Mapping, class_names: Sequence[str]) -> dict:
    d = cfg["data"]
    try:
        return resolve_prior(cfg["method"]["partition"]["prior"], class_names, default=default_prior(d["dataset"]),
                             data=str(Path(d["root"]) / d["csv"]))
    except PriorError as exc:
        raise ConfigError(str(exc)) from None


def check_same_data(ckpt: Path, data: Mapping) -> dict:
    """Load a checkpoint this run builds on (a teacher, OLTR stage 1); refuse one of other data or fold."""
    state = load_checkpoint(ckpt)
    if state.get("data_id") != data["data_id"]:
        raise ConfigError(f"{ckpt} was trained on other data: {state.get('data_id')} (CSV sha256:scheme:split "
                         f"seed:fold), this run uses {data['data_id']}; check data.root, data.fold and "
                         f"data.split_seed")
    return state


def crossfit_positions(cfg: Mapping, data: Mapping) -> list[np.ndarray] | None:
    """The K parts of the fold's training images (positions in ``data["rows"]["train"]``, i.e. bank rows)
    for ``method.crossfit_k`` = K, or ``None`` when it is 0.

    Seeded with ``data.split_seed``, not ``run.seed``: the teachers (maybe of another seed, the sweep's
    ``--teacher-seed``) and the student of a fold must get the same parts.
    """
    k = cfg["method"]["crossfit_k"]
    if not k:
        return None
    n = len(data["train_targets"])
    if k > n:
        raise ConfigError(f"config key 'method.crossfit_k' must be at most the fold's {n} training images, got {k}")
    return crossfit_parts(data["train_targets"], k, seed=cfg["data"]["split_seed"])


def rows_sha256(rows: np.ndarray) -> str:
    """SHA-256 of a set of CSV rows (sorted, int64): how a cross-fitted teacher records what it left out."""
    return hashlib.sha256(np.sort(np.asarray(rows, dtype="<i8")).tobytes()).hexdigest()


def load_teachers(cfg: Mapping, data: Mapping, device: torch.device
                  ) -> tuple[SubsetTeachers | CrossFitTeachers, Partition, list[str]]:
    """The teachers of ``method.teachers_dir`` (frozen, on ``device``), their partition and file hashes.

    With ``method.crossfit_k`` = K: the K sets of ``part0/`` .. ``part<K-1>/`` as one
    :class:`CrossFitTeachers` (hashes of every set, in part order).
    """
    tdir = Path(cfg["method"]["teachers_dir"])
    parts = crossfit_positions(cfg, data)
    if parts is None:
        teachers, part, hashes = _teacher_set(cfg, data, tdir)
        return teachers.to(device), part, hashes
    sets, hashes = [], []
    for k, left_out in enumerate(parts):
        teachers, part, set_hashes = _teacher_set(cfg, data, tdir / f"part{k}", (k, data["rows"]["train"][left_out]))
        sets.append(teachers)
        hashes += set_hashes
    return CrossFitTeachers(sets, parts).to(device), part, hashes


def _teacher_set(cfg: Mapping, data: Mapping, tdir: Path, crossfit: tuple[int, np.ndarray] | None = None
                 ) -> tuple[SubsetTeachers, Partition, list[str]]:
    """The subset teachers of one folder (on the CPU), checked against this run: data, partition, classes,
    teacher variant; ``crossfit`` = (k, the CSV rows its set must have left out)."""
    pfile = tdir / "partition.json"
    if not pfile.is_file():
        raise FileNotFoundError(f"{pfile} not found: train the teachers of this partition first "
                                f"(stage teacher, method.subset=0..k-1, out dirs {tdir}/subset<k>)")
    part = Partition.from_json(pfile)
    states = [check_same_data(tdir / f"subset{k}" / "best.pt", data) for k in range(part.num_subsets)]
    expected = make_partition(cfg, data["train_counts"], data["class_names"])
    if part.fingerprint() != expected.fingerprint():
        raise ConfigError(f"{pfile} was built for another partition or fold than this run's "
                         f"({part.subsets} vs {expected.subsets}); check method.partition and data.fold")
    models, hashes = [], []
    for k, subset in enumerate(part.subsets):
        ckpt, state = tdir / f"subset{k}" / "best.pt", states[k]
        if state.get("class_names") != [data["class_names"][c] for c in subset]:
            raise ConfigError(f"{ckpt} was trained on classes {state.get('class_names')}, expected subset {k}: "
                             f"{[data['class_names'][c] for c in subset]}")
        _check_variant(cfg, ckpt, state, crossfit)
        check_same_trunk(ckpt, state, cfg["model"], "the teachers and the student")
        m = build_model(state["config"]["model"], len(subset), image_size=cfg["data"]["image_size"])
        m.load_state_dict(state["model"])
        models.append(m)
        hashes.append(file_sha256(ckpt))
    return SubsetTeachers(models, part), part, hashes


def _check_variant(cfg: Mapping, ckpt: Path, state: Mapping, crossfit: tuple[int, np.ndarray] | None) -> None:
    """Refuse a teacher of another kind than the student asks for (in-sample vs cross-fitted, another
    part or K, another start), or a cross-fitted one that left out other images than this run's part."""
    meth, theirs = cfg["method"], state["config"]["method"]
    want = {"crossfit_k": meth["crossfit_k"], "crossfit_part": None if crossfit is None else crossfit[0],
            "teacher_init": meth["teacher_init"]}
    have = {key: theirs.get(key, DEFAULT_VARIANT[key]) for key in want}
    if have != want:
        raise ConfigError(f"{ckpt} is a teacher with {have}, this student needs {want}; point "
                         f"method.teachers_dir at the teachers of this variant")
    if crossfit is not None:
        result = ckpt.parent / "result.json"
        if not result.is_file():
            raise FileNotFoundError(f"{result} not found: finish the teacher run {ckpt.parent} first")
        left = json.loads(result.read_text()).get("crossfit", {})
        if left.get("left_out_sha256") != rows_sha256(crossfit[1]):
            raise ConfigError(f"{ckpt.parent} left out other training images than part {crossfit[0]} of this "
                             f"run's {meth['crossfit_k']} parts (its result.json records another set); retrain "
                             f"the teachers of {ckpt.parent.parent}")


#: what a teacher checkpoint written before these keys existed was
DEFAULT_VARIANT = {"crossfit_k": 0, "crossfit_part": None, "teacher_init": None}


class BankTeachers:
    """Teacher logits looked up in a bank: ``(x, idx) -> table[lookup[idx]]`` (float32, on the device).

    ``table`` (N, C) holds the bank on the device; ``lookup`` maps a data-set row to a bank row."""

    def __init__(self, table: torch.Tensor, lookup: torch.Tensor) -> None:
        self.table, self.lookup = table, lookup

    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.table[self.lookup[idx.to(self.table.device, non_blocking=True)]].float()


class OnlineTeachers:
    """The teachers run on the student's (augmented) batch, under the student's autocast setting."""

    def __init__(self, teachers: nn.Module, amp: bool) -> None:
        self.teachers, self.amp = teachers, amp

    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.teachers(x).float()


def bank_teachers(ctx: Any, teachers: SubsetTeachers | CrossFitTeachers, partition: Partition,
                  hashes: Sequence[str]) -> BankTeachers:
    """The teacher-logit bank of this fold's training images (built once, on rank 0, then reused).

    Teacher logits are computed on the un-augmented training images (the usual price of cached KD:
    the student sees an augmented view, the bank the plain one; ``method.teacher_mode='online'``
    runs the teachers on the student's augmented batch instead). The bank file is checked against
    the data set, partition and teacher checkpoints (and, cross-fitted, the parts) before reuse, and
    rebuilt when any differs.
    """
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    path = Path(cfg["method"]["teachers_dir"]) / f"bank_train_{cfg['data']['image_size']}px.rskd"
    fold_rows = data["rows"]["train"]
    dataset_id = f"{data['data_id']}:{len(fold_rows)}"
    check = dict(num_samples=len(fold_rows), class_names=data["class_names"], partition=partition,
                 dataset=dataset_id, teacher_hashes=list(hashes))
    if ctx.main:
        try:
            _check_parts(TeacherLogitBank(path, **check), teachers)
        except (FileNotFoundError, ValueError) as why:
            print(f"building teacher-logit bank {path} ({why.__class__.__name__}: {str(why)[:100]})", flush=True)
            loader = DataLoader(View(make_dataset(cfg, data, "train")), batch_size=cfg["data"]["eval_batch_size"],
                                shuffle=False, num_workers=cfg["data"]["num_workers"])
            bank_row = {int(g): i for i, g in enumerate(fold_rows)}  # CSV row -> bank row

            def batch(b):  # (uint8 images, targets, CSV rows) -> (normalised images, bank rows)
                return ctx.augment(b[0].to(device), train=False), torch.tensor([bank_row[int(i)] for i in b[2]])

            build_bank(path, teachers, loader, len(fold_rows), partition=partition,
                       class_names=data["class_names"], batch=batch, device=device,
                       autocast_dtype=torch.bfloat16 if ctx.amp else None, teacher_hashes=list(hashes),
                       dataset=dataset_id)
    barrier(ctx.world)
    bank = TeacherLogitBank(path, **check)
    _check_parts(bank, teachers)
    lookup = np.full(data["num_rows"], -1, dtype=np.int64)
    lookup[fold_rows] = np.arange(len(fold_rows))
    return BankTeachers(bank.table(device), torch.from_numpy(lookup).to(device))


def _check_parts(bank: TeacherLogitBank, teachers: nn.Module) -> None:
    """``ValueError`` when the bank's cross-fitting record (or its absence) is not that of ``teachers``."""
    have = bank.crossfit_parts()
    want = teachers.part_of.cpu().numpy() if isinstance(teachers, CrossFitTeachers) else None
    if have is None and want is None:
        return
    same = have is not None and want is not None and len(have) == int(want.max()) + 1 and all(
        np.array_equal(np.flatnonzero(want == k), p) for k, p in enumerate(have))
    if not same:
        raise ValueError(f"{bank.path}: the bank's cross-fitting parts ({'none' if have is None else len(have)}) "
                         f"are not those of the teachers")
