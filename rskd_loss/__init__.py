"""rskd_loss: Relational Subsets Knowledge Distillation (Ju et al., MICCAI 2021) as plug-in PyTorch losses.

Data flows one way: data set -> :class:`SubsetPartitioner` -> teachers (:class:`SubsetTeachers`, or
their logits cached in a :class:`TeacherLogitBank`) -> :class:`WeightedSubsetKDLoss` around any base
criterion -> per-class AP (:mod:`rskd_loss.metrics`) -> :meth:`WeightedSubsetKDLoss.update_weights`.
:mod:`rskd_loss.workflow` puts these steps into a training loop of your own. Every error raised on
purpose (a bad prior, a failed write) is a :class:`RSKDError`: one ``except`` catches them all.
"""
from .errors import RSKDError
from .fileio import file_sha256
from .kd import KDLossParts, WeightedSubsetKDLoss, binary_kd_loss
from .partition import Partition, SubsetPartitioner, TeacherView
from .teachers import CrossFitTeachers, SubsetTeachers, TeacherLogitBank
from .weights import KDWeightSchedule, kd_weights
from .workflow import (
    IndexedDataset,
    KDWeightUpdater,
    TeacherViewDataset,
    build_bank,
    crossfit_parts,
    parts_except,
    teacher_average_precision,
    teacher_datasets,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "RSKDError",
    "binary_kd_loss",
    "WeightedSubsetKDLoss",
    "KDLossParts",
    "KDWeightSchedule",
    "kd_weights",
    "SubsetPartitioner",
    "Partition",
    "TeacherView",
    "SubsetTeachers",
    "TeacherLogitBank",
    "CrossFitTeachers",
    "file_sha256",
    "IndexedDataset",
    "TeacherViewDataset",
    "teacher_datasets",
    "build_bank",
    "crossfit_parts",
    "parts_except",
    "teacher_average_precision",
    "KDWeightUpdater",
]
