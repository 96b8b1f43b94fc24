"""Benchmark: decoding fundus images with PIL against mmcv (mmcv-lite, OpenCV underneath).

Does mmcv's image I/O decode faster than PIL? The recipes would use it where it does. Both decoders read the same
files in one process, interleaved; the median per image is reported for a small PNG (the synthetic
benchmark at 64 px) and a large JPEG (a synthetic fundus upscaled to 2048 px, the size of a real
fundus photograph). A benchmark, not a test.

    python -m recipes.benchmark.image_decode
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def pil_rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def mmcv_rgb(path: str) -> np.ndarray:
    import mmcv

    return mmcv.imread(path, channel_order="rgb")


def main() -> dict:
    import mmcv  # noqa: F401  (fail early when the recipes extra is missing)

    from recipes.data.synthetic import render_fundus

    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    small = render_fundus(np.array([1] + [0] * 11), rng, image_size=64)
    Image.fromarray(np.asarray(small)).save(tmp / "small.png")
    big = Image.fromarray(np.asarray(small)).resize((2048, 2048), Image.BICUBIC)
    big.save(tmp / "big.jpg", quality=95)
    assert np.array_equal(pil_rgb(str(tmp / "small.png")), mmcv_rgb(str(tmp / "small.png")))
    results = {}
    for name, reps in (("small.png", 400), ("big.jpg", 20)):
        path = str(tmp / name)
        times = {"pil": [], "mmcv": []}
        for _ in range(reps):
            for key, fn in (("pil", pil_rgb), ("mmcv", mmcv_rgb)):
                t0 = time.perf_counter()
                fn(path)
                times[key].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        pil, mm = med["pil"], med["mmcv"]
        results[name] = {"pil_ms": pil * 1e3, "mmcv_ms": mm * 1e3, "pil_over_mmcv": pil / mm}
        print(f"{name:<10} PIL {pil * 1e3:8.3f} ms   mmcv {mm * 1e3:8.3f} ms   PIL/mmcv {pil / mm:.2f}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
