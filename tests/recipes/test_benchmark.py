"""recipes/benchmark/run_cost.py: one ``--quick`` run gives every section with finite positive throughputs, the
ratios are the arithmetic of that run's own times, the JSON file holds what ``main`` returned, and bad
arguments are refused naming the argument. No timing assertion: only the bookkeeping is checked."""
from __future__ import annotations

import contextlib
import io
import json
import math
import re

import pytest

from recipes.benchmark import run_cost as benchmark
from recipes.benchmark.run_cost import (
    TARGET_BANK_RATIO,
    TARGET_E2E_IMAGES_PER_S,
    TARGET_E2E_RATIO,
    TARGET_TEACHER_SLOPE,
    main,
)

REL = 1e-9


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = main(["--quick", "--json", str(out)])
    return result, out, printed.getvalue()


def _measured(row: dict, batch: int) -> None:
    """A measured row: finite positive ms/step and images/s, and images/s = batch / (ms/step / 1000)."""
    assert row["status"] == "measured", row
    ms, ips = row["ms_per_step"], row["images_per_s"]
    assert math.isfinite(ms) and ms > 0, row
    assert math.isfinite(ips) and ips > 0, row
    assert ips == pytest.approx(batch / (ms / 1e3), rel=REL)


def test_json_file_is_what_main_returned(run):
    result, out, _ = run
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert set(on_disk) >= {"settings", "model_step", "student_step", "pipeline", "end_to_end", "targets", "seconds"}
    # written atomically: no temporary file left beside it
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_settings_name_device_and_versions(run):
    st = run[0]["settings"]
    assert st["device_type"] in ("cpu", "cuda") and st["device"]
    assert st["torch"] and st["torchvision"]
    assert st["quick"] is True and st["compile"] is False
    assert st["teachers"] == [3, 4]
    assert st["cache_size"] == round(st["size"] * 1.125)


def test_model_step_rows(run):
    result = run[0]
    m, batch = result["model_step"], result["settings"]["batch"]
    _measured(m["fp32"], batch)
    _measured(m["channels_last_fp32"], batch)
    if result["settings"]["device_type"] == "cuda":
        _measured(m["bf16_channels_last"], batch)
        assert m["reference"] == "bf16_channels_last"
    else:
        assert m["bf16_channels_last"]["status"] == "n/a on CPU"
        assert m["reference"] == "channels_last_fp32"
    assert m["compiled"]["status"] == "skipped"  # --quick never compiles


def test_student_ratios_are_this_runs_erm_arithmetic(run):
    result = run[0]
    s, batch = result["student_step"], result["settings"]["batch"]
    assert s["reference"] == result["model_step"]["reference"]  # the same precision setting
    _measured(s["erm"], batch)
    erm_ms = s["erm"]["ms_per_step"]
    keys = ["bank", "online_3", "online_4"]
    assert sorted(k for k in s if k not in ("reference", "erm")) == sorted(keys)
    for key in keys:
        _measured(s[key], batch)
        ratio = s[key]["ratio_to_erm"]
        assert math.isfinite(ratio) and ratio > 0
        assert ratio == pytest.approx(s[key]["ms_per_step"] / erm_ms, rel=REL, abs=0)
    assert (s["online_3"]["k"], s["online_4"]["k"]) == (3, 4)


def test_pipeline_rows(run):
    result = run[0]
    p, st = result["pipeline"], result["settings"]
    _measured(p["device_augment"], st["batch"])
    for key in ("cached", "full_size", "decoded"):
        row = p[key]
        assert row["status"] == "measured"
        assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0
        assert math.isfinite(row["ms_per_step"]) and row["ms_per_step"] > 0
    assert p["workers"] == st["workers"]


def test_end_to_end_ratio_is_to_the_model_step_of_the_same_run(run):
    result = run[0]
    e, m = result["end_to_end"], result["model_step"]
    row = e["eager"]
    _measured(row, result["settings"]["batch"])
    assert row["reference"] == m["reference"]
    assert row["reference_images_per_s"] == m[m["reference"]]["images_per_s"]
    assert row["ratio_to_model_step"] == pytest.approx(row["images_per_s"] / row["reference_images_per_s"],
                                                       rel=REL, abs=0)
    assert e["compiled"]["status"] == "skipped"


