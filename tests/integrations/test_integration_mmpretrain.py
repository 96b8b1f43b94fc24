"""The mmpretrain integration: recipes/configs/mmpretrain/rskd_example.py trained by mmengine's Runner on tiny
generated PNGs (a tiny backbone registered here), 2 epochs with a validation after each.

Needs the `mmpretrain` extra (in `dev`): skipped, with the reason, when it is missing.
"""
from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("mmpretrain", reason="needs the 'mmpretrain' extra: pip install -e '.[mmpretrain]'")

import numpy as np
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import BaseModule
from mmengine.runner import Runner
from mmpretrain.registry import HOOKS, MODELS
from PIL import Image
from torch import nn

from rskd_loss import KDWeightUpdater, Partition, TeacherLogitBank, WeightedSubsetKDLoss, kd_weights
from rskd_loss.baselines import FocalLoss
from rskd_loss.integrations.mmpretrain import RSKDMultiLabelClsHead, RSKDWeightedSubsetKDLoss, RSKDWeightHook

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "recipes",
                       "configs", "mmpretrain", "rskd_example.py")
C, N_TRAIN, N_VAL = 3, 12, 8
TEACHER_AP = [0.5, 0.5, 0.5]   # every class's val prevalence is >= 1/2, so the student's AP is >= 0.36 > delta * 0.5


@MODELS.register_module(name="_RSKDTestTinyNet", force=True)
class TinyNet(BaseModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.relu(self.conv(x)),)


@HOOKS.register_module(name="_RSKDTestRecorder", force=True)
class Recorder(Hook):
    priority = "LOWEST"   # after RSKDWeightHook
    seen: list = []

    def after_val_epoch(self, runner, metrics=None) -> None:
        crit = RSKDWeightHook.find_criterion(runner.model)
        Recorder.seen.append((list(metrics["multi-label/AP_classwise"]), crit.weights.clone()))


def _data(root) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        os.makedirs(root / split)
        items = []
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
            labels = [c for c in range(C) if (i + c) % 2 == 0] if split == "val" else \
                [c for c in range(C) if rng.random() < 0.5] or [0]
            items.append({"img_path": f"{split}/{i}.png", "gt_label": labels})
        ann = {"metainfo": {"classes": ["a", "b", "c"]}, "data_list": items}
        (root / f"{split}.json").write_text(json.dumps(ann))
    part = Partition([[0], [1, 2]], names=["s0", "s1"], num_classes=C)
    logits = torch.randn(N_TRAIN, C, generator=torch.Generator().manual_seed(1)) * 3
    TeacherLogitBank.write(root / "bank.rskd", logits,
                           class_names=["a", "b", "c"], partition=part)
    (root / "teacher_ap.json").write_text(json.dumps(TEACHER_AP))


def _config(root, base: dict, name: str) -> Config:
    """The example config, with tiny data, a tiny backbone and 2 short epochs."""
    cfg = Config.fromfile(EXAMPLE)
    cfg.model.backbone = dict(type="_RSKDTestTinyNet")
    cfg.model.data_preprocessor.num_classes = C
    head = cfg.model.head
    head.teacher_bank = str(root / "bank.rskd")
    head.head.update(num_classes=C, in_channels=8)
    head.head.loss.update(num_classes=C, base=base)
    pipeline = [dict(type="LoadImageFromFile"), dict(type="PackInputs")]
    for key, ann in (("train_dataloader", "train.json"), ("val_dataloader", "val.json"),
                     ("test_dataloader", "val.json")):
        cfg[key].update(batch_size=4, num_workers=0, persistent_workers=False)
        cfg[key].dataset.update(data_root=str(root), ann_file=ann, pipeline=pipeline)
    cfg.custom_hooks[0].teacher_ap = str(root / "teacher_ap.json")
    cfg.custom_hooks.append(dict(type="_RSKDTestRecorder"))
    cfg.train_cfg.max_epochs = 2
    cfg.param_scheduler.T_max = 2
    cfg.optim_wrapper.optimizer.lr = 0.1
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.max_keep_ckpts = 2
    cfg.env_cfg.dist_cfg.backend = "gloo"
    cfg.work_dir = str(root / f"work_{name}")
    cfg.experiment_name = f"rskd_test_{name}"
    return cfg


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    torch.set_num_threads(1)
    r = tmp_path_factory.mktemp("mmpretrain")
    _data(r)
    return r


