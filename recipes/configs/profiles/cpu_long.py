# Profile "cpu_long": CPU, the synthetic benchmark at its default size (4000 images of 64 px,
# 16 classes: recipes/data/synthetic.py DEFAULT_*), a wider small CNN, more epochs.
# Goal: one sweep of Table 3 (one split, one seed) in under an hour on 2 CPU cores;
# docs/experiments/2026-11-27-cpu-long-three-seeds.md: ERM against the three "Ours" rows, --seeds 0 1 2.
_base_ = ["./demo.py"]

# --- the time knobs (measured: docs/experiments/2026-11-27-demo-sweep-times.md, "The cpu_long profile") ---
_epochs = 12
_width = 16                       # as the demo: width 32 costs about 3x the time for the same epochs
# ------------------------------------------------------------------------------------------------

data = dict(
    root="data/synthetic",        # DEFAULTS' folder: the default-size generation
    synthetic=dict(seed=0, num_images=None, image_size=None, num_classes=None),  # None: generator defaults
    scheme="holdout",             # one split, several seeds (run.seed) for the spread
)
model = dict(width=_width)
schedule = dict(epochs=_epochs, plateau_patience=2)
