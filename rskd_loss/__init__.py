"""rskd_loss: Relational Subsets Knowledge Distillation (Ju et al., MICCAI 2021) as plug-in PyTorch losses."""
from .kd import KDLossParts, WeightedSubsetKDLoss, binary_kd_loss
from .weights import KDWeightSchedule, kd_weights

__version__ = "0.1.0.dev0"

__all__ = [
    "binary_kd_loss",
    "WeightedSubsetKDLoss",
    "KDLossParts",
    "KDWeightSchedule",
    "kd_weights",
]
