# Table 3, "DB Loss [12]": Distribution-Balanced loss (baselines/db_loss.py, DBLoss), preset "coco":
# wutong16/DistributionBalancedLoss configs/coco/LT_resnet50_pfc_DB.py (the long-tailed COCO setting;
# the VOC preset differs in mu 0.3 and lambda 5).
_base_ = ["./erm.py"]

method = dict(
    name="db",
    criterion=dict(_delete_=True, name="db", preset="coco"),
)
