"""The synthetic long-tailed fundus benchmark: determinism, long tail, prior, round trip."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recipes.data import synthetic as synthetic_module
from recipes.data.csv_dataset import MultiLabelCSVDataset
from recipes.data.synthetic import (
    CATALOGUE,
    DEFAULT_NUM_CLASSES,
    LESION10_LABELS_PER_IMAGE,
    MOTIFS,
    REGIONS,
    generate_synthetic,
    generation_differences,
    main,
    render_fundus,
    synthetic_labels,
    synthetic_prior,
    target_class_counts,
)

SMALL = dict(num_images=48, num_classes=6, imbalance_ratio=8.0, image_size=32, workers=1)
SHIPPED = Path(__file__).resolve().parents[2] / "rskd_loss" / "priors" / "synthetic.json"


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path):
    a = generate_synthetic(tmp_path / "a", seed=3, **SMALL)
    b = generate_synthetic(tmp_path / "b", seed=3, **{**SMALL, "workers": 2})  # workers do not matter
    c = generate_synthetic(tmp_path / "c", seed=4, **SMALL)
    da, db, dc = _digests(a.out_dir), _digests(b.out_dir), _digests(c.out_dir)
    assert len(da) == 48 + 3  # images + labels.csv, prior.json, meta.json
    assert da == db
    assert da["labels.csv"] != dc["labels.csv"]
    differing = [k for k in da if k.startswith("images/") and da[k] != dc[k]]
    assert len(differing) == 48  # every image differs (geometry and texture are per seed)
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary file


def test_default_labels_follow_requested_long_tail():
    y = synthetic_labels()  # default size: 4000 images, 16 classes, ratio 150, labels only (fast)
    counts = y.sum(axis=0).astype(np.int64)
    assert y.shape == (4000, DEFAULT_NUM_CLASSES) and y.dtype == np.uint8
    np.testing.assert_array_equal(counts, target_class_counts())  # realised exactly
    assert (np.diff(counts) <= 0).all()  # non-increasing in column order
    assert counts[0] / counts[-1] >= 100
    # exponential: log-counts are close to a straight line (R^2 > 0.99)
    logc = np.log(counts)
    fit = np.polyval(np.polyfit(np.arange(16), logc, 1), np.arange(16))
    assert 1 - ((logc - fit) ** 2).sum() / ((logc - logc.mean()) ** 2).sum() > 0.99
    # labels per image: the Lesion-10 proportions (paper Table 2), every image labelled by default
    k = y.sum(axis=1).astype(np.int64)
    assert k.min() >= 1
    want = np.array(LESION10_LABELS_PER_IMAGE) / sum(LESION10_LABELS_PER_IMAGE) * 4000
    got = np.array([(k == 1).sum(), (k == 2).sum(), (k == 3).sum(), (k >= 4).sum()])
    assert np.abs(got - want).max() <= 1  # largest-remainder rounding
    # head classes accompany tail classes: most tail images (count < 20) carry another label too
    tail = np.flatnonzero(counts < 20)
    with_company = sum(int((y[y[:, c] == 1].sum(axis=1) > 1).sum()) for c in tail)
    assert with_company / counts[tail].sum() > 0.3
    # same seed, same labels; another seed, other labels with the same counts
    np.testing.assert_array_equal(synthetic_labels(seed=0), y)
    y1 = synthetic_labels(seed=1)
    assert not np.array_equal(y1, y) and (y1.sum(axis=0) == counts).all()


def test_target_counts_by_hand():
    # 10 images, 2 classes, ratio 4:
    # labels per image: weights (5929, 1569 + 321 + 52 = 1942) capped at 2 labels;
    #   10 * 5929 / 7871 = 7.53, 10 * 1942 / 7871 = 2.47 -> floors 7, 2, the spare 1 to .53 -> 8 x 1, 2 x 2
    # label slots = 8 + 2 * 2 = 12; class weights 4**0 = 1, 4**-1 = 0.25:
    #   12 * 0.8 = 9.6, 12 * 0.2 = 2.4 -> floors 9, 2, spare 1 to .6 -> (10, 2)
    assert target_class_counts(10, 2, imbalance_ratio=4).tolist() == [10, 2]
    y = synthetic_labels(10, 2, imbalance_ratio=4, seed=5)
    assert y.sum(axis=0).tolist() == [10, 2] and sorted(y.sum(axis=1).tolist()) == [1] * 8 + [2] * 2
    # normal_fraction: 30 % of 10 images get no label
    y = synthetic_labels(10, 2, imbalance_ratio=4, normal_fraction=0.3)
    assert (y.sum(axis=1) == 0).sum() == 3


def test_prior_covers_every_class_and_shipped_file_matches():
    from rskd_loss.priors import validate_prior

    prior = synthetic_prior()
    validate_prior(prior, source="synthetic_prior()")
    assert prior["classes"] == [c.name for c in CATALOGUE[:DEFAULT_NUM_CLASSES]]
    for rule, attr, names in (("region", "region", REGIONS), ("feature", "motif", MOTIFS)):
        members = [m for g in prior[rule].values() for m in g]
        assert sorted(members) == sorted(prior["classes"])  # each class exactly once
        for c in CATALOGUE[:DEFAULT_NUM_CLASSES]:
            assert c.name in prior[rule][getattr(c, attr)]
        assert set(prior[rule]) <= set(names)
    # every motif recurs in >= 2 regions and every region holds >= 2 motifs (both relations exist)
    assert all(len(g) >= 2 for g in prior["feature"].values())
    assert all(len(g) >= 2 for g in prior["region"].values())
    assert json.loads(SHIPPED.read_text("utf-8")) == prior
    # small prefix: empty groups are left out, and it is still valid
    p4 = synthetic_prior(4)
    validate_prior(p4)
    assert "vessels" not in p4["region"]


def test_generation_round_trips_through_the_generic_loader(tmp_path):
    info = generate_synthetic(tmp_path / "d", seed=0, num_images=40, num_classes=DEFAULT_NUM_CLASSES,
                              imbalance_ratio=4.0, image_size=40, workers=1)
    ds = MultiLabelCSVDataset(info.csv_path, info.image_dir, empty_classes="error")
    assert ds.class_names == info.class_names
    np.testing.assert_array_equal(
        ds.targets, synthetic_labels(40, DEFAULT_NUM_CLASSES, imbalance_ratio=4.0, seed=0))
    assert tuple(ds.class_counts.tolist()) == info.class_counts
    img, target, index = ds[7]
    assert img.size == (40, 40) and index == 7 and target.shape == (DEFAULT_NUM_CLASSES,)
    # the prior written next to the data is the one of these classes (== shipped one: default C)
    assert json.loads(info.prior_path.read_text("utf-8")) == synthetic_prior(DEFAULT_NUM_CLASSES)
    meta = json.loads(info.meta_path.read_text("utf-8"))
    assert meta["seed"] == 0 and meta["version"] and meta["image_size"] == 40
    assert sum(meta["labels_per_image"].values()) == 40


def test_images_look_like_fundus_photographs():
    labels = np.zeros(DEFAULT_NUM_CLASSES, dtype=np.uint8)
    a = render_fundus(labels, np.random.default_rng(0), image_size=64).astype(int)
    assert a.shape == (64, 64, 3)
    assert a[:3, :3].max() == 0 and a[-3:, -3:].max() == 0  # black corners outside the field
    centre = a[16:48, 16:48].reshape(-1, 3)
    r, g, b = np.median(centre, axis=0)
    assert r > 90 and r > g > b  # orange-red field
    # a lesion class changes the image; the same rng state gives the same image
    with_lesion = labels.copy()
    with_lesion[0] = 1
    h = render_fundus(with_lesion, np.random.default_rng(0), image_size=64)
    assert not np.array_equal(h, a.astype(np.uint8))
    np.testing.assert_array_equal(render_fundus(labels, np.random.default_rng(0), image_size=64), a)


def test_reuse_regenerate_and_refuse(tmp_path):
    first = generate_synthetic(tmp_path / "d", seed=1, **SMALL)
    assert not first.reused
    again = generate_synthetic(tmp_path / "d", seed=1, **SMALL)
    assert again.reused
    smaller = generate_synthetic(tmp_path / "d", seed=1, **{**SMALL, "num_images": 30})
    assert not smaller.reused
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 30  # stale images removed
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no meta.json of this generator"):
        generate_synthetic(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(num_classes=1), ValueError, r"num_classes must be in \[2, 20\], got 1"),
    (dict(num_classes=21), ValueError, r"num_classes must be in \[2, 20\], got 21"),
    (dict(num_images=0), ValueError, "num_images must be >= 1"),
    (dict(num_images=10.5), TypeError, "num_images must be an int"),
    (dict(imbalance_ratio=0.5), ValueError, "imbalance_ratio must be in"),
    (dict(normal_fraction=1.5), ValueError, "normal_fraction must be in"),
    (dict(cooccurrence=-1.0), ValueError, "cooccurrence must be in"),
    (dict(seed=-1), ValueError, "seed must be >= 0"),
    (dict(version=3), ValueError, "version must be one of 1, 2, got 3"),
    (dict(version=2.0), TypeError, "version must be an int"),
    (dict(num_images=30, num_classes=16, imbalance_ratio=150.0), ValueError, "too small"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        synthetic_labels(**{"num_images": 200, "num_classes": 6, **kwargs})


def test_bad_generation_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"image_size must be in \[32, 1024\], got 16"):
        generate_synthetic(tmp_path / "x", **{**SMALL, "image_size": 16})
    with pytest.raises(ValueError, match="workers must be >= 1"):
        generate_synthetic(tmp_path / "x", **{**SMALL, "workers": 0})
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="out_dir must be a folder"):
        generate_synthetic(tmp_path / "file", **SMALL)


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cli"), "--num-images", "24", "--num-classes", "4",
                 "--imbalance-ratio", "5", "--image-size", "32", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "24 images, 4 classes" in out and "hemorrhage" in out
    with Image.open(tmp_path / "cli" / "images" / "syn_00000.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    assert main(["--out", str(tmp_path / "cli2"), "--num-images", "24", "--num-classes", "4",
                 "--imbalance-ratio", "1", "--image-size", "32", "--workers", "1", "--generator-version", "2"]) == 0
    assert json.loads((tmp_path / "cli2" / "meta.json").read_text("utf-8"))["version"] == "2"


# -- version 2 ---------------------------------------------------------------------------------
#: the content of a small version-1 generation (labels.csv, meta.json, prior.json and the decoded
#: pixels of every image), taken before version 2 was added: version 1 must stay as it was
V1_SMALL = dict(num_images=48, num_classes=6, imbalance_ratio=8.0, image_size=32, workers=1, seed=0)
V1_SMALL_SHA256 = "0191488e725e9f3492cf37067670d5ac82befd91c538d283ceb301b912592deb"


def _content_sha256(folder: Path) -> str:
    """One digest of every file's name and content, PNGs by their pixels (not the zlib stream)."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(p.relative_to(folder).as_posix().encode())
        if p.suffix == ".png":
            with Image.open(p) as im:
                h.update(np.asarray(im).tobytes())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()


