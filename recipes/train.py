"""ONE entry point for every run of the paper's tables: stage = baseline | teacher | student.

    python recipes/train.py --config recipes/configs/table3/erm.py --profile demo
    torchrun --nproc_per_node=8 recipes/train.py --config recipes/configs/table3/ours_shot.py \
        --profile paper --set data.fold=2 method.teachers_dir="'runs/teachers/shot/fold2'"

* baseline: any criterion of ``baselines`` (``method.criterion``), optional class-aware sampler;
  OLTR is two runs (``method.oltr_stage`` 1, then 2 with ``method.init_from``).
* teacher: subset ``method.subset`` of the partition (``method.partition``), trained on that
  subset's view of the training data (``Partition.teacher_view``).
* student: ``WeightedSubsetKDLoss`` around the configured criterion; teacher logits from a bank built
  once from the teacher checkpoints (default) or from the teachers online; the KD weights updated
  after every epoch from the student's per-class validation AP against the teachers' (Eq. 3).

Outputs in the run folder: ``config.json``, ``metrics.jsonl`` (one line per epoch), ``last.pt``
(every epoch), ``best.pt`` (best validation mAP), and at the end ``result.json`` (test metrics of
the best checkpoint). Everything is written atomically; checkpoints load with ``weights_only=True``.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from rskd_loss.baselines import build_criterion
from rskd_loss.baselines.oltr import OLTR_CENTROID_SGD
from rskd_loss.baselines.resample import DistributedClassAwareSampler
from recipes import engine
from recipes.config import ConfigError, load_config
from recipes.models import build_model
from rskd_loss import (Partition, SubsetPartitioner, SubsetTeachers, TeacherLogitBank, WeightedSubsetKDLoss,
                       file_sha256)
from rskd_loss.fileio import atomic_write_bytes
from rskd_loss.metrics import average_precision_per_class, group_map
from rskd_loss.validation import value_checks
from rskd_loss.workflow import build_bank as build_teacher_bank

CHECKPOINT_VERSION = 1


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="rskd_loss recipes: baseline, teacher and student runs",
                                add_help=True)
    p.add_argument("--config", required=True, help="method config (one table row), an mmengine .py file")
    p.add_argument("--profile", default=None, help="demo | cpu_long | paper | rfmid, or a .py file")
    p.add_argument("--out-dir", default=None, help="run folder (default: run.out_dir of the config)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. data.fold=1 method.kd.temperature=3")
    p.add_argument("--resume", action="store_true", help="continue from last.pt in the run folder")
    return p


# ----------------------------------------------------------------------------------- data

def prepare_data(cfg: Mapping, rank: int, world: int) -> dict[str, Any]:
    """Locate (or generate) the data set, load the fold's splits; returns paths, names, fold rows.

    ``data.class_names`` pins the label columns (a CSV without one of them is refused, naming it);
    ``data.skip_bad_images`` decodes every image once on rank 0 and leaves out the rows whose image is
    missing or undecodable, with the count printed and kept in ``result.json`` (otherwise such a row
    is an error naming the file and CSV line).
    """
    from recipes.data import MultiLabelCSVDataset, find_bad_images, read_label_csv, splits_for_csv

    d = cfg["data"]
    root = Path(d["root"])
    csv = root / d["csv"]
    image_dir = root / d["image_dir"] if d["image_dir"] else root
    bad: list = []
    # one split file per setting, so that another data.split_seed or scheme gets its own beside it
    tag = "holdout" if d["scheme"] == "holdout" else f"kfold{d['n_folds']}"
    split_args = dict(seed=d["split_seed"], scheme=d["scheme"], n_folds=d["n_folds"],
                      path=csv.parent / f"splits_{tag}_seed{d['split_seed']}.json")
    if engine.is_main(rank):
        if d["dataset"] == "synthetic" and not csv.is_file():
            from recipes.data import generate_synthetic

            kw = {k: v for k, v in d["synthetic"].items() if v is not None}
            generate_synthetic(root, **kw)
        if d["dataset"] == "rfmid" and not csv.is_file():
            from recipes.data import write_rfmid_merged_csv

            write_rfmid_merged_csv(root, csv, variant=d["rfmid_variant"])
        splits_for_csv(csv, **split_args)
        if d["skip_bad_images"]:
            everything = MultiLabelCSVDataset(csv, image_dir, image_suffix=d["image_suffix"],
                                              class_names=d["class_names"], check_images=False,
                                              empty_classes="ignore")
            bad = find_bad_images(everything, d["num_workers"])
    bad = engine.broadcast_object(bad, world)
    engine.barrier(world)
    splits = splits_for_csv(csv, **split_args)
    fold = splits[d["fold"] if d["scheme"] == "kfold" else 0]
    table = read_label_csv(csv, class_names=d["class_names"])
    targets = np.asarray(table.targets)
    bad_rows = np.asarray(sorted(b.row for b in bad), dtype=np.int64)
    fold_rows = {part: np.asarray(fold.part(part), dtype=np.int64) for part in ("train", "val", "test")}
    rows = {part: r[~np.isin(r, bad_rows)] for part, r in fold_rows.items()}  # order kept
    skipped = None
    if d["skip_bad_images"]:
        skipped = {"count": len(bad), **{part: len(fold_rows[part]) - len(r) for part, r in rows.items()},
                   "files": [{"line": b.line, "path": str(b.path), "reason": b.reason} for b in bad[:50]]}
        if engine.is_main(rank) and bad:
            print(f"data.skip_bad_images: skipping {len(bad)} unreadable image(s) (train {skipped['train']}, "
                  f"val {skipped['val']}, test {skipped['test']}); first: line {bad[0].line} {bad[0].path}: "
                  f"{bad[0].reason}", file=sys.stderr, flush=True)
    csv_sha = file_sha256(csv)
    return {"csv": csv, "csv_sha": csv_sha, "image_dir": image_dir, "class_names": tuple(table.class_names),
            "rows": rows, "data_id": f"{csv_sha}:{d['scheme']}:split_seed{d['split_seed']}:fold{d['fold']}",
            "train_counts": targets[rows["train"]].sum(0).astype(np.int64),
            "train_targets": targets[rows["train"]], "num_rows": targets.shape[0], "bad_rows": bad_rows,
            "skipped": skipped}


def make_dataset(cfg: Mapping, data: Mapping, part: str):
    """The fold's ``part`` rows as uint8 (3, size, size) images; augmentation runs on the device."""
    from recipes.data import MultiLabelCSVDataset
    from recipes.data.transforms import uint8_transform

    d = cfg["data"]
    size = d["image_size"]
    rows = data["rows"][part]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes without positives in a split: reported by the metrics
        ds = MultiLabelCSVDataset(data["csv"], data["image_dir"], image_suffix=d["image_suffix"],
                                  class_names=data["class_names"], indices=rows,
                                  transform=None if d["preload"] else uint8_transform(size))
    if not d["preload"]:
        return ds
    cache = Path(d["root"]) / ".cache" / f"decoded_{size}px_{data['csv_sha'][:16]}.npy"
    return engine.Preloaded(ds, size, cache, skip_rows=data["bad_rows"], workers=d["num_workers"])


