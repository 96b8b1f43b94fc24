"""RSKDWeightCallback: Eq. 3 after every validation of a Lightning Trainer (CPU; 1 process, then 2 with DDP).

Needs the `lightning` extra (in `dev`): skipped, with the reason, when it is missing.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pl = pytest.importorskip("lightning.pytorch", reason="needs the 'lightning' extra: pip install -e '.[lightning]'")

import torch
from _lightning_helpers import TEACHER_AP, C, Student, loaders, make_bank, trainer

from rskd_loss import kd_weights
from rskd_loss.integrations.lightning import RSKDWeightCallback
from rskd_loss.metrics import average_precision_per_class

HERE = os.path.dirname(os.path.abspath(__file__))


pytestmark = pytest.mark.usefixtures("one_thread")


def _expected(val: dict[str, torch.Tensor]) -> torch.Tensor:
    return kd_weights(average_precision_per_class(val["logits"], val["targets"]), TEACHER_AP)


def test_two_epochs_one_process(tmp_path):
    pl.seed_everything(0, verbose=False)
    callback = RSKDWeightCallback(TEACHER_AP)
    model = Student(make_bank(tmp_path / "bank.rskd", 64))
    train, val = loaders()
    fit = trainer([callback], num_sanity_val_steps=2, enable_checkpointing=False)
    fit.fit(model, train, val)

    assert callback.calls == 2                              # two validations; the sanity check does not count
    assert len(model.val_epochs) == 2
    w = model.criterion.weights
    assert not torch.equal(w, torch.ones(C))                # the weights moved from 1
    torch.testing.assert_close(w, _expected(model.val_epochs[-1]), rtol=0, atol=1e-6)

    fit.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    torch.testing.assert_close(ckpt["state_dict"]["criterion.weights"], w)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "RSKDWeightCallback" in k]
    assert state["calls"] == 2


def test_teacher_ap_from_percent_file(tmp_path):
    path = tmp_path / "ap.json"
    path.write_text("[95, 90, 90, 85]")
    cb = RSKDWeightCallback(str(path), teacher_ap_percent=True)
    torch.testing.assert_close(cb.teacher_ap, torch.tensor(TEACHER_AP, dtype=torch.float64))


def test_clear_errors(tmp_path):
    bank = make_bank(tmp_path / "bank.rskd", 64)
    train, val = loaders()

    model = Student(bank)
    with pytest.raises(TypeError, match="attribute 'crit' to be a WeightedSubsetKDLoss"):
        trainer([RSKDWeightCallback(TEACHER_AP, criterion="crit")], max_epochs=1).fit(model, train, val)

    class NoDict(Student):
        def validation_step(self, batch, batch_idx):
            return self.net(batch[0])

    with pytest.raises(ValueError, match="must return a dict with 'logits'"):
        trainer([RSKDWeightCallback(TEACHER_AP)], max_epochs=1, num_sanity_val_steps=0).fit(NoDict(bank), train, val)


def test_ddp_two_processes_identical_weights(tmp_path):
    """strategy="ddp" on 2 CPU processes (gloo): the same weights on both ranks, from the union of their
    validation predictions (37 images: the sampler repeats one, which ``indices`` lets the callback drop)."""
    make_bank(tmp_path / "bank.rskd", 64)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(os.path.dirname(HERE))}
    run = subprocess.run([sys.executable, os.path.join(HERE, "_lightning_ddp_worker.py"), str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["calls"] == r1["calls"] == 2
    assert torch.equal(r0["weights"], r1["weights"])
    assert not torch.equal(r0["weights"], torch.ones(C))

    last = [r0["val"][-1], r1["val"][-1]]
    idx = torch.cat([v["indices"] for v in last])
    assert sorted(set(idx.tolist())) == list(range(37)) and idx.numel() == 38   # one repeated sample
    first = {}
    for i, row in zip(idx.tolist(), range(idx.numel())):
        first.setdefault(i, row)
    rows = torch.tensor([first[i] for i in sorted(first)])
    union = {k: torch.cat([v[k] for v in last])[rows] for k in ("logits", "targets")}
    torch.testing.assert_close(r0["weights"], _expected(union), rtol=0, atol=1e-6)
