"""Show that the synthetic benchmark is learnable, and long-tailed in the way that matters.

``python -m recipes.data.check_learnable [--data DIR] [--epochs 8]`` generates the default synthetic
benchmark (or reads ``--data``), splits it 7 : 1 : 2 (:func:`recipes.data.splits.make_splits`), trains
a tiny CNN with plain BCE (ERM) on CPU, and prints the per-class test AP sorted by training count plus
the head / medium / tail mAP (``sklearn.metrics.average_precision_score``; groups by training count,
head >= 100, tail < 20: :func:`rskd_loss.metrics.shot_groups`, as everywhere in the project). Expected: head classes learnt
well, tail classes poorly: the gap the paper's methods try to close. The images go through the same
:class:`~recipes.data.csv_dataset.MultiLabelCSVDataset` as any data set (loaded once into memory).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from rskd_loss.metrics import shot_groups

from .csv_dataset import MultiLabelCSVDataset
from .splits import make_splits
from .synthetic import generate_synthetic
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["TinyCNN", "main"]


class TinyCNN(nn.Module):
    """Four 3x3 conv blocks (16-32-64-96 channels, BN, ReLU, 2x2 max-pool), global average pool,
    linear: about 81k parameters. Full resolution in the first block: the motifs are 1-3 px dots at
    64 x 64 (a stride-2 stem runs ~1.5x faster but drops tail mAP to near zero, measured)."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 6 * width]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _load_all(ds: MultiLabelCSVDataset) -> torch.Tensor:
    arr = np.stack([np.asarray(ds[i][0], dtype=np.uint8) for i in range(len(ds))])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255.0 - m) / s


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.data.check_learnable", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="a generated benchmark (default: generate one in a temp dir)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    from sklearn.metrics import average_precision_score

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    data = Path(a.data) if a.data else Path(tempfile.mkdtemp(prefix="rskd_synthetic_"))
    if not (data / "labels.csv").is_file():
        info = generate_synthetic(data, seed=a.seed)
        print(f"generated {info.num_images} images in {info.seconds:.1f} s -> {data}")
    ds = MultiLabelCSVDataset(data / "labels.csv", data / "images")
    x_all = _load_all(ds)
    y_all = torch.from_numpy(ds.targets.astype(np.float32))
    fold = make_splits(ds.targets, seed=a.seed, scheme="holdout")[0]
    tr, te = torch.from_numpy(fold.train), torch.from_numpy(fold.test)
    print(f"loaded {len(ds)} images {tuple(x_all.shape[1:])} in {time.perf_counter() - t0:.1f} s; "
          f"train {len(fold.train)} / val {len(fold.val)} / test {len(fold.test)}")

    model = TinyCNN(ds.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.epochs * (
        (len(tr) + a.batch_size - 1) // a.batch_size))
    loss_fn = nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(a.seed)
    t1 = time.perf_counter()
    for epoch in range(a.epochs):
        model.train()
        perm = tr[torch.randperm(len(tr), generator=g)]
        total = 0.0
        for k in range(0, len(perm), a.batch_size):
            idx = perm[k:k + a.batch_size]
            xb = x_all[idx]
            if torch.rand(1, generator=g) < 0.5:
                xb = xb.flip(3)
            if torch.rand(1, generator=g) < 0.5:
                xb = xb.flip(2)
            loss = loss_fn(model(_normalise(xb)), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach().item() * len(idx)
        print(f"epoch {epoch + 1}/{a.epochs}: train BCE {total / len(perm):.4f}")
    train_s = time.perf_counter() - t1

    model.eval()
    with torch.no_grad():
        scores = torch.cat([torch.sigmoid(model(_normalise(x_all[te[k:k + 256]])))
                            for k in range(0, len(te), 256)]).numpy()
    y_te = ds.targets[fold.test]
    train_counts = ds.targets[fold.train].sum(axis=0)
    groups = shot_groups(train_counts)
    ap = np.full(ds.num_classes, np.nan)
    for c in range(ds.num_classes):
        if y_te[:, c].any():
            ap[c] = average_precision_score(y_te[:, c], scores[:, c])
    group_of = {int(i): gname for gname, m in groups.items() for i in m}
    print(f"\nper-class test AP (sorted by training count; {train_s:.0f} s of training on CPU):")
    print(f"  {'train':>6s} {'test':>5s}  {'AP':>6s}  group   class")
    for c in np.argsort(-train_counts, kind="stable"):
        print(f"  {train_counts[c]:6d} {int(y_te[:, c].sum()):5d}  {ap[c]:6.3f}  {group_of[c]:6s}  {ds.class_names[c]}")
    print("\ngroups by training count (head >= 100, tail < 20):")
    for gname, m in groups.items():
        vals = ap[m][~np.isnan(ap[m])]
        print(f"  {gname:6s} {len(m):2d} classes  mAP {vals.mean() if vals.size else float('nan'):.3f}")
    print(f"  total  {ds.num_classes:2d} classes  mAP {np.nanmean(ap):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
