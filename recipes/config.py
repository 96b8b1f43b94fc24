"""Run configuration: defaults (the paper's Section 3.1), a profile, a method config, overrides.

Configs are mmengine Python config files (``_base_`` inheritance). A run's configuration is merged
in this order, later winning:

1. :data:`DEFAULTS` below: the paper's settings (ResNet-50, 256 px, Adam 1e-4 reduced ten-fold on a
   validation-loss plateau with patience 5 down to 1e-7, 100 epochs, delta 0.6, T 10, 4 folds);
2. a profile (``recipes/configs/profiles/NAME.py``): data set, model and schedule of a setting, e.g.
   ``demo`` (CPU, synthetic, minutes) or ``paper`` (GPU);
3. the method config (``--config``): one table row;
4. ``--set key.sub=value`` overrides from the command line (values parsed as Python literals), as
   mmengine's ``--cfg-options`` (``Config.merge_from_dict``): a dotted key changes that one field
   (``method.criterion.gamma=1.0`` keeps the row's other criterion fields, whatever ``_delete_`` its
   file uses); a dict value merges into the dict key by key, and replaces it whole when it holds
   ``'_delete_': True``, or, for ``method.criterion``, when it names another criterion.

Every key is checked: an unknown key is refused with the list of valid ones, a value of the wrong
type or out of range is refused naming the key, all before any training starts.
"""
from __future__ import annotations

import ast
import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rskd_loss.errors import RSKDError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