@pytest.mark.parametrize("base", [dict(type="RSKDFocalLoss"), dict(type="FocalLoss")], ids=["project", "mmpretrain"])
def test_example_config_trains_and_updates_weights(root, base):
    Recorder.seen = []
    runner = Runner.from_cfg(_config(root, base, base["type"]))
    runner.train()

    model = runner.model
    assert isinstance(model.head, RSKDMultiLabelClsHead)
    crit = model.head.loss_module
    assert isinstance(crit, RSKDWeightedSubsetKDLoss)
    assert type(crit.base).__name__ == base["type"]          # the base built from mmpretrain's MODELS
    ds = runner.train_dataloader.dataset                    # sample_idx is the item's index: the bank's row
    assert [ds[i]["data_samples"].sample_idx for i in range(len(ds))] == list(range(N_TRAIN))
    hook = [h for h in runner.hooks if isinstance(h, RSKDWeightHook)][0]
    assert hook.calls == 2 and len(Recorder.seen) == 2

    for ap_percent, weights in Recorder.seen:                # percent -> fraction, then Eq. 3
        torch.testing.assert_close(weights, kd_weights(torch.tensor(ap_percent) / 100, TEACHER_AP))
    assert not torch.equal(crit.weights, torch.ones(C))

    # the weights are in every checkpoint; checkpoint["rskd"]["calls"] says after which validation
    # (mmengine saves epoch k before validation k, and again after one that improves save_best)
    key = "head.head.loss_module.weights"
    moved = False
    for name in ("epoch_1.pth", "epoch_2.pth", os.path.basename(runner.message_hub.get_info("best_ckpt"))):
        ckpt = torch.load(os.path.join(runner.work_dir, name), map_location="cpu", weights_only=False)
        calls = ckpt["rskd"]["calls"]
        expected = torch.ones(C) if calls == 0 else Recorder.seen[calls - 1][1]
        torch.testing.assert_close(ckpt["state_dict"][key], expected)
        assert calls in (ckpt["meta"]["epoch"] - 1, ckpt["meta"]["epoch"]), (name, calls, ckpt["meta"])
        moved |= not torch.equal(ckpt["state_dict"][key], torch.ones(C))
    assert moved


def test_both_focal_losses_in_one_process_and_the_kwargs_mmpretrain_passes():
    """mmpretrain's FocalLoss and the project's (RSKDFocalLoss) side by side; avg_factor and weight."""
    torch.manual_seed(0)
    z, y, t = torch.randn(6, C), torch.randint(0, 2, (6, C)).float(), torch.randn(6, C)
    losses = {name: MODELS.build(dict(type="RSKDWeightedSubsetKDLoss", base=dict(type=name), num_classes=C))
              for name in ("FocalLoss", "RSKDFocalLoss")}
    assert type(losses["FocalLoss"].base).__module__.startswith("mmpretrain")
    assert type(losses["RSKDFocalLoss"].base).__module__ == "rskd_loss.integrations.mmpretrain"
    for crit in losses.values():
        crit.set_weights(torch.zeros(C))                     # no KD: mmpretrain's own value with avg_factor=N
        ref = MODELS.build(dict(type="FocalLoss"))(z, y, avg_factor=6)
        torch.testing.assert_close(crit(z, y, teacher_logits=t, avg_factor=6), ref)
        torch.testing.assert_close(ref, FocalLoss()(z, y) * C)   # sum over classes, mean over samples
        crit.set_weights(torch.ones(C))
        per_sample = crit(z, y, teacher_logits=t, reduction_override="none").sum(1)
        w = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0, 0.5])
        torch.testing.assert_close(crit(z, y, teacher_logits=t, weight=w, avg_factor=6), (per_sample * w).sum() / 6)
    torch.testing.assert_close(losses["FocalLoss"](z, y, teacher_logits=t, avg_factor=6),
                               losses["RSKDFocalLoss"](z, y, teacher_logits=t, avg_factor=6))


def test_clear_errors(root):
    crit = MODELS.build(dict(type="RSKDWeightedSubsetKDLoss", base=dict(type="FocalLoss"), num_classes=C))
    with pytest.raises(TypeError, match="no teacher_logits"):
        crit(torch.zeros(2, C), torch.ones(2, C), avg_factor=2)
    with pytest.raises(TypeError, match="mmpretrain's loss convention"):
        RSKDWeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), C)
    with pytest.raises(ValueError, match="use_sigmoid=True"):
        RSKDWeightedSubsetKDLoss(dict(type="CrossEntropyLoss"), C)
    with pytest.raises(TypeError, match="RSKDWeightedSubsetKDLoss"):
        RSKDMultiLabelClsHead(dict(type="MultiLabelLinearClsHead", num_classes=C, in_channels=4),
                              teacher_bank=str(root / "bank.rskd"))
    hook = RSKDWeightHook([0.5] * C)
    hook.updater = KDWeightUpdater(WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), C), [0.5] * C)
    with pytest.raises(ValueError, match="AveragePrecision', average=None"):
        hook.after_val_epoch(None, {"multi-label/mAP": 50.0})


def test_head_reads_the_bank_rows_of_sample_idx(root):
    from mmpretrain.structures import DataSample

    head = MODELS.build(dict(type="RSKDMultiLabelClsHead", teacher_bank=str(root / "bank.rskd"),
                             head=dict(type="MultiLabelLinearClsHead", num_classes=C, in_channels=4,
                                       loss=dict(type="RSKDWeightedSubsetKDLoss", base=dict(type="FocalLoss"),
                                                 num_classes=C))))
    samples = [DataSample(metainfo={"sample_idx": i}).set_gt_label([0]) for i in (5, 0, 11)]
    bank = TeacherLogitBank(root / "bank.rskd")
    torch.testing.assert_close(head.teacher_logits(samples, torch.device("cpu")), bank[[5, 0, 11]])
    losses = head.loss((torch.randn(3, 4),), samples)
    assert set(losses) == {"loss"} and losses["loss"].requires_grad
    with pytest.raises(ValueError, match="no 'sample_idx'"):
        head.loss((torch.randn(1, 4),), [DataSample().set_gt_label([0])])
