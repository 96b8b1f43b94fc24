# Table 3, "Focal Loss [8]": sigmoid focal loss (baselines/focal.py, FocalLoss) with alpha 0.25 and
# gamma 2, the values of Lin et al., ICCV 2017 (Sec. 5.1) and the defaults of torchvision
# torchvision/ops/focal_loss.py sigmoid_focal_loss.
_base_ = ["./erm.py"]

method = dict(
    name="focal",
    criterion=dict(_delete_=True, name="focal", alpha=0.25, gamma=2.0),
)
