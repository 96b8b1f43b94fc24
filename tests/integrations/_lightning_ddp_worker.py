"""Run by tests/test_integration_lightning.py: 2 CPU processes (strategy="ddp", gloo) with RSKDWeightCallback.

Lightning's "ddp" launcher starts rank 1 by running this script again; each rank saves its weights
and its local validation outputs to ``<out>/rank<r>.pt``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from _lightning_helpers import TEACHER_AP, Student, loaders, trainer  # noqa: E402

from rskd_loss import TeacherLogitBank  # noqa: E402
from rskd_loss.integrations.lightning import RSKDWeightCallback  # noqa: E402

if __name__ == "__main__":
    out = sys.argv[1]
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    callback = RSKDWeightCallback(TEACHER_AP)
    model = Student(TeacherLogitBank(os.path.join(out, "bank.rskd")), with_indices=True)
    train, val = loaders(n_val=37, batch_size=8)   # 37 images: the sampler repeats one to even out the ranks
    fit = trainer([callback], devices=2, strategy="ddp")
    fit.fit(model, train, val)
    torch.save({"weights": model.criterion.weights.clone(), "calls": callback.calls, "val": model.val_epochs},
               os.path.join(out, f"rank{fit.global_rank}.pt"))
