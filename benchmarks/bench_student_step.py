"""Benchmark: the cost of an RSKD student training step against an ERM step.

Measures, in one process and on one device, the median time of a full training step (forward,
loss, backward, Adam step) of the same model with
  * ERM: BCE only;
  * student + bank: WeightedSubsetKDLoss(BCE) with teacher logits looked up from a TeacherLogitBank;
  * student + k online teachers: the same with k frozen teachers run per batch (SubsetTeachers).
Printed as images/s and as ratios to the ERM step measured in the same run. A benchmark, not a test.

    python benchmarks/bench_student_step.py                      # GPU: ResNet-50, 256 px, batch 256, bf16
    python benchmarks/bench_student_step.py --model small --size 64 --batch 64   # what CPU can do
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torchvision
from torch import nn

from rskd_loss import SubsetPartitioner, SubsetTeachers, TeacherLogitBank, WeightedSubsetKDLoss
from rskd_loss.validation import value_checks


def small_cnn(num_classes: int) -> nn.Module:
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.MaxPool2d(2))
    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, num_classes))


def build(model: str, num_classes: int) -> nn.Module:
    if model == "small":
        return small_cnn(num_classes)
    return torchvision.models.get_model(model, weights=None, num_classes=num_classes)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--model", default="resnet50" if cuda else "small")
    p.add_argument("--size", type=int, default=256 if cuda else 64)
    p.add_argument("--batch", type=int, default=256 if cuda else 64)
    p.add_argument("--classes", type=int, default=48)
    p.add_argument("--teachers", type=int, nargs="+", default=[3, 4])
    p.add_argument("--steps", type=int, default=30, help="timed steps per case (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--amp", choices=["bf16", "none"], default="bf16" if cuda else "none")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    c = args.classes
    counts = torch.logspace(4, 0.5, c).round()  # a long tail, 10000 ... 3
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=fmt)
    y = (torch.rand(args.batch, c, device=device) < 0.1).float()
    idx = torch.randint(0, 10_000, (args.batch,))

    def step_fn(model, criterion, teacher_fn):
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=True)

        def step():
            with amp:
                logits = model(x)
                if teacher_fn is None:
                    loss = criterion(logits.float(), y)
                else:
                    loss = criterion(logits.float(), y, teacher_fn())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def timed(step) -> float:
        for _ in range(args.warmup):
            step()
        out = []
        for _ in range(args.steps):
            if device.type == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                step()
                e.record()
                torch.cuda.synchronize()
                out.append(s.elapsed_time(e) / 1e3)
            else:
                t0 = time.perf_counter()
                step()
                out.append(time.perf_counter() - t0)
        return statistics.median(out)

    results: dict[str, float] = {}
    with value_checks(False), tempfile.TemporaryDirectory() as tmp:
        model = build(args.model, c).to(device, memory_format=fmt)
        results["erm"] = timed(step_fn(model, nn.BCEWithLogitsLoss(), None))

        part = SubsetPartitioner("shot", mode="quantile").partition(class_counts=counts)
        names = [f"c{i}" for i in range(c)]
        bank = TeacherLogitBank.write(os.path.join(tmp, "bank.rskd"), torch.randn(10_000, c),
                                      class_names=names, partition=part).to(device)
        student = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), c).to(device)
        results["student_bank"] = timed(step_fn(model, student, lambda: bank[idx]))

        for k in args.teachers:
            kpart = SubsetPartitioner("feature", num_subsets=k).partition(
                embeddings=torch.randn(c, 8), class_counts=counts)
            teachers = SubsetTeachers([build(args.model, len(s)) for s in kpart.subsets], kpart)
            teachers = teachers.to(device, memory_format=fmt)

            def online(teachers=teachers):
                return teachers(x).float()
            results[f"student_{k}_teachers"] = timed(step_fn(model, student, online))
            del teachers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{args.model}, {args.size} px, batch {args.batch}, {c} classes, amp={args.amp}, {name}, "
          f"torch {torch.__version__}, median of {args.steps} steps")
    print(f"{'case':<22}{'ms/step':>10}{'images/s':>11}{'x ERM':>8}")
    for case, sec in results.items():
        print(f"{case:<22}{sec * 1e3:>10.1f}{args.batch / sec:>11.0f}{sec / results['erm']:>8.2f}")
    info = {"device": name, "model": args.model, "size": args.size, "batch": args.batch, "amp": args.amp,
            "torch": torch.__version__, "seconds_per_step": results,
            "ratio_to_erm": {k: v / results["erm"] for k, v in results.items()}}
    print(json.dumps(info))
    return info


if __name__ == "__main__":
    main()
