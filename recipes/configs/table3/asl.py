# "ASL" (not a row of the paper's Table 3): asymmetric loss (baselines/asl.py, AsymmetricLoss) with
# gamma_neg 4, gamma_pos 0 and clip 0.05, the criterion of the official training script
# (Alibaba-MIIL/ASL train.py: AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05,
# disable_torch_grad_focal_loss=True), i.e. detach_focusing=True here).
_base_ = ["./erm.py"]

method = dict(
    name="asl",
    criterion=dict(_delete_=True, name="asl", gamma_neg=4.0, gamma_pos=0.0, clip=0.05, detach_focusing=True),
)