def test_version_1_is_unchanged(tmp_path):
    assert _content_sha256(generate_synthetic(tmp_path / "v1", **V1_SMALL).out_dir) == V1_SMALL_SHA256
    explicit = generate_synthetic(tmp_path / "v1b", **V1_SMALL, version=1)
    assert _content_sha256(explicit.out_dir) == V1_SMALL_SHA256


def test_version_2_is_deterministic_and_recorded(tmp_path):
    a = generate_synthetic(tmp_path / "a", **V1_SMALL, version=2)
    b = generate_synthetic(tmp_path / "b", **{**V1_SMALL, "workers": 2}, version=2)
    one = generate_synthetic(tmp_path / "one", **V1_SMALL)
    da, db, d1 = _digests(a.out_dir), _digests(b.out_dir), _digests(one.out_dir)
    assert da == db
    meta = json.loads(a.meta_path.read_text("utf-8"))
    assert meta["version"] == "2" and json.loads(one.meta_path.read_text("utf-8"))["version"] == "1"
    assert "generator version 2" in json.loads(a.prior_path.read_text("utf-8"))["sources"][0]
    assert any(da[k] != d1[k] for k in da if k.startswith("images/"))
    # a version-2 folder is reused for version 2 only; the recipes compare meta.json's "1"/"2" with ints
    assert generate_synthetic(tmp_path / "a", **V1_SMALL, version=2).reused
    assert generation_differences(meta, {"version": 2}) == []
    assert generation_differences(meta, {"version": None}) == [("version", "2", "1")]


