"""Resize-once cache: border crop on a known field, output sizes, idempotence, CSV unchanged."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from recipes.data.cache import (
    build_cache,
    crop_to_field,
    find_field_box,
    main,
    resize_short_side,
)
from recipes.data.csv_dataset import MultiLabelCSVDataset


def _disc_image(h, w, cy, cx, r, value=(200, 90, 40)):
    """Black image with a filled disc: pixel (i, j) is inside iff (i - cy)^2 + (j - cx)^2 <= r^2."""
    ii, jj = np.mgrid[0:h, 0:w]
    inside = (ii - cy) ** 2 + (jj - cx) ** 2 <= r * r
    arr = np.zeros((h, w, 3), np.uint8)
    arr[inside] = value
    return arr


def test_field_box_and_square_crop_of_a_known_field():
    # disc centre (row 45, col 70), radius 35: rows 10..80 and cols 35..105 hold field pixels, but
    # the poles (row 10, row 80, col 35, col 105) hold only one each; a row/col needs >= 2 (and
    # >= 1 % of its length: 1.4 px for a row of 140, 1 px for a col of 100) -> rows 11..79, cols 36..104
    arr = _disc_image(100, 140, 45, 70, 35)
    gray = np.asarray(Image.fromarray(arr).convert("L"))
    assert find_field_box(gray) == (11, 36, 80, 105)  # end-exclusive
    out = crop_to_field(Image.fromarray(arr))
    # side = max(80 - 11, 105 - 36) = 69; (x0, y0) = ((36 + 105 - 69) // 2, (11 + 80 - 69) // 2) = (36, 11)
    assert out.size == (69, 69)
    np.testing.assert_array_equal(np.asarray(out), arr[11:80, 36:105])


def test_field_cut_at_top_and_bottom_is_padded_black_and_centred():
    # the same disc in a 60-row image centred on row 30: every row holds field; cols 36..104 as above
    arr = _disc_image(60, 140, 30, 70, 35)
    out = np.asarray(crop_to_field(Image.fromarray(arr)))
    # side = max(60, 69) = 69; y0 = (0 + 60 - 69) // 2 = -5 -> 5 black rows on top, 64 - 60 = 4 below
    assert out.shape == (69, 69, 3)
    assert out[:5].max() == 0 and out[-4:].max() == 0
    np.testing.assert_array_equal(out[5:65], arr[:, 36:105])


def test_noise_in_the_border_does_not_widen_the_box():
    arr = _disc_image(100, 140, 45, 70, 35)
    arr[2, 3] = arr[97, 137] = (255, 255, 255)  # isolated hot pixels
    arr[5, 120] = (30, 30, 30)  # a faint speck
    gray = np.asarray(Image.fromarray(arr).convert("L"))
    assert find_field_box(gray) == (11, 36, 80, 105)
    with pytest.raises(ValueError, match=r"expected a bright field \(grey level > 7\), got none"):
        find_field_box(np.full((20, 20), 5, np.uint8))


def test_resize_short_side():
    im = Image.new("RGB", (300, 200))
    assert resize_short_side(im, 100).size == (150, 100)
    assert resize_short_side(Image.new("RGB", (50, 80)), 100).size == (100, 160)


def _dataset(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shapes = {"a.png": (90, 120), "b.png": (60, 140), "c.png": (200, 200)}  # (h, w)
    for name, (h, w) in shapes.items():
        Image.fromarray(_disc_image(h, w, h // 2, w // 2, min(h, w) // 2 - 2)).save(src / name)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfimage,A,B\r\na.png,1,0\r\nb.png,0,1\r\nc.png,1,1\r\n")
    return src, csv_path


def test_build_cache_sizes_csv_idempotence(tmp_path):
    src, csv_path = _dataset(tmp_path)
    out = tmp_path / "cache"
    rep = build_cache(src, csv_path, out, size=32, workers=1, progress=False)
    assert (rep.written, rep.skipped, rep.failed) == (3, 0, [])
    for name in ("a.png", "b.png", "c.png"):
        with Image.open(out / name) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    assert (out / "labels.csv").read_bytes() == csv_path.read_bytes()  # CSV byte for byte
    a = MultiLabelCSVDataset(csv_path, src)
    b = MultiLabelCSVDataset(out / "labels.csv", out)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # second run: everything up to date
    rep = build_cache(src, csv_path, out, size=32, workers=1, progress=False)
    assert (rep.written, rep.skipped) == (0, 3)
    # a source newer than its cached copy is redone
    later = time.time() + 10
    os.utime(src / "b.png", (later, later))
    rep = build_cache(src, csv_path, out, size=32, workers=1, progress=False)
    assert (rep.written, rep.skipped) == (1, 2)
    # other settings rebuild everything (two processes)
    rep = build_cache(src, csv_path, out, size=24, workers=2, progress=False)
    assert (rep.written, rep.skipped) == (3, 0)
    with Image.open(out / "b.png") as im:
        assert im.size == (24, 24)


def test_jpeg_renames_files_and_only_the_image_column(tmp_path):
    src, csv_path = _dataset(tmp_path)
    out = tmp_path / "jpg"
    build_cache(src, csv_path, out, size=32, fmt="jpeg", workers=1, progress=False)
    assert sorted(p.name for p in out.glob("*.jpg")) == ["a.jpg", "b.jpg", "c.jpg"]
    assert (out / "labels.csv").read_text() == "image,A,B\na.jpg,1,0\nb.jpg,0,1\nc.jpg,1,1\n"
    with Image.open(out / "a.jpg") as im:
        assert im.format == "JPEG"


def test_failures_are_collected_and_block_the_csv(tmp_path, capsys):
    src, csv_path = _dataset(tmp_path)
    (src / "b.png").write_bytes(b"broken")
    Image.new("RGB", (40, 40)).save(src / "c.png")  # all black: no field
    with pytest.raises(RuntimeError, match=r"2 of 3 images could not be cached.*b\.png.*c\.png.*no"):
        build_cache(src, csv_path, tmp_path / "out", size=16, workers=1, progress=True)
    assert not (tmp_path / "out" / "labels.csv").exists()
    assert "[cache] 3/3" in capsys.readouterr().err


def test_bad_arguments(tmp_path):
    src, csv_path = _dataset(tmp_path)
    with pytest.raises(ValueError, match="size must be a positive int"):
        build_cache(src, csv_path, tmp_path / "o", size=0)
    with pytest.raises(ValueError, match="fmt must be one of"):
        build_cache(src, csv_path, tmp_path / "o", fmt="webp")
    with pytest.raises(ValueError, match="out_dir must differ from src_dir"):
        build_cache(src, csv_path, src)
    with pytest.raises(FileNotFoundError, match="labels CSV not found"):
        build_cache(src, tmp_path / "x.csv", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="source image folder not found"):
        build_cache(tmp_path / "nope", csv_path, tmp_path / "o")
    with pytest.raises(ValueError, match="expected an image column 'file'"):
        build_cache(src, csv_path, tmp_path / "o", image_column="file")


def test_cli(tmp_path, capsys):
    src, csv_path = _dataset(tmp_path)
    assert main(["--src", str(src), "--csv", str(csv_path), "--out", str(tmp_path / "c"),
                 "--size", "20", "--workers", "1"]) == 0
    assert "3 written" in capsys.readouterr().out
    with Image.open(tmp_path / "c" / "c.png") as im:
        assert im.size == (20, 20)


def test_full_disk_stops_the_cache_with_one_line_and_no_csv(tmp_path, monkeypatch):
    import errno

    from recipes.data import cache
    from rskd_loss.fileio import DiskWriteError, disk_write_error

    src, csv_path = _dataset(tmp_path)
    out = tmp_path / "out"
    calls = []

    def full(path, data, **kw):
        calls.append(path)
        raise disk_write_error(OSError(errno.ENOSPC, "No space left on device"), path)

    monkeypatch.setattr(cache, "atomic_write_bytes", full)
    with pytest.raises(DiskWriteError, match=r"cannot write .*out/a\.png: disk full \(ENOSPC\)") as info:
        build_cache(src, csv_path, out, size=16, workers=1, progress=False)
    assert info.value.errno == errno.ENOSPC and len(calls) == 1  # stopped at the first image
    assert not (out / "labels.csv").exists()
