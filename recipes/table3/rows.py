"""The rows of Tables 3 and 4 and the sweep folder's layout: the bottom layer of ``recipes/table3/``.

Every other module of the package imports from here, and this one from none of them. So
:class:`SweepError` lives here too: the job graph, the launchers and the collector all raise it.

Folder layout under the sweep's ``--out`` (default ``runs/table3/<profile>``)::

    fold<k>/seed<s>/<row>/                 erm, rs, ..., ours_shot, kd_t3, ... (result.json when done)
    fold<k>/seed<s>/<row>-<rule>/          the "Ours + X" rows (ours_db-shot, ...): the rule is part
                                           of the name, so another --ours-rule never reuses them
    fold<k>/seed<s>/oltr_stage1/
    fold<k>/seed<s>/teachers_<rule>/       partition.json, subset0/ ... subset<k-1>/ (teacher runs)
    fold<k>/seed<s>/teachers_<rule>_xf<K>/ cross-fitted (method.crossfit_k=K): part0/ ... part<K-1>/, each
                                           partition.json and subset<j>/ (trained without part k)
    fold<k>/seed<s>/teachers_<rule>_erminit/  method.teacher_init='erm': started from fold<k>/seed<s>/erm
    records/fold<k>/seed<s>/<run>/         record.json + record.npz of every finished run (committable)
    table3.md table3.csv table4.md table4.csv provenance.json figures/ logs/ sweep.json
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from recipes.config import CONFIG_DIR, RULES
from rskd_loss.errors import RSKDError

__all__ = ["Row", "ROWS", "TABLE3_ROWS", "TABLE4_ROWS", "TEACHER_VARIANT_ROWS",
           "TABLES", "TABLE_LABELS", "GROUPS", "OURS", "SweepError",
           "TEACHER_CONFIG", "OLTR_STAGE1_CONFIG", "run_dir_name", "teacher_rule", "cell_dir", "teachers_dir",
           "config_path"]

GROUPS = ("head", "medium", "tail", "total")
OURS = "<ours-rule>"  # placeholder rule of the "Ours + X" rows: the sweep's --ours-rule


class SweepError(RSKDError, RuntimeError):
    """The sweep cannot go on as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class Row:
    """One table row: its method config and what it needs before it can run.

    ``rule``: ``None`` (no teachers), a rule name (the teachers of that rule), or :data:`OURS`
    (the sweep's ``--ours-rule``). ``oltr_init``: initialised from the OLTR stage-1 run.
    """

    name: str
    label: str
    config: str
    rule: str | None = None
    oltr_init: bool = False


ROWS: dict[str, Row] = {r.name: r for r in (
    Row("erm", "ERM", "table3/erm.py"),
    Row("rs", "RS", "table3/rs.py"),
    Row("rw", "RW", "table3/rw.py"),
    Row("focal", "Focal Loss", "table3/focal.py"),
    Row("oltr", "OLTR", "table3/oltr_stage2.py", oltr_init=True),
    Row("ldam", "LDAM", "table3/ldam.py"),
    Row("db", "DB Loss", "table3/db.py"),
    Row("asl", "ASL (not in the paper)", "table3/asl.py"),
    Row("ours_shot", "Ours (shot-based)", "table3/ours_shot.py", rule="shot"),
    Row("ours_region", "Ours (region-based)", "table3/ours_region.py", rule="region"),
    Row("ours_feature", "Ours (feature-based)", "table3/ours_feature.py", rule="feature"),
    Row("ours_db", "Ours + DB Loss", "table3/ours_db.py", rule=OURS),
    Row("ours_oltr", "Ours + OLTR", "table3/ours_oltr.py", rule=OURS, oltr_init=True),
    Row("ours_ldam", "Ours + LDAM", "table3/ours_ldam.py", rule=OURS),
    Row("ours_focal", "Ours + Focal Loss", "table3/ours_focal.py", rule=OURS),
    Row("ours_asl", "Ours + ASL", "table3/ours_asl.py", rule=OURS),
    Row("ours_shot_xf", "Ours (shot-based), cross-fitted teachers", "table3/ours_shot_xf.py", rule="shot"),
    Row("ours_shot_erminit", "Ours (shot-based), ERM-initialised teachers", "table3/ours_shot_erminit.py",
        rule="shot"),
    Row("kd_t3", "KD (T = 3)", "table4/kd_t3.py", rule="feature"),
    Row("kd_t10", "KD (T = 10)", "table4/kd_t10.py", rule="feature"),
    Row("kd_t20", "KD (T = 20)", "table4/kd_t20.py", rule="feature"),
)}

#: the paper's Table 3 row order
TABLE3_ROWS: tuple[str, ...] = ("erm", "rs", "rw", "focal", "oltr", "ldam", "db", "asl", "ours_shot", "ours_region",
                                "ours_feature", "ours_db", "ours_oltr", "ours_ldam", "ours_focal", "ours_asl")

#: not in the paper, so in neither table's default rows (select them with --rows): the shot rule's student
#: distilling cross-fitted teachers (out-of-fold bank logits), or teachers started from the fold's ERM run
TEACHER_VARIANT_ROWS: tuple[str, ...] = ("ours_shot_xf", "ours_shot_erminit")

#: the paper's Table 4 row order; "Weighted" is Table 3's ours_feature run, reused
TABLE4_ROWS: tuple[str, ...] = ("erm", "kd_t3", "kd_t10", "kd_t20", "ours_feature")

TABLES: dict[int, tuple[str, ...]] = {3: TABLE3_ROWS, 4: TABLE4_ROWS}

TABLE_LABELS: dict[int, dict[str, str]] = {4: {"ours_feature": "Weighted"}}

TEACHER_CONFIG = {rule: f"table3/teacher_{rule}.py" for rule in RULES}
OLTR_STAGE1_CONFIG = "table3/oltr_stage1.py"



def run_dir_name(row: str, ours_rule: str = "shot") -> str:
    """Folder name of a row's run: ``erm``, ``ours_shot``, ``ours_db-shot`` (the "Ours + X" rows)."""
    spec = ROWS[row]
    return f"{row}-{ours_rule}" if spec.rule == OURS else row


def teacher_rule(row: str, ours_rule: str = "shot") -> str | None:
    """The rule of the teachers a row distils (``ours_rule`` for the "Ours + X" rows); ``None``: no teachers."""
    rule = ROWS[row].rule
    return ours_rule if rule == OURS else rule


def cell_dir(out: str | os.PathLike[str], fold: int, seed: int) -> Path:
    """Folder of one (fold, seed) cell: every run of that fold and seed is below it."""
    return Path(out) / f"fold{fold}" / f"seed{seed}"


def teachers_dir(out: str | os.PathLike[str], fold: int, seed: int, rule: str, *, crossfit_k: int = 0,
                 teacher_init: str | None = None) -> Path:
    """Folder of one rule's teachers (``partition.json``, ``subset<j>/``) for a fold and seed; a variant
    (``crossfit_k`` >= 2: ``_xf<K>``, with ``part<k>/`` below; ``teacher_init='erm'``: ``_erminit``) has
    its own folder, so no student ever reads another variant's teachers."""
    name = f"teachers_{rule}" + (f"_xf{crossfit_k}" if crossfit_k else "") + (f"_{teacher_init}init"
                                                                              if teacher_init else "")
    return cell_dir(out, fold, seed) / name


def config_path(rel: str) -> Path:
    """A method config named relative to ``recipes/configs`` (``table3/erm.py``)."""
    return CONFIG_DIR / rel
