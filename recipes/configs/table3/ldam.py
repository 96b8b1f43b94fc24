# Table 3, "LDAM [1]": label-distribution-aware margins, multi-label (baselines/ldam.py, LDAMLoss) on a
# cosine-normalised head (model.head="normed", the NormedLinear of kaidic/LDAM-DRW models/resnet_cifar.py).
# max_m 0.5 and s 30: kaidic/LDAM-DRW cifar_train.py (LDAMLoss(cls_num_list, max_m=0.5, s=30, ...)).
# Table 3 names LDAM, not LDAM-DRW: no deferred re-weighting (drw_epoch=None).
_base_ = ["./erm.py"]

model = dict(head="normed")
method = dict(
    name="ldam",
    criterion=dict(_delete_=True, name="ldam", max_m=0.5, s=30.0, drw_epoch=None),
)