DEFAULTS: dict[str, Any] = {
    "data": {
        "dataset": "synthetic",   # synthetic | csv | rfmid
        "root": "data/synthetic",  # folder holding the CSV and the images
        "csv": "labels.csv",
        "image_dir": "images",
        "image_suffix": "",
        "image_column": None,      # the CSV column of image file names (None: the first column)
        # generator options (recipes/data/synthetic.py generate_synthetic); None: its default
        "synthetic": {"seed": 0, "num_images": None, "image_size": None, "num_classes": None,
                      "imbalance_ratio": None, "version": None},
        "rfmid_variant": "auto",
        "scheme": "kfold",         # kfold (the paper's 4-fold cross-validation) | holdout (7:1:2)
        "n_folds": 4,
        "split_seed": 0,
        "fold": 0,
        "image_size": 256,
        "batch_size": 32,
        "eval_batch_size": 128,
        "num_workers": 4,
        "preload": False,          # decode every image once into memory (small data sets, CPU demo)
        "augment": True,
        "class_names": None,       # the label columns, in order (None: detected, every column of 0/1 values;
                                   # the others, e.g. an age, are skipped and listed in the run's log)
        "skip_bad_images": False,  # True: leave out rows whose image is missing or undecodable, counted
        "trunk_views": 8,          # model.cache_trunk: views cached per image (view 0 plain, the others augmented)
    },
    "model": {
        "name": "resnet50",        # any torchvision classification model, small_cnn, efficientnet_lite0, or
                                   # timm/<name> for any timm model (timm/resnet18, timm/convnext_tiny, ...)
        "pretrained": True,        # ImageNet weights when available offline (timm/<name>: from timm's Hugging
                                   # Face / torch hub cache; nothing is downloaded)
        "weights_path": None,      # a local state_dict file for the backbone (timm/<name>: .safetensors,
                                   # .pth or .bin, as timm saves or publishes it)
        "width": 32,               # small_cnn only
        "head": "linear",          # linear | normed (cosine head, LDAM's s = 30 assumes it)
        "norm": "batch",           # small_cnn only: batch | group (GroupNorm: no batch statistics)
        "freeze": 0,               # efficientnet_lite0 only: leading stages frozen (weights and BN statistics;
                                   # 0 = stem, 1..7 = MBConv stages, 8 = head conv; recipes/models/timm_backbones.py)
        "cache_trunk": False,      # efficientnet_lite0 with freeze 1..8: the frozen stages' output computed once per
                                   # data set and view, runs train the rest (recipes/engine/trunk_cache.py)
    },
    "schedule": {
        "epochs": 100,
        "lr": 1e-4,
        "weight_decay": 0.0,
        "plateau_factor": 0.1,
        "plateau_patience": 5,
        "min_lr": 1e-7,
        # plateau (the paper's: the rate drops on the run's own validation loss) | cosine (a half cosine from
        # lr at the first step to min_lr at the last, per step, the same for every method;
        # recipes/engine/schedule.py); the plateau_* keys are unused with cosine
        "kind": "plateau",
        "select": "best",          # the tested epoch (and best.pt): best (validation total mAP) | last
        "optimizer": "adam",       # adam (the paper's) | sgd
        "momentum": 0.9,           # sgd only (torchvision classification reference default; Adam has none: another
                                   # value with adam is refused)
    },
    "method": {
        "name": "erm",
        "stage": "baseline",       # baseline | teacher | student
        "criterion": {"name": "bce"},
        # a profile's per-criterion choices, e.g. {"focal": {"alpha": None, "gamma": 1.0}}: merged into
        # method.criterion when its name matches (the row X and "Ours + X" alike), before --set
        "criterion_settings": {},
        "sampler": None,           # None | class_aware
        "num_samples_cls": 4,
        "oltr_stage": None,        # None | 1 | 2 (OLTR's two runs)
        "init_from": None,         # a run folder whose best.pt initialises this run (OLTR stage 2)
        # prior (region / feature rules): a shipped name or a prior JSON file; None: the data set's own
        # (DATASET_PRIORS: synthetic, rfmid); data.dataset='csv' has none, so those rules need it set.
        # mode: fixed (the thresholds) | quantile (the training counts' tertiles): the shot rule's cuts, and
        # those of the head / medium / tail groups every run reports (recipes/engine/groups.py)
        "partition": {"rule": "shot", "thresholds": (100, 20), "mode": "fixed", "prior": None,
                      "num_subsets": None},
        "subset": None,            # teacher: the subset index
        # cross-fitted teachers: 0 = the bank holds each teacher's logits on its own training images; K >= 2 =
        # K teacher sets, set k trained on the fold's training images minus part k (rskd_loss.crossfit_parts,
        # seeded with data.split_seed), each image's bank row from the set that did not see it
        "crossfit_k": 0,
        "crossfit_part": None,     # teacher of a cross-fitted set: the part k it leaves out (the sweep sets it)
        "teacher_init": None,      # None | "erm": a teacher starts from the backbone of method.init_from's best.pt
        "teacher_images": "positive",  # teacher: positive | all | balanced (Partition.teacher_view)
        "teachers_dir": None,      # student: the folder holding subset0..subsetK-1 teacher runs
        "teacher_mode": "bank",    # student: bank | online
        "kd": {"temperature": 10.0, "delta": 0.6, "order": "student_teacher", "dynamic_weights": True,
               "kd_weight": 1.0, "scale_by_t2": False},
    },
    "run": {
        "out_dir": "runs/default",
        "seed": 0,
        "device": "auto",          # auto | cpu | cuda
        "amp": "auto",             # auto (bf16 on GPU) | bf16 | none
        "channels_last": "auto",
        "compile": False,
        "deterministic": False,
        "sync_bn": False,          # torchrun on GPUs: SyncBatchNorm (batch statistics over all ranks)
        "checkpoint_every": 0,     # also write last.pt every this many steps (0: at the end of each epoch only)
        "log_every": 50,           # steps between host-device synchronisations (non-finite loss check)
        "max_steps_per_epoch": None,  # tests: stop an epoch after this many steps
    },
}

STAGES = ("baseline", "teacher", "student")
RULES = ("shot", "region", "feature")
#: the prior shipped for each data set, used when ``method.partition.prior`` is None
DATASET_PRIORS = {"synthetic": "synthetic", "rfmid": "rfmid"}


