"""ONE entry point for every run of the paper's tables: stage = baseline | teacher | student.

    python -m recipes.train --config recipes/configs/table3/erm.py --profile demo
    torchrun --nproc_per_node=8 -m recipes.train --config recipes/configs/table3/ours_shot.py \
        --profile paper --set data.fold=2 method.teachers_dir="'runs/teachers/shot/fold2'"

* baseline: any criterion of ``baselines`` (``method.criterion``), optional class-aware sampler;
  OLTR is two runs (``method.oltr_stage`` 1, then 2 with ``method.init_from``).
* teacher: subset ``method.subset`` of the partition (``method.partition``), trained on that
  subset's view of the training data (``Partition.teacher_view``).
* student: ``WeightedSubsetKDLoss`` around the configured criterion; teacher logits from a bank built
  once from the teacher checkpoints (default) or from the teachers online; the KD weights updated
  after every epoch from the student's per-class validation AP against the teachers' (Eq. 3).

This module is the command line: it reads the config, sets up the process and the fold's data,
makes the method's task (:func:`recipes.engine.tasks.make_task`) and hands it to
:class:`recipes.engine.trainer.Trainer`.
Outputs in the run folder: ``config.json`` and those of the trainer (``metrics.jsonl``, ``last.pt``,
``best.pt``, ``result.json``, ``predictions.npz``, and the committable ``record.json`` + ``record.npz`` of
:mod:`recipes.engine.run_record`), all written atomically.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run by its file path: the recipes are modules of the checkout
    raise SystemExit("error: run the recipes as modules from the checkout's root: python -m recipes.train ...")

import numpy as np
import torch

from recipes.cli import run_command
from recipes.config import ConfigError, load_config, profile_help
from recipes.data.augment import BatchAugment
from recipes.data.folds import prepare_data
from recipes.distributed import setup_distributed, teardown_distributed
from recipes.engine.checkpoints import (
    atomic_write_json,
    config_differences,
    load_checkpoint,
    plain_config,
    remove_stale_temporaries,
)
from recipes.engine.run_lock import RunLock
from recipes.engine.tasks import RunContext, make_task
from recipes.engine.trainer import Trainer
from recipes.engine.trunk_cache import trunk_views


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.train",
                                description="rskd_loss recipes: baseline, teacher and student runs")
    p.add_argument("--config", required=True, help="method config (one table row), an mmengine .py file")
    p.add_argument("--profile", default=None, help=profile_help())
    p.add_argument("--out-dir", default=None, help="run folder (default: run.out_dir of the config)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. data.fold=1 method.kd.temperature=3")
    p.add_argument("--resume", action="store_true", help="continue from last.pt in the run folder")
    return p


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def resume_state(out_dir: Path, cfg: Mapping) -> dict | None:
    """last.pt of the run folder if it exists and was written with the same config; else None / error."""
    if not (out_dir / "last.pt").is_file():
        return None  # --resume without a checkpoint starts afresh
    state = load_checkpoint(out_dir / "last.pt")
    diff = config_differences(state["config"], cfg)
    if diff:
        raise ConfigError(f"--resume: {out_dir / 'last.pt'} was written with another config; differing keys: "
                          f"{'; '.join(diff)}. Resume with the same config, or start a new run in another "
                          f"--out-dir")
    return state


def run(cfg: dict, out_dir: Path, resume: bool, command: Sequence[str] | None = None) -> dict:
    """One run of the config's method in ``out_dir``; returns (and writes) its ``result.json``.

    Rank 0 holds the run folder's lock (:class:`recipes.engine.run_lock.RunLock`) for the whole run: a
    second live process on the folder is refused; a killed owner's lock is taken over, and only then
    are the partly written files it left removed. ``command``: the command line, for the run's record.
    """
    rank, world, device = setup_distributed(cfg["run"]["device"])
    lock = RunLock(out_dir).acquire() if rank == 0 else None
    try:
        return _run(cfg, out_dir, resume, rank, world, device, command)
    finally:
        if lock is not None:
            lock.release()
        teardown_distributed()


def _run(cfg: dict, out_dir: Path, resume: bool, rank: int, world: int, device: torch.device,
         command: Sequence[str] | None) -> dict:
    r = cfg["run"]
    seed_everything(r["seed"] + rank, r["deterministic"])
    saved = resume_state(out_dir, plain_config(cfg)) if resume else None
    if rank == 0:
        stale = remove_stale_temporaries(out_dir)
        if stale:
            print(f"removed {len(stale)} partly written file(s) of a killed run: {stale}", file=sys.stderr)
        atomic_write_json(out_dir / "config.json", cfg)
    started = time.time()
    data = prepare_data(cfg, rank, world)
    if saved is not None and saved.get("data_id") != data["data_id"]:
        raise ConfigError(f"--resume: {out_dir / 'last.pt'} was trained on other data ({saved.get('data_id')}), "
                          f"this run reads {data['data_id']} (CSV sha256:scheme:split seed:fold)")
    amp = device.type == "cuda" and r["amp"] in ("auto", "bf16")
    augment = (trunk_views(cfg, data, rank, world, device) if cfg["model"]["cache_trunk"]
               else BatchAugment(cfg["data"]["image_size"]).to(device))
    ctx = RunContext(cfg, data, device, rank, world, amp, augment, out_dir, resuming=saved is not None)
    trainer = Trainer(cfg, ctx, make_task(cfg, data, seed=r["seed"]), saved)
    trainer.fit()
    meth = cfg["method"]
    info = {"name": meth["name"], "stage": meth["stage"], "fold": cfg["data"]["fold"], "seed": r["seed"]}
    if data["skipped"] is not None:
        info["skipped_images"] = data["skipped"]
    result = trainer.test(info, started, command)
    if rank == 0:
        m = result["test"]["map"]
        fmt = lambda v: "  n/a" if v is None else f"{100 * v:5.2f}"  # noqa: E731
        print(f"[{meth['name']}] test mAP head {fmt(m['head'])} medium {fmt(m['medium'])} tail {fmt(m['tail'])} "
              f"total {fmt(m['total'])} ({result['seconds']:.0f}s)", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    command = [sys.executable, "-m", "recipes.train", *(sys.argv[1:] if argv is None else argv)]
    overrides = list(args.set)
    if args.out_dir is not None:
        overrides.append(f"run.out_dir={args.out_dir!r}")
    cfg = load_config(args.config, args.profile, overrides)
    return run(cfg, Path(cfg["run"]["out_dir"]), args.resume, command)


if __name__ == "__main__":
    run_command(main)
