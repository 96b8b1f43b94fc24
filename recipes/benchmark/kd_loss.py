"""Micro-benchmark: WeightedSubsetKDLoss(BCE) forward + backward against plain BCE.

A benchmark, not a test: it prints figures and never asserts on time. Both criteria run interleaved
in the same process on the same (N, C) logits, so the ratio is robust to machine load; the figure
reported is the median over repeats.

    python -m recipes.benchmark.kd_loss [--n 256] [--c 48] [--repeats 200] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from rskd_loss import WeightedSubsetKDLoss
from rskd_loss.validation import value_checks


def _timer(device: torch.device):
    if device.type == "cuda":
        def run(fn, inner):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3 / inner
    else:
        def run(fn, inner):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            return (time.perf_counter() - t0) / inner
    return run


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m recipes.benchmark.kd_loss", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--c", type=int, default=48)
    p.add_argument("--repeats", type=int, default=200, help="timed samples per criterion (median reported)")
    p.add_argument("--inner", type=int, default=20, help="forward+backward calls per sample")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    logits = torch.randn(args.n, args.c, device=device, requires_grad=True)
    targets = (torch.rand(args.n, args.c, device=device) < 0.1).float()
    teacher = torch.randn(args.n, args.c, device=device)
    bce = nn.BCEWithLogitsLoss()
    rskd = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=args.c).to(device)
    cases = {
        "bce": lambda: bce(logits, targets).backward(),
        "rskd_bce": lambda: rskd(logits, targets, teacher).backward(),
    }
    run = _timer(device)
    samples: dict[str, list[float]] = {k: [] for k in cases}
    results: dict[str, dict] = {}
    for checks in (True, False):
        with value_checks(checks):
            for fn in cases.values():  # warm-up
                run(fn, args.inner)
            samples = {k: [] for k in cases}
            for _ in range(args.repeats):
                for name, fn in cases.items():  # interleaved: both see the same machine state
                    samples[name].append(run(fn, args.inner))
        med = {k: statistics.median(v) for k, v in samples.items()}
        results["checks_on" if checks else "checks_off"] = {
            "bce_us": med["bce"] * 1e6,
            "rskd_bce_us": med["rskd_bce"] * 1e6,
            "ratio": med["rskd_bce"] / med["bce"],
        }
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "shape": [args.n, args.c],
        "repeats": args.repeats,
        "inner": args.inner,
        "results": results,
    }
    print(f"WeightedSubsetKDLoss(BCE) vs BCE, forward+backward on ({args.n}, {args.c}) logits, "
          f"{info['device']}, torch {torch.__version__}, median of {args.repeats} x {args.inner} calls")
    print(f"{'value checks':<14}{'BCE (us)':>12}{'RSKD+BCE (us)':>16}{'ratio':>8}")
    for k, r in results.items():
        print(f"{k:<14}{r['bce_us']:>12.1f}{r['rskd_bce_us']:>16.1f}{r['ratio']:>8.2f}")
    print(json.dumps(info))
    return info


if __name__ == "__main__":
    main()