def test_version_2_labels_as_documented():
    y = synthetic_labels(12000, 16, imbalance_ratio=150.0, version=2)
    counts = y.sum(axis=0)
    np.testing.assert_array_equal(counts, target_class_counts(12000, 16, imbalance_ratio=150.0))
    assert counts.min() == 30 and counts[0] / counts[-1] >= 100  # module doc: 4454 ... 30
    k = y.sum(axis=1)
    want = np.array(LESION10_LABELS_PER_IMAGE) / sum(LESION10_LABELS_PER_IMAGE) * 12000
    got = np.array([(k == 1).sum(), (k == 2).sum(), (k == 3).sum(), (k >= 4).sum()])
    assert k.min() == 1 and np.abs(got - want).max() <= 1
    tail = np.flatnonzero(counts < 100)
    with_company = sum(int((y[y[:, c] == 1].sum(axis=1) > 1).sum()) for c in tail)
    assert with_company / counts[tail].sum() > 0.3  # head classes still accompany the tail
    np.testing.assert_array_equal(synthetic_labels(12000, 16, imbalance_ratio=150.0, version=2), y)


@pytest.mark.parametrize("num_images, ratio", [(4000, 2.0), (12000, 1.0), (6000, 1.0)])
def test_version_2_draws_low_ratios_version_1_refuses_some(num_images, ratio):
    y = synthetic_labels(num_images, 16, imbalance_ratio=ratio, version=2)
    np.testing.assert_array_equal(y.sum(axis=0), target_class_counts(num_images, 16, imbalance_ratio=ratio))
    if ratio == 1.0 and num_images == 6000:  # the balanced draw of the learnability control
        assert y.sum(axis=0).min() >= 300
    else:  # version 1's companion draw leaves a slot only the class itself could fill
        with pytest.raises(ValueError, match="cannot give class 15 all its companion labels"):
            synthetic_labels(num_images, 16, imbalance_ratio=ratio)


