# Profile "cpu_pretrained_v2": the benchmark-v2 sweep on 2 CPU cores. Synthetic fundus v2 (tail classes
# separable from the head, hard by scarcity; docs/results/synthetic_v2/learnability.md), 12,000 images of
# 64 px at imbalance ratio 150, 4-fold cross-validation; EfficientNet-Lite0 (ImageNet) with stages 0-7
# frozen and cached once per data set (model.cache_trunk), so a run trains the head conv, its BatchNorm
# and the classifier on cached features; a fixed cosine schedule and the last epoch tested, so that no
# method's own validation loss or a handful of rare validation positives steer its schedule or epoch.
# Every value below was chosen on a separate calibration draw (generator seed 1, never used for results)
# before any RSKD run: docs/results/synthetic_v2/calibration.md.
_base_ = ["./cpu_pretrained.py"]

_epochs = 20            # ERM's tail mAP on the calibration draw: 28.7 at 10 epochs, 34.2 at 20 (in the
                        # 15-40 target), 1.2 s an epoch on the cache
_lr = 1e-3              # Adam; SGD 0.1 (momentum 0.9) gave ERM a lower tail (26.1) and lowered focal's
_freeze = 8             # stem + the 7 MBConv stages frozen; freeze 7 gave ERM's tail 51.6 (above the target)
                        # at 5x the time, freeze 5-6 (cpu_pretrained) about 64

data = dict(
    root="data/synthetic_v2",
    synthetic=dict(seed=0, num_images=12000, image_size=64, imbalance_ratio=150.0, version=2),
    trunk_views=8,      # view 0 = the evaluation input, views 1-7 = the training augmentation, cached
)
model = dict(freeze=_freeze, cache_trunk=True)
schedule = dict(epochs=_epochs, lr=_lr, kind="cosine", select="last", min_lr=0.0)
method = dict(
    # head / medium / tail = the tertiles of the fold's training counts: the fixed (100, 20) would leave no
    # tail class at 12,000 images; the partition rules use the same cuts
    partition=dict(mode="quantile"),
    # each row's own choices, made on the calibration draw with the same budget (<= 4 settings a row);
    # they apply to the row X and to "Ours + X" alike
    criterion_settings=dict(
        focal=dict(alpha=None, gamma=1.0),  # of (0.25, 2), (none, 2), (none, 1), (0.75, 2)
        ldam=dict(drw_epoch=16),            # deferred re-weighting at 4/5 of the schedule (LDAM-DRW: 160/200)
        db=dict(focal=False),               # preset coco; of coco, voc, coco without its focal term, coco gamma 1
    ),
)