def test_targets_compare_the_measured_figures(run):
    result = run[0]
    s, e = result["student_step"], result["end_to_end"]
    gpu = result["settings"]["device_type"] == "cuda"
    rows = {t["what"]: t for t in result["targets"]}
    bank = rows["student + bank / ERM step"]
    assert bank["measured"] == s["bank"]["ratio_to_erm"]
    assert bank["met"] is (s["bank"]["ratio_to_erm"] <= TARGET_BANK_RATIO)
    for k in (3, 4):
        t = rows[f"student + {k} online teachers / ERM step"]
        assert t["measured"] == s[f"online_{k}"]["ratio_to_erm"]
        assert t["target"] == f"<= {1 + TARGET_TEACHER_SLOPE * k:.2f}"
        assert t["met"] is (t["measured"] <= 1 + TARGET_TEACHER_SLOPE * k)
    t = rows["end-to-end / model-only step (eager)"]
    assert t["measured"] == e["eager"]["ratio_to_model_step"]
    assert t["met"] is ((t["measured"] >= TARGET_E2E_RATIO) if gpu else None)
    t = rows["end-to-end images/s, best setting"]
    assert t["measured"] == e["eager"]["images_per_s"]
    assert t["met"] is None  # --quick runs small_cnn at 32 px: the 4,500 images/s target does not apply
    assert str(int(TARGET_E2E_IMAGES_PER_S)) in t["target"].replace(",", "")


def test_printed_table_and_json(run):
    result, _, printed = run
    assert "| section | case | ms/step | images/s | ratio | settings |" in printed
    assert "| target | measured | target | met |" in printed
    assert result["settings"]["torch"] in printed
    for case in ("fp32", "channels_last_fp32", "bf16_channels_last", "compiled", "bank", "3 online teachers",
                 "4 online teachers", "loader, cached copy (c1)", "loader, full size (c2)", "loader, decoded cache (c3)",
                 "student epoch, eager"):
        assert f"| {case} |" in printed, case
    start = printed.index("\n{")
    assert json.loads(printed[start:]) == json.loads(json.dumps(result))


@pytest.mark.parametrize("argv, match", [
    (["--batch", "0"], r"argument --batch: must be an int >= 1, got 0"),
    (["--steps", "-3"], r"argument --steps: must be an int >= 1, got -3"),
    (["--size", "big"], r"argument --size: must be an int >= 1, got 'big'"),
    (["--workers", "-1"], r"argument --workers: must be an int >= 0, got -1"),
    (["--classes", "1"], r"argument --classes: must be an int >= 2, got 1"),
    (["--quick", "--teachers", "9"], r"argument --teachers: each k must be <= --classes \(8\), got \[9\]"),
    (["--quick", "--size", "16"], r"argument --size: small_cnn halves the image four times"),
    (["--data-root", "/nonexistent/folder"], r"argument --data-root: expected a folder with labels.csv"),
    (["--model", "no_such_net"], r"argument --model: expected small_cnn or a torchvision"),
    (["--device", "tpu"], r"argument --device: invalid choice"),
])
def test_bad_arguments_exit_naming_the_argument(argv, match, capsys, tmp_path):
    out = tmp_path / "never.json"
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--json", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert not out.exists()


def test_cpu_defaults_fit_the_two_minute_budget():
    """The documented CPU defaults (parsed, not run): small model, small images, few steps."""
    a = benchmark.parse_args(["--device", "cpu"])
    assert (a.model, a.size, a.batch, a.classes, a.full_size) == ("small_cnn", 64, 64, 16, 256)
    assert a.compile is False and a.teachers == [3, 4]
    assert a.threads == max(1, a.cores - a.workers)


def test_trunk_cache_section_is_the_arithmetic_of_its_own_steps(tmp_path):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = main(["--quick", "--trunk-cache", "--trunk-freeze", "6", "8", "--trunk-epoch", "100"])
    t = result["trunk_cache"]
    assert (t["epoch_images"], t["steps_per_epoch"], t["views"]) == (100, 13, 2)  # ceil(100 / batch 8)
    for k in (6, 8):
        row = t[f"k{k}"]
        assert all(math.isfinite(row[key]) and row[key] > 0 for key in row if key != "status"), row
        assert row["today_epoch_s"] == pytest.approx(row["today_ms_per_step"] / 1e3 * 13, rel=REL)
        assert row["speedup"] == pytest.approx(row["today_epoch_s"] / row["cached_epoch_s"], rel=REL)
        # 16 images x 2 views = 0.032 thousand image-views
        assert row["build_s_per_1000_image_views"] == pytest.approx(row["build_s"] / 0.032, rel=REL)
        assert re.search(rf"\n\| {k} \| [\d.,]+ \| [\d.,]+ \| [\d.,]+ \| [\d.,]+ \| [\d.,]+ x \| [\d.,]+ \|", printed.getvalue())