def _lesion_pixels(cls: int, seed: int, version: int = 2) -> np.ndarray:
    """(64, 64) bool: the pixels that class ``cls`` alone changes in image ``seed`` (lesions are drawn
    last, so the same rng state gives the same fundus without them)."""
    none = np.zeros(DEFAULT_NUM_CLASSES, dtype=np.uint8)
    one = none.copy()
    one[cls] = 1
    a = render_fundus(none, np.random.default_rng(seed), version=version).astype(int)
    b = render_fundus(one, np.random.default_rng(seed), version=version).astype(int)
    return np.abs(a - b).max(axis=-1) > 8


def test_version_2_sites_keep_the_documented_margins():
    """The site functions: global sites keep V2_GLOBAL_* from disc and vessels, the regional tail
    sites of the same motifs lie within V2_DISC_BAND / V2_VESSEL_BAND."""
    s2 = synthetic_module
    for seed in range(30):
        rng = np.random.default_rng([seed, 7])
        g = s2._fundus_geometry(rng, 64)
        tree = s2._vessel_tree(rng, g.disc, g.side, g.R, (g.cx, g.cy))
        segments = s2._tree_segments(tree)
        sites = s2._LesionSites(rng, g, s2._vessel_runs(tree, g), version=2, segments=segments)
        glob = np.array([sites.global_point() for _ in range(20)])
        disc_tail = np.array([sites.disc_margin_point() for _ in range(20)])
        vessel_pts = sites.vessel_pts[rng.integers(len(sites.vessel_pts), size=20)]
        vessel_tail = np.array([sites.on_vessel(*p) for p in vessel_pts])
        pair = np.sqrt(((glob[:, None] - disc_tail[None]) ** 2).sum(-1))
        assert pair.min() >= (s2.V2_GLOBAL_DISC_CLEARANCE - s2.V2_DISC_BAND[1]) * g.rd - 1e-9
        assert s2._segment_distance(glob, segments).min() >= s2.V2_GLOBAL_VESSEL_CLEARANCE * g.R - 1e-9
        assert np.hypot(*(vessel_tail - vessel_pts).T).max() <= s2.V2_VESSEL_BAND * g.R + 1e-9
        pair = np.sqrt(((glob[:, None] - vessel_tail[None]) ** 2).sum(-1))
        assert pair.min() >= (s2.V2_GLOBAL_VESSEL_CLEARANCE - s2.V2_VESSEL_BAND) * g.R - 1e-9


def test_version_2_drawn_lesions_are_apart_at_64_px():
    """The drawn pixels, at 64 px: the global red dots / yellow spots stay >= 3.5 disc radii from the
    disc centre, disc haemorrhage and disc drusen within 2.4; global pigment stays >= 0.12 field radii
    from every vessel centreline, each bone spicule and macroaneurysm touches one. (Version 1 drew them
    ~1 px apart: the ambiguity version 2 removes.)"""
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    pixels = np.stack([xx.ravel(), yy.ravel()], axis=1)
    names = [c.name for c in CATALOGUE]
    for seed in range(12):
        rng = np.random.default_rng(seed)
        g = synthetic_module._fundus_geometry(rng, 64)
        synthetic_module._background(rng, 64, g)
        tree = synthetic_module._vessel_tree(rng, g.disc, g.side, g.R, (g.cx, g.cy))
        to_disc = np.hypot(xx - g.disc[0], yy - g.disc[1]) / g.rd
        to_vessel = synthetic_module._segment_distance(pixels, synthetic_module._tree_segments(tree))
        to_vessel = to_vessel.reshape(64, 64) / g.R
        for name in ("hemorrhage", "hard_exudate"):
            assert to_disc[_lesion_pixels(names.index(name), seed)].min() >= 3.5
        for name in ("disc_hemorrhage", "disc_drusen"):
            assert to_disc[_lesion_pixels(names.index(name), seed)].max() <= 2.4
        assert to_vessel[_lesion_pixels(names.index("pigmentation"), seed)].min() >= 0.12
        for name in ("bone_spicules", "macroaneurysm"):
            assert to_vessel[_lesion_pixels(names.index(name), seed)].min() <= 0.02
