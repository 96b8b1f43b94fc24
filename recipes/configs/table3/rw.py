# Table 3, "RW": BCE with per-class weights w_k proportional to 1 / n_k, normalised to sum to C
# (baselines/reweight.py, ReweightedBCE; mode "inverse" = wutong16/DistributionBalancedLoss
# mllt/models/losses/resample_loss.py reweight_func='inv'). No deferral: re-weighted from epoch 0
# (drw_epoch=0; drw_epoch=None would mean never re-weighted, as for LDAM).
_base_ = ["./erm.py"]

method = dict(
    name="rw",
    criterion=dict(_delete_=True, name="rw", mode="inverse", drw_epoch=0),
)