def default_prior(dataset: str) -> str | None:
    """The shipped prior of ``data.dataset`` (``"synthetic"``, ``"rfmid"``), ``None`` for ``"csv"``."""
    return DATASET_PRIORS.get(dataset)


def needs_prior(cfg: Mapping) -> bool:
    """Whether ``cfg``'s partition rule looks classes up in a prior (region, or feature by groups)."""
    p = cfg["method"]["partition"]
    return p["rule"] == "region" or (p["rule"] == "feature" and p["num_subsets"] is None)


class ConfigError(RSKDError, ValueError):
    """A configuration key is unknown, of the wrong type, or out of range (the message names it)."""


#: mmengine's marker (``mmengine.config.config.DELETE_KEY``): a dict holding ``_delete_=True`` replaces
#: the dict below it instead of merging into it
DELETE_KEY = "_delete_"
#: the dicts whose keys are free, not a fixed set: the criterion's are its constructor's keyword
#: arguments, checked by ``baselines.build_criterion`` when the run builds it
FREE_FORM = ("method.criterion", "method.criterion_settings")


def _merge(base: dict, update: Mapping, path: str = "", *, layer: bool = False, free: bool = False) -> dict:
    """``update`` merged into a copy of ``base``, key by key, as mmengine's ``Config._merge_a_into_b``.

    Every key must exist in ``base`` unless ``base`` is free-form (:data:`FREE_FORM`, ``free``). A
    dict value merges into the dict it meets, so ``--set method.criterion.gamma=1.0`` changes that one
    field; see :func:`_merged_value` for when it replaces it instead. ``layer``: ``update`` is a config
    file (profile or method config), not the ``--set`` overrides.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in base and not free:
            valid = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key {where!r}; valid keys here: {valid}")
        out[key] = _merged_value(base.get(key), value, where, layer=layer, parent_free=free)
    return out


def _merged_value(current: Any, value: Any, where: str, *, layer: bool, parent_free: bool) -> Any:
    """The value of key ``where`` once ``value`` is merged into its ``current`` one.

    A dict value replaces a dict whole (mmengine's semantics) when it holds ``_delete_=True``; and,
    a criterion only, when it comes from a config file (a row's criterion is complete: its keys
    belong to its ``name``) or names another criterion (the old one's keyword arguments would not fit
    the new one). ``_delete_`` in a fixed section (e.g. ``method.kd``) is dropped: its keys stay.
    """
    if not isinstance(current, dict):
        return _without_delete_key(value)  # a leaf, or a new key of a free-form dict
    if not isinstance(value, Mapping):
        if parent_free:
            return copy.deepcopy(value)  # a criterion argument that was a dict
        raise ConfigError(f"config key {where!r} must be a dict, got {type(value).__name__}")
    value = dict(value)
    delete = bool(value.pop(DELETE_KEY, False))
    free = parent_free or where in FREE_FORM
    renamed = where in FREE_FORM and value.get("name", current.get("name")) != current.get("name")
    if free and (delete or renamed or (layer and where in FREE_FORM)):
        return _without_delete_key(value)
    return _merge(current, value, where + ".", layer=layer, free=free)


def _without_delete_key(value: Any) -> Any:
    """A deep copy of ``value`` without mmengine's ``_delete_`` markers (no constructor takes one)."""
    if isinstance(value, Mapping):
        return {k: _without_delete_key(v) for k, v in value.items() if k != DELETE_KEY}
    return copy.deepcopy(value)


def _read_py_config(path: str | os.PathLike) -> dict:
    from mmengine.config import Config  # the recipes extra; the core library does not need it

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    cfg = Config.fromfile(str(p)).to_dict()
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def available_profiles() -> list[str]:
    """The names ``--profile`` accepts: the files of ``recipes/configs/profiles/``, sorted."""
    return sorted(q.stem for q in (CONFIG_DIR / "profiles").glob("*.py"))


def profile_help() -> str:
    """The ``--profile`` help of the command lines, listing :func:`available_profiles`."""
    return f"{' | '.join(available_profiles())}, or a profile .py file"


def resolve_profile(profile: str | None) -> Path | None:
    if profile is None:
        return None
    p = Path(profile)
    if p.suffix == ".py":
        return p
    named = CONFIG_DIR / "profiles" / f"{profile}.py"
    if not named.is_file():
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(available_profiles())}")
    return named


