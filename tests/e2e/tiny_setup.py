"""The tiny CPU profile of the whole-run tests: 240 synthetic images of 32 px, 8 classes, a 4-channel
small CNN, one epoch of two steps. A run takes seconds; it checks wiring, not learning."""
from __future__ import annotations

from pathlib import Path

TINY_PROFILE = (
    "data = dict(root=%r, synthetic=dict(seed=0, num_images=240, image_size=32, num_classes=8),\n"
    "            scheme='holdout', image_size=32, batch_size=16, eval_batch_size=64, num_workers=0,\n"
    "            preload=True)\n"
    "model = dict(name='small_cnn', pretrained=False, width=4)\n"
    "schedule = dict(epochs=1)\n"
    "run = dict(device='cpu', max_steps_per_epoch=2)\n"
    "method = dict(partition=dict(mode='quantile', prior='synthetic'))\n"
)


def write_tiny_profile(folder: Path) -> Path:
    """``folder/tiny.py``, its data generated on first use into ``folder/data``; returns the profile's path."""
    profile = folder / "tiny.py"
    profile.write_text(TINY_PROFILE % str(folder / "data"))
    return profile