def make_loader(cfg: Mapping, ds, *, train: bool, world: int, rank: int, sampler_kind: str | None = None,
                targets: np.ndarray | None = None, seed: int = 0) -> DataLoader:
    """A loader whose training order is a pure function of (seed, epoch), shared by every world size.

    Training: each rank takes every ``world``-th position of one shared per-epoch sequence (a shuffle,
    or the class-aware draw), wrapped in :class:`engine.ResumableSampler` so that a resumed epoch can
    start at the step where the run stopped. Evaluation: in order (one shard per rank under torchrun).
    """
    d = cfg["data"]
    sampler = None
    if train:
        if sampler_kind == "class_aware":
            sampler = DistributedClassAwareSampler(targets, num_replicas=world, rank=rank,
                                                   num_samples_cls=cfg["method"]["num_samples_cls"], seed=seed)
        else:
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        sampler = engine.ResumableSampler(sampler)
    elif world > 1:
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
    workers = d["num_workers"]
    return DataLoader(ds, batch_size=d["batch_size"] if train else d["eval_batch_size"], sampler=sampler,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), generator=torch.Generator(),
                      drop_last=train and len(sampler) > d["batch_size"], persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None)


# ----------------------------------------------------------------------------- partition

def make_partition(cfg: Mapping, class_counts: Sequence[int], class_names: Sequence[str]) -> Partition:
    """The partition of ``method.partition`` on this fold's training counts (used by the sweep too)."""
    p = cfg["method"]["partition"]
    kw: dict[str, Any] = {}
    if p["rule"] == "shot":
        kw = {"thresholds": tuple(p["thresholds"]), "mode": p["mode"]}
    elif p["rule"] == "region" or (p["rule"] == "feature" and p["num_subsets"] is None):
        kw = {"prior": p["prior"]}
    else:
        raise ConfigError("method.partition: the feature rule by embedding clustering needs class "
                          "embeddings; the recipes use the prior's phenotype groups (set method.partition.prior)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        part = SubsetPartitioner(p["rule"], **kw).partition(class_counts=class_counts, class_names=class_names)
    for w in caught:
        print(f"partition: {w.message}", file=sys.stderr)
    return part


# ---------------------------------------------------------------------------------- runs

def evaluate(model, loader, device, augment, amp, world, columns=None, centroids=None) -> dict[str, Any]:
    pred = engine.predict(model, loader, device, augment, amp, world, centroids=centroids)
    y = pred["targets"]
    ap = average_precision_per_class(pred["logits"], y)
    return {"ap": ap, "loss": engine.bce_value(pred["logits"], y), "logits": pred["logits"], "targets": y}


def summarize(ap: np.ndarray, counts: np.ndarray, thresholds) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return group_map(ap, counts, thresholds)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def check_same_data(ckpt: Path, data: Mapping) -> dict:
    """Load a checkpoint this run builds on (a teacher, OLTR stage 1); refuse one of other data or fold."""
    state = engine.load_checkpoint(ckpt)
    if state.get("data_id") != data["data_id"]:
        raise ValueError(f"{ckpt} was trained on other data: {state.get('data_id')} (CSV sha256:scheme:split "
                         f"seed:fold), this run uses {data['data_id']}; check data.root, data.fold and "
                         f"data.split_seed")
    return state


def load_teachers(cfg, data, device) -> tuple[SubsetTeachers, Partition, list[str]]:
    tdir = Path(cfg["method"]["teachers_dir"])
    pfile = tdir / "partition.json"
    if not pfile.is_file():
        raise FileNotFoundError(f"{pfile} not found: train the teachers of this partition first "
                                f"(stage teacher, method.subset=0..k-1, out dirs {tdir}/subset<k>)")
    part = Partition.from_json(pfile)
    states = [check_same_data(tdir / f"subset{k}" / "best.pt", data) for k in range(part.num_subsets)]
    expected = make_partition(cfg, data["train_counts"], data["class_names"])
    if part.fingerprint() != expected.fingerprint():
        raise ValueError(f"{pfile} was built for another partition or fold than this run's "
                         f"({part.subsets} vs {expected.subsets}); check method.partition and data.fold")
    models, hashes = [], []
    for k, subset in enumerate(part.subsets):
        ckpt, state = tdir / f"subset{k}" / "best.pt", states[k]
        if state.get("class_names") != [data["class_names"][c] for c in subset]:
            raise ValueError(f"{ckpt} was trained on classes {state.get('class_names')}, expected subset {k}: "
                             f"{[data['class_names'][c] for c in subset]}")
        m = build_model(state["config"]["model"], len(subset), image_size=cfg["data"]["image_size"])
        m.load_state_dict(state["model"])
        models.append(m)
        hashes.append(file_sha256(ckpt))
    return SubsetTeachers(models, part).to(device), part, hashes


def counts_for_criterion(counts: np.ndarray, names: Sequence[str], criterion: str) -> np.ndarray:
    """Training counts for a count-based criterion; a class with no training positive counts as 1.

    RW, LDAM and DB divide by the count. A class without any positive in a fold's training part (RFMiD
    has several) would make them undefined; it is given a count of 1 (the rarest possible), with a
    warning that names it, instead of stopping the run.
    """
    zero = [names[i] for i in np.flatnonzero(counts == 0)]
    if zero and criterion.lower() not in ("bce", "erm", "focal", "oltr"):
        print(f"warning: {len(zero)} class(es) have no training positive, counted as 1 for the {criterion} "
              f"criterion: {zero[:10]}", file=sys.stderr)
    return np.maximum(counts, 1)


def oltr_feature_size(cfg: Mapping) -> int:
    stride = 16 if cfg["model"]["name"] == "small_cnn" else 32
    return max(1, cfg["data"]["image_size"] // stride)


def build_bank(cfg, data, teachers, partition, hashes, device, augment, amp, rank, world):
    """The teacher-logit bank of this fold's training images (built once, on rank 0, then reused).

    Teacher logits are computed on the un-augmented training images (the usual price of cached KD:
    the student sees an augmented view, the bank the plain one; ``method.teacher_mode='online'``
    runs the teachers on the student's augmented batch instead).
    """
    tdir = Path(cfg["method"]["teachers_dir"])
    path = tdir / f"bank_train_{cfg['data']['image_size']}px.rskd"
    fold_rows = data["rows"]["train"]
    dataset_id = f"{data['data_id']}:{len(fold_rows)}"
    check = dict(num_samples=len(fold_rows), class_names=data["class_names"], partition=partition,
                 dataset=dataset_id, teacher_hashes=hashes)
    if engine.is_main(rank):
        try:
            TeacherLogitBank(path, **check)
        except (FileNotFoundError, ValueError) as why:
            print(f"building teacher-logit bank {path} ({why.__class__.__name__}: {str(why)[:100]})", flush=True)
            plain = engine.View(make_dataset(cfg, data, "train"))
            loader = DataLoader(plain, batch_size=cfg["data"]["eval_batch_size"], shuffle=False,
                                num_workers=cfg["data"]["num_workers"])
            bank_row = {int(g): i for i, g in enumerate(fold_rows)}  # CSV row -> bank row

            def batch(b):  # (uint8 images, targets, CSV rows) -> (normalised images, bank rows)
                return augment(b[0].to(device), train=False), torch.tensor([bank_row[int(i)] for i in b[2]])

            build_teacher_bank(path, teachers, loader, len(fold_rows), partition=partition,
                               class_names=data["class_names"], batch=batch, device=device,
                               autocast_dtype=torch.bfloat16 if amp else None, teacher_hashes=hashes,
                               dataset=dataset_id)
    engine.barrier(world)
    bank = TeacherLogitBank(path, **check)
    lookup = np.full(data["num_rows"], -1, dtype=np.int64)
    lookup[fold_rows] = np.arange(len(fold_rows))
    return bank, lookup


# keys that may change between a run and its --resume: they do not change what is computed
RESUME_FREE_KEYS = ("run.out_dir", "schedule.epochs", "data.num_workers", "data.eval_batch_size", "data.root",
                    "run.log_every", "run.checkpoint_every", "data.skip_bad_images")


def config_differences(saved: Mapping, current: Mapping, prefix: str = "") -> list[str]:
    """``key (saved X, now Y)`` for every leaf that differs between two configs, except RESUME_FREE_KEYS."""
    out = []
    for key in sorted(set(saved) | set(current)):
        where, a, b = f"{prefix}{key}", saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_differences(a, b, where + ".")
        elif where not in RESUME_FREE_KEYS and a != b:
            out.append(f"{where} (saved {a!r}, now {b!r})")
    return out


def _resume_state(out_dir: Path, cfg: Mapping) -> dict | None:
    """last.pt of the run folder if it exists and was written with the same config; else None / error."""
    if not (out_dir / "last.pt").is_file():
        return None  # --resume without a checkpoint starts afresh
    state = engine.load_checkpoint(out_dir / "last.pt")
    diff = config_differences(state["config"], cfg)
    if diff:
        raise ConfigError(f"--resume: {out_dir / 'last.pt'} was written with another config; differing keys: "
                          f"{'; '.join(diff)}. Resume with the same config, or start a new run in another "
                          f"--out-dir")
    return state


def _truncate_metrics(path: Path, before_epoch: int) -> None:
    """Keep the complete metrics.jsonl lines of epochs < ``before_epoch`` (a resumed run rewrites the rest)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] < before_epoch:
                keep.append(line)
        except (ValueError, KeyError):  # a line cut by a kill
            pass
    engine.atomic_write_text(path, "".join(x + "\n" for x in keep))


def run(cfg: dict, out_dir: Path, resume: bool) -> dict:
    rank, world, device = engine.setup_distributed(cfg["run"]["device"])
    main = engine.is_main(rank)
    r, meth, sched = cfg["run"], cfg["method"], cfg["schedule"]
    seed_everything(r["seed"] + rank, r["deterministic"])
    amp = device.type == "cuda" and r["amp"] in ("auto", "bf16")
    channels_last = r["channels_last"] in ("auto", True)  # faster on GPU and, measured, on CPU too
    plain_cfg = json.loads(json.dumps(cfg, default=list))  # tuples as lists, as a checkpoint stores it
    saved = _resume_state(out_dir, plain_cfg) if resume else None
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        stale = engine.remove_stale_temporaries(out_dir)
        if stale:
            print(f"removed {len(stale)} partly written file(s) of a killed run: {stale}", file=sys.stderr)
        engine.atomic_write_json(out_dir / "config.json", cfg)
    started = time.time()

    data = prepare_data(cfg, rank, world)
    if saved is not None and saved.get("data_id") != data["data_id"]:
        raise ConfigError(f"--resume: {out_dir / 'last.pt'} was trained on other data ({saved.get('data_id')}), "
                          f"this run reads {data['data_id']} (CSV sha256:scheme:split seed:fold)")
    names, counts = data["class_names"], data["train_counts"]
    thresholds = tuple(meth["partition"]["thresholds"])
    stage = meth["stage"]
    columns = list(range(len(names)))
    train_positions = None
    partition = None
    if stage == "teacher":
        partition = make_partition(cfg, counts, names)
        if meth["subset"] >= partition.num_subsets:
            raise ConfigError(f"method.subset={meth['subset']} but the partition has {partition.num_subsets} "
                              f"subsets {partition.names}")
        view = partition.teacher_view(meth["subset"], data["train_targets"], images=meth["teacher_images"],
                                      seed=r["seed"])
        columns, train_positions = list(view.columns), view.sample_indices
        if main:
            partition.to_json(out_dir.parent / "partition.json")
    cls_names = [names[c] for c in columns]
    cls_counts = counts[columns]
    train_targets = data["train_targets"][:, columns]
    if train_positions is not None:
        train_targets = train_targets[train_positions]

    view_columns = columns if stage == "teacher" else None  # a teacher sees its subset's columns only
    if cfg["data"]["preload"] and world > 1:  # rank 0 decodes the cache once; the others then read it
        if main:
            make_dataset(cfg, data, "train")
        engine.barrier(world)
    train_ds = engine.View(make_dataset(cfg, data, "train"), train_positions, view_columns)
    val_ds = engine.View(make_dataset(cfg, data, "val"), None, view_columns)
    test_ds = engine.View(make_dataset(cfg, data, "test"), None, view_columns)
    train_loader = make_loader(cfg, train_ds, train=True, world=world, rank=rank, sampler_kind=meth["sampler"],
                               targets=train_targets, seed=r["seed"])
    val_loader = make_loader(cfg, val_ds, train=False, world=world, rank=rank)
    test_loader = make_loader(cfg, test_ds, train=False, world=world, rank=rank)

    # ---- model and criterion
    torch.manual_seed(r["seed"] + rank)  # the initialisation does not depend on what data preparation drew
    oltr = meth["oltr_stage"]
    model = build_model(cfg["model"], len(columns), oltr_stage=1 if oltr else None,
                        image_size=cfg["data"]["image_size"])
    ccfg = dict(meth["criterion"])
    if oltr:
        ccfg.setdefault("feat_dim", model.head.feat_dim)
        ccfg.setdefault("stage", oltr)
    base = build_criterion(ccfg, class_counts=counts_for_criterion(cls_counts, cls_names, ccfg["name"]),
                           num_images=len(train_targets))
    if meth["init_from"] and saved is None:
        model.load_state_dict(check_same_data(Path(meth["init_from"]) / "best.pt", data)["model"])
    model.to(device)
    augment = engine.BatchAugment(cfg["data"]["image_size"]).to(device)
    if oltr == 2:
        if meth["init_from"] and saved is None:  # centroids = class means of stage-1 direct features
            plain = make_loader(cfg, engine.View(make_dataset(cfg, data, "train"), train_positions,
                                                 view_columns), train=False, world=world, rank=rank)
            feats = engine.predict(model, plain, device, augment, amp, world, features=True)
            base.init_centroids(torch.from_numpy(feats["features"]), torch.from_numpy(feats["targets"]))
        model.head = model.head.to_stage2(feature_size=oltr_feature_size(cfg))
        model.to(device)
    if r["sync_bn"] and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    teachers = bank_table = lookup = None
    teacher_ap = None
    criterion: nn.Module = base
    if stage == "student":
        teachers, partition, hashes = load_teachers(cfg, data, device)
        kd = meth["kd"]
        criterion = WeightedSubsetKDLoss(base, len(names), temperature=kd["temperature"], delta=kd["delta"],
                                         order=kd["order"], kd_weight=kd["kd_weight"], scale_by_t2=kd["scale_by_t2"])
        teacher_val = engine.predict(teachers, val_loader, device, augment, amp, world)
        teacher_ap = average_precision_per_class(teacher_val["logits"], teacher_val["targets"])
        if meth["teacher_mode"] == "bank":
            bank, bank_rows = build_bank(cfg, data, teachers, partition, hashes, device, augment, amp, rank, world)
            bank_table, lookup = bank.table(device), torch.from_numpy(bank_rows).to(device)
    criterion.to(device)

    crit_params = [p for p in criterion.parameters() if p.requires_grad]  # OLTR's centroids
    opt = torch.optim.Adam(model.parameters(), lr=sched["lr"], weight_decay=sched["weight_decay"],
                           **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    # the centroids have their own SGD, as in the official OLTR code (baselines/oltr.py OLTR_CENTROID_SGD)
    centroid_opt = torch.optim.SGD(crit_params, **OLTR_CENTROID_SGD) if crit_params else None
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=sched["plateau_factor"],
                                                         patience=sched["plateau_patience"], min_lr=sched["min_lr"])
    ddp_model = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if r["compile"]:
        ddp_model = torch.compile(ddp_model)

    def checkpoint(epoch: int, step: int, best: float, loss_sum: torch.Tensor) -> dict:
        """Everything a resumed run needs to continue exactly (``step`` batches of ``epoch`` done)."""
        return {"version": CHECKPOINT_VERSION, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "centroid_optimizer": centroid_opt.state_dict() if centroid_opt is not None else {},
                "scheduler": plateau.state_dict(), "criterion": criterion.state_dict(), "epoch": epoch,
                "step": step, "best_map": best, "loss_sum": loss_sum.detach().double().cpu(),
                "config": plain_cfg, "class_names": cls_names,
                "data_id": data["data_id"],
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0)}

    start_epoch, start_step, best_map = 0, 0, -np.inf
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if centroid_opt is not None:
            centroid_opt.load_state_dict(saved["centroid_optimizer"])
        plateau.load_state_dict(saved["scheduler"])
        criterion.load_state_dict(saved["criterion"])
        best_map = saved["best_map"]
        if saved.get("step", 0) > 0:  # written in the middle of an epoch
            start_epoch, start_step = saved["epoch"], saved["step"]
            loss_sum = saved["loss_sum"].to(device)
        else:
            start_epoch = saved["epoch"] + 1
        torch.set_rng_state(saved["rng_cpu"])
        if device.type == "cuda" and saved["rng_cuda"].numel():
            torch.cuda.set_rng_state(saved["rng_cuda"], device)
        if main:
            _truncate_metrics(out_dir / "metrics.jsonl", start_epoch)
            print(f"resumed from {out_dir / 'last.pt'} at epoch {start_epoch} step {start_step}", flush=True)

    tb = engine.TensorBoard(out_dir if main else None)
    centroids = (lambda: base.centroids) if oltr == 2 else (lambda: None)
    per_rank_batch = cfg["data"]["batch_size"]

    def check_finite(first_bad: torch.Tensor, epoch: int) -> None:
        """One host-device synchronisation per ``run.log_every`` steps: stop on a non-finite loss."""
        if world > 1:  # every rank stops together
            torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MAX)
        step = int(first_bad)
        if step >= 0:
            good = out_dir / "last.pt"
            raise FloatingPointError(f"loss is not finite (nan or inf) at epoch {epoch} step {step}; last good "
                                     f"checkpoint: {good if good.is_file() else 'none'} (not overwritten)")

    for epoch in range(start_epoch, sched["epochs"]):
        steps = start_step if epoch == start_epoch else 0
        if epoch != start_epoch:
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        train_loader.sampler.set_epoch(epoch, start=steps * per_rank_batch)
        if hasattr(base, "set_epoch"):
            base.set_epoch(epoch)
        t0 = time.time()
        ddp_model.train()
        if teachers is not None:
            teachers.train()  # stays in eval: SubsetTeachers is frozen
        first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        # student, first and last epoch (a diagnostic kept off the other epochs' steps): summed |dL/dz|
        # per class of (base, KD) over the epoch's samples (after a mid-epoch resume: the batches since)
        measure_grads = stage == "student" and epoch in (0, sched["epochs"] - 1)
        grad_sum = torch.zeros(2, len(columns), dtype=torch.float64, device=device)
        grad_count = 0
        # the data were checked when read: no per-step value check (each one a host-device sync)
        with value_checks(False):
            for x, y, idx in engine.progress(train_loader, main, f"{meth['name']} {epoch + 1}/{sched['epochs']}"):
                if r["max_steps_per_epoch"] and steps >= r["max_steps_per_epoch"]:
                    break
                engine.fault_point("step")
                # the sample's position in the epoch's global sequence keys its augmentation (any world size)
                positions = (steps * per_rank_batch + np.arange(len(idx))) * world + rank
                rand = engine.keyed_uniforms(r["seed"], epoch, positions, augment.NUM_RANDOM)
                x = augment(x.to(device, non_blocking=True), train=cfg["data"]["augment"],
                            rand=rand.to(device, non_blocking=True))
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    c = centroids()
                    out = ddp_model(x, centroids=c) if c is not None else ddp_model(x)
                logits = engine.logits_of(out).float()
                kwargs = {"features": out.features.float()} if oltr else {}
                if stage == "student":
                    if bank_table is not None:
                        t_logits = bank_table[lookup[idx.to(device, non_blocking=True)]].float()
                    else:
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                            t_logits = teachers(x).float()
                    parts = criterion(logits, y, t_logits, return_parts=True, **kwargs)
                    loss = parts.loss
                    if measure_grads:  # |dL/dz| per class of the base loss and of the KD term (loss-level only)
                        g_base, g_kd = (torch.autograd.grad(part, logits, retain_graph=True)[0]
                                        for part in (parts.base_loss, parts.kd_loss))
                        grad_sum += torch.stack((g_base.abs().sum(0), g_kd.abs().sum(0)))
                        grad_count += len(y)
                else:
                    loss = criterion(logits, y, **kwargs)
                loss_d = loss.detach()
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss_d), steps, first_bad)
                opt.zero_grad(set_to_none=True)
                if centroid_opt is not None:
                    centroid_opt.zero_grad(set_to_none=True)
                loss.backward()
                if world > 1:  # parameters of the loss are outside DDP: average their gradients by hand
                    for p in crit_params:
                        if p.grad is not None:
                            torch.distributed.all_reduce(p.grad)
                            p.grad /= world
                opt.step()
                if centroid_opt is not None:
                    centroid_opt.step()
                loss_sum += loss_d
                steps += 1
                save = r["checkpoint_every"] and steps % r["checkpoint_every"] == 0
                if save or steps % r["log_every"] == 0:
                    check_finite(first_bad, epoch)
                if save:
                    # the ranks' mean: every rank resumes from it, and the epoch's mean over ranks stays right
                    mean_sum = engine.mean_over_ranks(loss_sum.clone(), world)
                    if main:
                        engine.atomic_torch_save(checkpoint(epoch, steps, best_map, mean_sum), out_dir / "last.pt")
                    engine.barrier(world)
        check_finite(first_bad, epoch)
        grad_mean = engine.mean_over_ranks(grad_sum / max(grad_count, 1), world)
        loss_sum = engine.mean_over_ranks(loss_sum, world)  # the logged loss covers every rank's batches
        train_loss = float(loss_sum) / max(steps, 1)
        val = evaluate(model, val_loader, device, augment, amp, world, centroids=centroids())
        val_map = summarize(val["ap"], cls_counts, thresholds)
        plateau.step(val["loss"])
        weights = None
        if stage == "student" and meth["kd"]["dynamic_weights"]:
            weights = criterion.update_weights(student_metric=val["ap"], teacher_metric=teacher_ap).tolist()
        score = val_map["total"] if np.isfinite(val_map["total"]) else -np.inf  # NaN: no val positive at all
        improved = score > best_map or not (out_dir / "best.pt").is_file()
        best_map = max(best_map, score)
        if main:
            line = {"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"],
                    "val_map": val_map, "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0}
            if weights is not None:
                line["kd_weights"] = weights
            if measure_grads:
                line["grad_base"], line["grad_kd"] = grad_mean.tolist()
            engine.append_jsonl(out_dir / "metrics.jsonl", line)
            state = checkpoint(epoch, 0, best_map, loss_sum)
            if improved:  # best.pt before last.pt: a kill in between redoes this epoch, identically
                engine.atomic_torch_save(state, out_dir / "best.pt")
            engine.atomic_torch_save(state, out_dir / "last.pt")
            tb.log(line, epoch)
            print(f"[{meth['name']}] epoch {epoch + 1}/{sched['epochs']} loss {train_loss:.4f} "
                  f"val loss {val['loss']:.4f} val mAP {100 * val_map['total']:.2f} ({line['seconds']:.1f}s)",
                  flush=True)
        engine.barrier(world)

    tb.close()

    # ---- test with the best checkpoint
    best = engine.load_checkpoint(out_dir / "best.pt")
    model.load_state_dict(best["model"])
    criterion.load_state_dict(best["criterion"])  # OLTR's centroids belong to the best model
    test = evaluate(model, test_loader, device, augment, amp, world, centroids=centroids())
    val = evaluate(model, val_loader, device, augment, amp, world, centroids=centroids())
    result = {"name": meth["name"], "stage": stage, "fold": cfg["data"]["fold"], "seed": r["seed"],
              "class_names": cls_names, "classes": columns, "train_class_counts": cls_counts.tolist(),
              "thresholds": list(thresholds),
              "test": {"ap": engine.nan_to_none(test["ap"]), "map": summarize(test["ap"], cls_counts, thresholds)},
              "val": {"ap": engine.nan_to_none(val["ap"]), "map": summarize(val["ap"], cls_counts, thresholds)},
              "epochs": sched["epochs"], "best_epoch": best["epoch"], "seconds": time.time() - started,
              "world_size": world, "device": str(device)}
    if teacher_ap is not None:
        result["teacher_val_ap"] = engine.nan_to_none(teacher_ap)
    if data["skipped"] is not None:
        result["skipped_images"] = data["skipped"]
    result["test"]["map"] = {k: (None if v != v else v) for k, v in result["test"]["map"].items()}
    result["val"]["map"] = {k: (None if v != v else v) for k, v in result["val"]["map"].items()}
    if main:
        # per-image predictions of the best model (pooled over folds, teacher diagnostics)
        arrays = {"classes": np.asarray(columns)}
        for part, res in (("val", val), ("test", test)):
            arrays.update({f"{part}_logits": res["logits"], f"{part}_targets": res["targets"],
                           f"{part}_rows": data["rows"][part]})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(out_dir / "predictions.npz", buf.getvalue())
        engine.atomic_write_json(out_dir / "result.json", result)
        m = result["test"]["map"]
        fmt = lambda v: "  n/a" if v is None else f"{100 * v:5.2f}"  # noqa: E731
        print(f"[{meth['name']}] test mAP head {fmt(m['head'])} medium {fmt(m['medium'])} tail {fmt(m['tail'])} "
              f"total {fmt(m['total'])} ({result['seconds']:.0f}s)", flush=True)
    engine.barrier(world)
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    overrides = list(args.set)
    if args.out_dir is not None:
        overrides.append(f"run.out_dir={args.out_dir!r}")
    cfg = load_config(args.config, args.profile, overrides)
    return run(cfg, Path(cfg["run"]["out_dir"]), args.resume)


if __name__ == "__main__":
    from recipes.data import BadImageError, CSVDataError
    from recipes.models import ModelError

    try:
        main()
    except (ConfigError, FileNotFoundError, CSVDataError, BadImageError, ModelError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # a message that says what to fix, not a traceback
        sys.exit(2)