def parse_overrides(items: Sequence[str]) -> dict:
    """``["method.kd.temperature=3", "run.seed=1"]`` -> nested dict (values as Python literals)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override must look like key.sub=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare string such as run.device=cpu
        node = out
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                above = ".".join(parts[:depth + 1])
                raise ConfigError(f"override {key.strip()!r} sets a key under {above!r}, which an earlier "
                                  f"override set to {node!r}; give {above!r} once, as a dict or key by key")
        node[parts[-1]] = value
    return out


def load_config(
    config: str | os.PathLike | None = None,
    profile: str | None = None,
    overrides: Sequence[str] = (),
) -> dict:
    """Merge defaults, profile, method config and overrides; validate; return a plain nested dict."""
    cfg = copy.deepcopy(DEFAULTS)
    for layer in (resolve_profile(profile), config):
        if layer is not None:
            cfg = _merge(cfg, _read_py_config(layer), layer=True)
    overrides = parse_overrides(overrides)
    cfg = _merge(cfg, overrides)
    # the profile's (or --set's) per-criterion choice, then the criterion keys that --set names, which win
    explicit = (overrides.get("method") or {}).get("criterion")
    explicit = explicit if isinstance(explicit, Mapping) else {}
    cfg["method"]["criterion"] = _with_criterion_settings(cfg["method"], explicit)
    if cfg["method"]["partition"]["prior"] is None:  # the prior follows the data set, never a profile's
        cfg["method"]["partition"]["prior"] = default_prior(cfg["data"]["dataset"])
    validate(cfg)
    return cfg


def _with_criterion_settings(meth: Mapping, explicit: Mapping) -> dict:
    """``method.criterion`` with ``method.criterion_settings`` for its name merged in, then the keys of
    ``explicit`` (the criterion keys given by ``--set``) on top."""
    settings, criterion = meth["criterion_settings"], meth["criterion"]
    _check(isinstance(settings, Mapping) and all(isinstance(v, Mapping) for v in settings.values()),
           "method.criterion_settings", "a dict of criterion name -> dict of its arguments", settings)
    chosen = {k: v for k, v in settings.get(criterion.get("name"), {}).items() if k != DELETE_KEY}
    if "name" in chosen:
        raise ConfigError(f"config key 'method.criterion_settings.{criterion.get('name')}' must not rename the "
                          f"criterion, got name={chosen['name']!r}")
    return {**criterion, **chosen, **{k: v for k, v in explicit.items() if k != DELETE_KEY}}


def _check(cond: bool, key: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"config key {key!r} must be {expected}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_prior(cfg: Mapping) -> None:
    """``method.partition.prior``: None, a shipped prior's name, or a prior JSON file that exists and
    is valid; a rule that needs one on a data set without one is refused, saying how to write it."""
    from rskd_loss.priors import available_priors, how_to_write_prior, load_prior

    prior, dataset = cfg["method"]["partition"]["prior"], cfg["data"]["dataset"]
    if prior is None:
        if needs_prior(cfg):
            raise ConfigError(
                f"config key 'method.partition.prior' must name a prior for the "
                f"{cfg['method']['partition']['rule']} rule on data.dataset={dataset!r}, got None (only "
                f"{sorted(DATASET_PRIORS)} ship one); {how_to_write_prior()}")
        return
    if not isinstance(prior, (str, os.PathLike)):
        raise ConfigError(f"config key 'method.partition.prior' must be None, a shipped prior "
                          f"{available_priors()} or the path of a prior JSON file, got {prior!r}")
    try:
        load_prior(prior)
    except FileNotFoundError as exc:
        raise ConfigError(f"config key 'method.partition.prior': {exc}; {how_to_write_prior()}") from None
    except ValueError as exc:
        raise ConfigError(f"config key 'method.partition.prior': {exc}; {how_to_write_prior()}") from None


def _validate_data(d: Mapping) -> None:
    """The ``data`` section: data set, split scheme and fold, sizes, workers, columns."""
    _check(d["dataset"] in ("synthetic", "csv", "rfmid"), "data.dataset", "one of synthetic, csv, rfmid",
           d["dataset"])
    _check(d["scheme"] in ("kfold", "holdout"), "data.scheme", "kfold or holdout", d["scheme"])
    _check(_is_int(d["n_folds"]) and d["n_folds"] >= 2, "data.n_folds", "an int >= 2", d["n_folds"])
    nf = d["n_folds"] if d["scheme"] == "kfold" else 1
    _check(_is_int(d["fold"]) and 0 <= d["fold"] < nf, "data.fold", f"an int in [0, {nf - 1}]", d["fold"])
    for key in ("image_size", "batch_size", "eval_batch_size"):
        _check(_is_int(d[key]) and d[key] >= 1, f"data.{key}", "a positive int", d[key])
    _check(_is_int(d["num_workers"]) and d["num_workers"] >= 0, "data.num_workers", "an int >= 0",
           d["num_workers"])
    cn = d["class_names"]
    _check(cn is None or (isinstance(cn, (list, tuple)) and cn and all(isinstance(c, str) for c in cn)),
           "data.class_names", "None or a non-empty list of column names", cn)
    ic = d["image_column"]
    _check(ic is None or (isinstance(ic, str) and ic.strip()), "data.image_column",
           "None (the first column) or a column name", ic)
    if cn is not None and ic is not None and ic in cn:
        raise ConfigError(f"config key 'data.class_names' must not name the image column "
                          f"data.image_column={ic!r}, got {list(cn)}")
    _check(isinstance(d["skip_bad_images"], bool), "data.skip_bad_images", "True or False", d["skip_bad_images"])
    _check(_is_int(d["trunk_views"]) and d["trunk_views"] >= 1, "data.trunk_views", "an int >= 1", d["trunk_views"])


def _validate_model(m: Mapping) -> None:
    """The ``model`` section: name, norm, head, frozen stages."""
    _check(isinstance(m["name"], str) and m["name"], "model.name", "a model name", m["name"])
    _check(m["norm"] in ("batch", "group"), "model.norm", "batch or group", m["norm"])
    _check(m["head"] in ("linear", "normed"), "model.head", "linear or normed", m["head"])
    _check(_is_int(m["freeze"]) and m["freeze"] >= 0, "model.freeze", "an int >= 0 (frozen leading stages)",
           m["freeze"])
    _check(isinstance(m["cache_trunk"], bool), "model.cache_trunk", "True or False", m["cache_trunk"])
    if m["cache_trunk"]:
        _check(m["name"] == "efficientnet_lite0", "model.name", "'efficientnet_lite0' with model.cache_trunk=True "
               "(the cached trunk is its frozen stages)", m["name"])
        _check(1 <= m["freeze"] <= 8, "model.freeze", "an int in [1, 8] with model.cache_trunk=True (the frozen "
               "stages whose output is cached; 9 would leave nothing to train)", m["freeze"])


def _validate_schedule(s: Mapping) -> None:
    """The ``schedule`` section: epochs, learning rate, weight decay, plateau schedule, schedule kind, tested
    epoch, optimiser and momentum (refused with Adam unless left at its default: it would be ignored)."""
    _check(_is_int(s["epochs"]) and s["epochs"] >= 1, "schedule.epochs", "a positive int", s["epochs"])
    _check(_is_num(s["lr"]) and s["lr"] > 0, "schedule.lr", "a number > 0", s["lr"])
    _check(_is_num(s["weight_decay"]) and s["weight_decay"] >= 0, "schedule.weight_decay", "a number >= 0",
           s["weight_decay"])
    _check(_is_num(s["plateau_factor"]) and 0 < s["plateau_factor"] < 1, "schedule.plateau_factor",
           "a number in (0, 1)", s["plateau_factor"])
    _check(_is_int(s["plateau_patience"]) and s["plateau_patience"] >= 0, "schedule.plateau_patience",
           "an int >= 0", s["plateau_patience"])
    _check(_is_num(s["min_lr"]) and 0 <= s["min_lr"] <= s["lr"], "schedule.min_lr", "a number in [0, lr]",
           s["min_lr"])
    _check(s["kind"] in ("plateau", "cosine"), "schedule.kind", "plateau or cosine", s["kind"])
    _check(s["select"] in ("best", "last"), "schedule.select", "best or last", s["select"])
    _check(s["optimizer"] in ("adam", "sgd"), "schedule.optimizer", "adam or sgd", s["optimizer"])
    _check(_is_num(s["momentum"]) and 0 <= s["momentum"] < 1, "schedule.momentum", "a number in [0, 1)",
           s["momentum"])
    default_momentum = DEFAULTS["schedule"]["momentum"]
    _check(s["optimizer"] == "sgd" or s["momentum"] == default_momentum, "schedule.momentum",
           f"its default {default_momentum} with schedule.optimizer='adam' (Adam has no momentum; set "
           f"schedule.optimizer='sgd')", s["momentum"])


def _validate_method(meth: Mapping, cfg: Mapping) -> None:
    """The ``method`` section ``meth`` of ``cfg``: stage, criterion, sampler, OLTR stage, partition (and
    its prior, checked by :func:`_check_prior` on the whole ``cfg``: it reads ``data.dataset``), the
    teacher / student keys, then ``method.kd``."""
    _check(meth["stage"] in STAGES, "method.stage", f"one of {', '.join(STAGES)}", meth["stage"])
    _check(isinstance(meth["criterion"], Mapping) and isinstance(meth["criterion"].get("name"), str),
           "method.criterion", "a dict with a 'name'", meth["criterion"])
    _check(meth["sampler"] in (None, "class_aware"), "method.sampler", "None or 'class_aware'", meth["sampler"])
    _check(meth["oltr_stage"] in (None, 1, 2), "method.oltr_stage", "None, 1 or 2", meth["oltr_stage"])
    if meth["oltr_stage"] == 2:
        _check(meth["init_from"] is not None, "method.init_from", "the OLTR stage-1 run folder", None)
    part = meth["partition"]
    _check(part["rule"] in RULES, "method.partition.rule", f"one of {', '.join(RULES)}", part["rule"])
    _check(part["mode"] in ("fixed", "quantile"), "method.partition.mode", "fixed or quantile", part["mode"])
    _check_prior(cfg)
    th = part["thresholds"]
    _check(isinstance(th, (list, tuple)) and len(th) == 2 and all(_is_num(t) and t > 0 for t in th)
           and th[0] > th[1], "method.partition.thresholds", "(head, tail) with head > tail > 0", th)
    if meth["stage"] == "teacher":
        _check(_is_int(meth["subset"]) and meth["subset"] >= 0, "method.subset", "a subset index >= 0",
               meth["subset"])
    _check(meth["teacher_images"] in ("all", "positive", "balanced"), "method.teacher_images",
           "all, positive or balanced",
           meth["teacher_images"])
    if meth["stage"] == "student":
        _check(isinstance(meth["teachers_dir"], str), "method.teachers_dir", "the teachers' run folder",
               meth["teachers_dir"])
    _check(meth["teacher_mode"] in ("bank", "online"), "method.teacher_mode", "bank or online",
           meth["teacher_mode"])
    _validate_teacher_variant(meth)
    _validate_kd(meth["kd"])


def _validate_teacher_variant(meth: Mapping) -> None:
    """``method.crossfit_k`` / ``crossfit_part`` (cross-fitted teachers) and ``method.teacher_init``."""
    k, part, init = meth["crossfit_k"], meth["crossfit_part"], meth["teacher_init"]
    _check(_is_int(k) and (k == 0 or k >= 2), "method.crossfit_k",
           "an int: 0 (teachers' logits on their own training images) or K >= 2 (K cross-fitted sets)", k)
    _check(init in (None, "erm"), "method.teacher_init", "None or 'erm'", init)
    if meth["stage"] == "teacher" and k:
        _check(_is_int(part) and 0 <= part < k, "method.crossfit_part", f"the part the teacher leaves out, an "
               f"int in [0, {k - 1}] (method.crossfit_k={k})", part)
    elif meth["stage"] == "teacher":
        _check(part is None, "method.crossfit_part", "None when method.crossfit_k is 0", part)
    if meth["stage"] == "teacher" and init == "erm":
        _check(isinstance(meth["init_from"], str), "method.init_from",
               "the ERM run folder whose best.pt initialises the teacher (method.teacher_init='erm')",
               meth["init_from"])
    if k and init == "erm":
        raise ConfigError("config keys 'method.crossfit_k' and 'method.teacher_init' must not be combined, got "
                          f"crossfit_k={k} with teacher_init='erm': the ERM run trained on every training image, "
                          f"so teachers started from it would not be out of fold")
    if meth["stage"] == "student" and k:
        _check(meth["teacher_mode"] == "bank", "method.teacher_mode", f"'bank' with method.crossfit_k={k} (each "
               f"training image's logits come from the set that left it out)", meth["teacher_mode"])


def _validate_kd(kd: Mapping) -> None:
    """``method.kd``: temperature, delta, order, KD weight."""
    _check(_is_num(kd["temperature"]) and kd["temperature"] > 0, "method.kd.temperature", "a number > 0",
           kd["temperature"])
    _check(_is_num(kd["delta"]) and 0 < kd["delta"] < 1, "method.kd.delta", "a number in (0, 1)", kd["delta"])
    _check(kd["order"] in ("student_teacher", "teacher_student"), "method.kd.order",
           "student_teacher or teacher_student", kd["order"])
    _check(_is_num(kd["kd_weight"]) and kd["kd_weight"] >= 0, "method.kd.kd_weight", "a number >= 0",
           kd["kd_weight"])


def _validate_run(r: Mapping) -> None:
    """The ``run`` section: device, AMP, seed, SyncBN, checkpoint / log intervals, step cap."""
    _check(r["device"] in ("auto", "cpu", "cuda"), "run.device", "auto, cpu or cuda", r["device"])
    _check(r["amp"] in ("auto", "bf16", "none"), "run.amp", "auto, bf16 or none", r["amp"])
    _check(_is_int(r["seed"]), "run.seed", "an int", r["seed"])
    _check(isinstance(r["sync_bn"], bool), "run.sync_bn", "True or False", r["sync_bn"])
    for key in ("checkpoint_every",):
        _check(_is_int(r[key]) and r[key] >= 0, f"run.{key}", "an int >= 0", r[key])
    _check(_is_int(r["log_every"]) and r["log_every"] >= 1, "run.log_every", "an int >= 1", r["log_every"])
    msps = r["max_steps_per_epoch"]
    _check(msps is None or (_is_int(msps) and msps >= 1), "run.max_steps_per_epoch", "None or an int >= 1", msps)


def validate(cfg: Mapping) -> None:
    """Check types and ranges of every key that the recipes read; raise :class:`ConfigError`.

    The sections are checked in this order, the first bad key raising: data, model, schedule,
    method (with its prior and ``method.kd``), run.
    """
    d, m, s, meth, r = cfg["data"], cfg["model"], cfg["schedule"], cfg["method"], cfg["run"]
    _validate_data(d)
    _validate_model(m)
    _validate_schedule(s)
    _validate_method(meth, cfg)
    _validate_run(r)
