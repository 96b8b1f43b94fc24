"""The long-tail baselines of the paper's Table 3, multi-label, each a function plus an ``nn.Module``.

Every criterion follows the loss contract of ``rskd_loss`` (logits and multi-hot targets (N, C),
``reduction='mean' | 'sum' | 'none'``) and becomes "RSKD + X" in one line::

    WeightedSubsetKDLoss(DBLoss(class_counts, num_images), num_classes=C)
"""
from .asl import AsymmetricLoss, asymmetric_loss
from .bce import MultiLabelBCELoss, bce_loss
from .db_loss import DB_PRESETS, DBLoss, db_bias, db_loss
from .focal import FocalLoss, sigmoid_focal_loss
from .ldam import LDAMLoss, NormedLinear, ldam_loss, ldam_margins
from .oltr import OLTRHead, OLTRLoss, OLTROutput, oltr_loss
from .registry import COUNT_CRITERIA, available_criteria, build_criterion
from .resample import OLTR_NUM_SAMPLES_CLS, ClassAwareSampler, DistributedClassAwareSampler
from .reweight import REWEIGHT_MODES, ReweightedBCE, class_weights, reweighted_bce_loss

__all__ = [
    "bce_loss", "MultiLabelBCELoss",
    "sigmoid_focal_loss", "FocalLoss",
    "asymmetric_loss", "AsymmetricLoss",
    "class_weights", "reweighted_bce_loss", "ReweightedBCE", "REWEIGHT_MODES",
    "ldam_margins", "ldam_loss", "LDAMLoss", "NormedLinear",
    "db_bias", "db_loss", "DBLoss", "DB_PRESETS",
    "ClassAwareSampler", "DistributedClassAwareSampler",
    "OLTRHead", "OLTRLoss", "OLTROutput", "oltr_loss", "OLTR_NUM_SAMPLES_CLS",
    "build_criterion", "available_criteria", "COUNT_CRITERIA",
]
