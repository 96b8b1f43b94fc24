# Table 3, "RS [10]": BCE with multi-label class-aware re-sampling (baselines/resample.py,
# ClassAwareSampler: pick a class uniformly, then images positive for it).
_base_ = ["./erm.py"]

method = dict(
    name="rs",
    sampler="class_aware",
    # images per class pick: 3, the multi-label reference implementation's default
    # (wutong16/DistributionBalancedLoss mllt/datasets/loader/sampler.py, ClassAwareSampler.__init__),
    # as baselines/resample.py documents
    num_samples_cls=3,
)
