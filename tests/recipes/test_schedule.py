"""recipes/engine/schedule.py and groups.py: the cosine schedule by hand, SGD's momentum by hand, the
schedule keys refused before training, cosine resumes refused when the run's steps change, and the
quantile head / medium / tail groups of a run and of the sweep's collection."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recipes.config import ConfigError, load_config
from recipes.engine.checkpoints import config_differences, plain_config
from recipes.engine.groups import cut_groups, group_rule, group_scores
from recipes.engine.schedule import HalfCosineLR, cosine_lr, make_optimizer, make_schedule
from recipes.table3.collect import run_group_map
from rskd_loss.metrics import group_map, shot_cuts, shot_groups

LR, MIN_LR = 1e-3, 1e-5


# ---------------------------------------------------------------------------------------------- cosine

def test_cosine_by_hand_at_the_first_middle_and_last_step():
    assert cosine_lr(0, 5, LR, MIN_LR) == LR  # exactly: w = 1
    assert cosine_lr(2, 5, LR, MIN_LR) == pytest.approx((LR + MIN_LR) / 2, rel=1e-12)  # cos(pi / 2) = 0
    assert cosine_lr(4, 5, LR, MIN_LR) == MIN_LR  # exactly: cos(pi) = -1
    # a quarter of the way (s / (S - 1) = 1/4): w = (1 + cos(pi / 4)) / 2 = (2 + sqrt 2) / 4
    w = (2 + math.sqrt(2)) / 4
    assert cosine_lr(1, 5, LR, MIN_LR) == pytest.approx(w * LR + (1 - w) * MIN_LR, rel=1e-12)
    assert cosine_lr(9, 5, LR, MIN_LR) == MIN_LR  # past the last step: stays at the floor
    assert cosine_lr(0, 1, LR, MIN_LR) == LR and cosine_lr(3, 0, LR, MIN_LR) == LR  # one step or none
    rates = [cosine_lr(s, 50, LR, MIN_LR) for s in range(50)]
    assert all(a > b for a, b in zip(rates, rates[1:]))  # strictly falling


def test_the_optimiser_gets_the_rate_of_the_step_and_a_state_resumes_it():
    sched = {**load_config(None, None, [])["schedule"], "kind": "cosine", "lr": LR, "min_lr": MIN_LR, "epochs": 2}
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(2))], sched, torch.device("cpu"))
    schedule = make_schedule(opt, sched, steps_per_epoch=3)  # 6 steps in all
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(3):
        schedule.after_step()
        schedule.after_epoch(123.0)  # no effect on a cosine: it ignores the validation loss
        seen.append(opt.param_groups[0]["lr"])
    assert seen == [cosine_lr(s, 6, LR, MIN_LR) for s in range(4)]
    state = schedule.state_dict()
    assert state == {"steps_done": 3, "total_steps": 6}
    fresh_opt = make_optimizer([torch.nn.Parameter(torch.zeros(2))], sched, torch.device("cpu"))
    fresh = make_schedule(fresh_opt, sched, steps_per_epoch=3)
    fresh.load_state_dict(state)
    assert fresh_opt.param_groups[0]["lr"] == seen[-1]
    other = HalfCosineLR(fresh_opt, 8, LR, MIN_LR)  # another world size or batch size: another curve
    with pytest.raises(ConfigError, match=r"saved for 6 steps .* this run has 8"):
        other.load_state_dict(state)


def test_the_default_schedule_is_the_plateau_on_the_validation_loss():
    sched = load_config(None, None, [])["schedule"]
    assert (sched["kind"], sched["select"], sched["optimizer"], sched["momentum"]) == ("plateau", "best", "adam", 0.9)
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(2))], sched, torch.device("cpu"))
    assert type(opt) is torch.optim.Adam and opt.defaults["weight_decay"] == 0.0
    schedule = make_schedule(opt, sched, steps_per_epoch=10)
    plateau = schedule.scheduler
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (plateau.factor, plateau.patience, plateau.min_lrs) == (0.1, 5, [1e-7])
    for _ in range(20):
        schedule.after_step()  # per step: nothing
    assert opt.param_groups[0]["lr"] == sched["lr"]
    for _ in range(7):  # no improvement after the first epoch: a drop after patience (5) + 1 epochs
        schedule.after_epoch(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(sched["lr"] * 0.1)


# ------------------------------------------------------------------------------------------------- SGD

def test_sgd_uses_its_momentum_and_weight_decay_a_step_by_hand():
    mu, wd, lr = 0.8, 0.1, 0.5
    sched = {**load_config(None, None, ["schedule.optimizer='sgd'", f"schedule.momentum={mu}",
                                        f"schedule.weight_decay={wd}", f"schedule.lr={lr}"])["schedule"]}
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    opt = make_optimizer(model.parameters(), sched, torch.device("cpu"))
    x = torch.tensor([[3.0, 4.0]])  # loss = w . x: the gradient is x, whatever w
    for _ in range(2):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    w0, g = np.array([1.0, -2.0]), np.array([3.0, 4.0])
    v1 = g + wd * w0                     # the first step: the buffer is the gradient (with the L2 term)
    w1 = w0 - lr * v1
    v2 = mu * v1 + (g + wd * w1)         # then v = mu v + g (PyTorch's SGD, dampening 0)
    w2 = w1 - lr * v2
    np.testing.assert_allclose(model.weight.detach().numpy()[0], w2, rtol=1e-6)
    without = w1 - lr * (g + wd * w1)    # what momentum 0 would give: far from it
    assert np.abs(w2 - without).max() > 1.0


# ------------------------------------------------------------------------------------------ refusals

@pytest.mark.parametrize("override, message", [
    ("schedule.kind='linear'", r"'schedule.kind' must be plateau or cosine, got 'linear'"),
    ("schedule.select='first'", r"'schedule.select' must be best or last, got 'first'"),
    ("schedule.optimizer='adamw'", r"'schedule.optimizer' must be adam or sgd, got 'adamw'"),
    ("schedule.momentum=0.5", r"'schedule.momentum' must be its default 0.9 with schedule.optimizer='adam' "
                              r"\(Adam has no momentum; set schedule.optimizer='sgd'\), got 0.5"),
    ("schedule.momentum=True", r"'schedule.momentum' must be a number in \[0, 1\), got True"),
    ("method.partition.mode='tertile'", r"'method.partition.mode' must be fixed or quantile, got 'tertile'"),
])
def test_bad_schedule_and_group_keys_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, None, [override])


def test_sgd_momentum_out_of_range_is_refused_and_in_range_accepted():
    with pytest.raises(ConfigError, match=r"'schedule.momentum' must be a number in \[0, 1\), got 1.0"):
        load_config(None, None, ["schedule.optimizer='sgd'", "schedule.momentum=1.0"])
    cfg = load_config(None, None, ["schedule.optimizer='sgd'", "schedule.momentum=0.0", "schedule.kind='cosine'",
                                   "schedule.select='last'", "method.partition.mode='quantile'"])
    assert cfg["schedule"]["momentum"] == 0.0


def test_a_cosine_resume_may_not_change_the_epochs():
    saved = plain_config(load_config(None, None, ["schedule.kind='cosine'"]))
    longer = plain_config(load_config(None, None, ["schedule.kind='cosine'", "schedule.epochs=101"]))
    assert config_differences(saved, longer) == ["schedule.epochs (saved 100, now 101)"]
    plateau_saved = plain_config(load_config(None, None, []))
    assert config_differences(plateau_saved, plain_config(load_config(None, None, ["schedule.epochs=101"]))) == []
    # a checkpoint written before the schedule keys existed resumes with their defaults
    old = {**plateau_saved, "schedule": {k: v for k, v in plateau_saved["schedule"].items()
                                         if k not in ("kind", "select", "optimizer", "momentum")}}
    assert config_differences(old, plateau_saved) == []


# ---------------------------------------------------------------------------------------------- groups

# training positives of 12 classes of a large set: none below the fixed tail cut 20, so no tail class
COUNTS = np.array([4000, 2100, 900, 640, 400, 400, 300, 150, 120, 90, 60, 45])
AP = np.array([0.9, 0.8, 0.7, 0.75, 0.6, 0.5, 0.55, 0.3, 0.35, np.nan, 0.2, 0.1])


def _by_hand(ap: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, float]:
    out = {g: float(np.nanmean(ap[idx])) for g, idx in groups.items()}
    return {**out, "total": float(np.nanmean(ap))}


def test_quantile_groups_are_shot_groups_quantile_split():
    rule = group_rule({"thresholds": (100, 20), "mode": "quantile"}, COUNTS)
    assert rule == {"mode": "quantile", "cuts": list(shot_cuts(COUNTS, mode="quantile"))}
    split = shot_groups(COUNTS, mode="quantile")
    assert all(split[g].size == 4 for g in ("head", "medium", "tail"))  # a third of the classes each
    assert {g: idx.tolist() for g, idx in cut_groups(COUNTS, rule["cuts"]).items()} == \
        {g: idx.tolist() for g, idx in split.items()}
    assert group_scores(AP, COUNTS, rule["cuts"]) == pytest.approx(_by_hand(AP, split))
    fixed = group_rule({"thresholds": (100, 20), "mode": "fixed"}, COUNTS)
    assert fixed == {"mode": "fixed", "cuts": [100.0, 20.0]}
    assert cut_groups(COUNTS, fixed["cuts"])["tail"].size == 0  # what the quantile rule is for


def test_fixed_groups_are_group_map_bit_for_bit():
    with pytest.warns(UserWarning):
        expected = group_map(AP, COUNTS, (100, 20))
    got = group_scores(AP, COUNTS, [100.0, 20.0])
    assert list(got) == list(expected)
    np.testing.assert_array_equal(list(got.values()), list(expected.values()))  # exactly; NaN (no tail) as NaN


def test_equal_or_zero_tertiles_are_applied_as_shot_groups_does():
    counts = np.array([0, 0, 0, 0, 0, 0, 5])  # both tertiles are 0: nothing is tail, no medium class
    cuts = group_rule({"thresholds": (100, 20), "mode": "quantile"}, counts)["cuts"]
    assert cuts == [0.0, 0.0]
    assert {g: i.tolist() for g, i in cut_groups(counts, cuts).items()} == \
        {g: i.tolist() for g, i in shot_groups(counts, mode="quantile").items()}


def test_collection_recomputes_the_recorded_quantile_groups():
    rule = group_rule({"thresholds": (100, 20), "mode": "quantile"}, COUNTS)
    result = {"test": {"ap": [None if np.isnan(a) else float(a) for a in AP]}, "train_class_counts": COUNTS.tolist(),
              "thresholds": [100, 20], "groups": rule}
    expected = _by_hand(AP, shot_groups(COUNTS, mode="quantile"))
    assert run_group_map(result, (100, 20)) == pytest.approx(expected)
    assert not math.isnan(run_group_map(result, (100, 20))["tail"])
    # a result with fixed groups, or from before the groups were recorded: its thresholds, as before
    for old in ({**result, "groups": {"mode": "fixed", "cuts": [100.0, 20.0]}}, {k: v for k, v in result.items()
                                                                                  if k != "groups"}):
        assert math.isnan(run_group_map(old, (100, 20))["tail"])
