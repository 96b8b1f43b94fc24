"""The generic multi-label CSV data set: loading, every bad-data error, transforms, describe."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes.data.csv_dataset import (
    BadImageError,
    CSVDataError,
    EmptyClassWarning,
    MultiLabelCSVDataset,
    detect_label_columns,
    label_columns_message,
    read_label_csv,
)

torch.manual_seed(0)


def _write_images(folder: Path, names, size=(12, 10), seed=0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / n)


def _make(tmp_path: Path, text: str, images=("a.png", "b.png", "c.png"), *, bom: bool = False) -> Path:
    _write_images(tmp_path / "img", images)
    p = tmp_path / "labels.csv"
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return p


GOOD = "image,A,B,C\na.png,1,0,1\nb.png,0,1,1\nc.png,1,1,1\n"


def test_loads_targets_names_counts_and_items(tmp_path):
    csv_path = _make(tmp_path, GOOD)
    ds = MultiLabelCSVDataset(csv_path, tmp_path / "img")
    assert ds.class_names == ("A", "B", "C")
    assert ds.image_ids == ("a.png", "b.png", "c.png")
    assert ds.targets.dtype == np.uint8 and ds.targets.shape == (3, 3)
    # rows as written in GOOD
    np.testing.assert_array_equal(ds.targets, [[1, 0, 1], [0, 1, 1], [1, 1, 1]])
    # column sums by hand: A = 1+0+1, B = 0+1+1, C = 1+1+1
    np.testing.assert_array_equal(ds.class_counts, [2, 2, 3])
    img, target, index = ds[1]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (12, 10)
    assert target.dtype == torch.float32 and target.tolist() == [0.0, 1.0, 1.0]
    assert index == 1
    assert ds[-1][2] == 2
    with pytest.raises(IndexError, match="out of range"):
        ds[3]
    with pytest.raises(TypeError, match="index must be an int"):
        ds[1.0]
    # targets are read-only and targets_tensor is a copy
    with pytest.raises(ValueError):
        ds.targets[0, 0] = 0
    t = ds.targets_tensor()
    t[0, 0] = 7
    assert ds.targets[0, 0] == 1


def test_image_is_decoded_exactly(tmp_path):
    arr = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    (tmp_path / "img").mkdir()
    Image.fromarray(arr).save(tmp_path / "img" / "x.png")
    Image.fromarray(arr[..., 0]).convert("L").save(tmp_path / "img" / "g.png")  # grey -> RGB
    (tmp_path / "l.csv").write_text("id,A\nx.png,1\ng.png,0\n")
    ds = MultiLabelCSVDataset(tmp_path / "l.csv", tmp_path / "img")
    np.testing.assert_array_equal(np.asarray(ds[0][0]), arr)
    grey = np.asarray(ds[1][0])
    assert grey.shape == (4, 5, 3) and (grey[..., 0] == arr[..., 0]).all() and (grey[..., 2] == arr[..., 0]).all()


def test_bom_and_header_spaces(tmp_path):
    csv_path = _make(tmp_path, "image, A ,B,C\r\na.png,1,0,1\r\nb.png,0,1,1\r\nc.png,1,1,1\r\n\r\n", bom=True)
    ds = MultiLabelCSVDataset(csv_path, tmp_path / "img")
    assert ds.image_column == "image"  # not "\ufeffimage"
    assert ds.class_names == ("A", "B", "C")
    assert len(ds) == 3  # the trailing blank line is skipped


def test_float_labels_accepted(tmp_path):
    csv_path = _make(tmp_path, "image,A,B\na.png,1.0,0.0\nb.png,0,1\nc.png, 1 ,0\n")
    ds = MultiLabelCSVDataset(csv_path, tmp_path / "img")
    np.testing.assert_array_equal(ds.targets, [[1, 0], [0, 1], [1, 0]])


def test_indices_keep_global_row_numbers(tmp_path):
    csv_path = _make(tmp_path, GOOD)
    ds = MultiLabelCSVDataset(csv_path, tmp_path / "img", indices=[2, 0])
    assert len(ds) == 2 and ds.image_ids == ("c.png", "a.png")
    assert [ds[i][2] for i in range(2)] == [2, 0]
    np.testing.assert_array_equal(ds.class_counts, [2, 1, 2])
    with pytest.raises(ValueError, match=r"indices must be in \[0, 3\)"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img", indices=[3])
    with pytest.raises(ValueError, match="unique"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img", indices=[1, 1])
    with pytest.raises(TypeError, match="integers"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img", indices=[0.5])


def test_column_selection_and_expected_class_names(tmp_path):
    csv_path = _make(tmp_path, "image,age,A,B\na.png,63,1,0\nb.png,70,0,1\nc.png,55,1,1\n")
    ds = MultiLabelCSVDataset(csv_path, tmp_path / "img")  # detected: 'age' is not 0/1
    assert ds.class_names == ("A", "B") and [c.name for c in ds.skipped_columns] == ["age"]
    with pytest.raises(CSVDataError, match=r"line 2, column 'age'.*got '63'"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img", class_names=["age", "A"])
    ds = MultiLabelCSVDataset(csv_path, tmp_path / "img", label_columns=["B", "A"])
    assert ds.class_names == ("B", "A")
    np.testing.assert_array_equal(ds.targets[:, 0], [0, 1, 1])
    ds = MultiLabelCSVDataset(csv_path, tmp_path / "img", class_names=["A", "B"])
    assert ds.class_names == ("A", "B")
    with pytest.raises(CSVDataError, match=r"labels.csv, line 1: expected label column\(s\) \['DR'\]"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img", class_names=["A", "DR"])
    with pytest.raises(ValueError, match="must agree"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img", label_columns=["A"], class_names=["B"])
    with pytest.raises(CSVDataError, match="expected an image column 'file'"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img", image_column="file", label_columns=["A"])


def test_image_suffix_for_bare_ids(tmp_path):
    csv_path = _make(tmp_path, "ID,A\na,1\nb,0\nc,1\n")
    ds = MultiLabelCSVDataset(csv_path, tmp_path / "img", image_suffix=".png")
    assert ds.image_paths[0] == tmp_path / "img" / "a.png"
    with pytest.raises(CSVDataError, match="3 missing"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img")


@pytest.mark.parametrize("bad", ["2", "-1", "", "x", "true", "nan", "0.5"])
def test_bad_label_names_file_line_column(tmp_path, bad):
    csv_path = _make(tmp_path, f"image,A,B,C\na.png,1,0,1\nb.png,0,{bad},1\nc.png,1,1,1\n")
    with pytest.raises(CSVDataError, match=rf"labels\.csv, line 3, column 'B': expected a label 0 or 1, got '{bad}'"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img", class_names=["A", "B", "C"])
    # detected: the column is left out, and said so with the same cell
    ds = MultiLabelCSVDataset(csv_path, tmp_path / "img")
    assert ds.class_names == ("A", "C") and ds.skipped_columns[0][:4] == ("B", 1, bad, 3)


def test_missing_images_are_listed(tmp_path):
    names = [f"{i}.png" for i in range(9)]
    rows = "".join(f"{n},1\n" for n in names)
    _write_images(tmp_path / "img", names[:2])
    (tmp_path / "l.csv").write_text("image,A\n" + rows)
    with pytest.raises(CSVDataError) as e:
        MultiLabelCSVDataset(tmp_path / "l.csv", tmp_path / "img")
    msg = str(e.value)
    assert "l.csv" in msg and "column 'image'" in msg and "7 missing" in msg
    assert "line 4:" in msg and "2.png" in msg  # first missing is data row 3 = CSV line 4
    assert "(and 2 more)" in msg  # 7 missing, 5 listed


def test_duplicate_id(tmp_path):
    csv_path = _make(tmp_path, "image,A\na.png,1\nb.png,0\na.png,1\n")
    msg = r"line 4, column 'image': expected unique image ids, got 'a.png' again \(first on line 2\)"
    with pytest.raises(CSVDataError, match=msg):
        MultiLabelCSVDataset(csv_path, tmp_path / "img")


def test_empty_label_column_warns_or_errors(tmp_path):
    csv_path = _make(tmp_path, "image,A,B\na.png,1,0\nb.png,0,0\nc.png,1,0\n")
    with pytest.warns(EmptyClassWarning, match=r"got none for column\(s\) \['B'\]"):
        ds = MultiLabelCSVDataset(csv_path, tmp_path / "img")
    assert ds.class_counts.tolist() == [2, 0]
    with pytest.raises(CSVDataError, match=r"labels\.csv: expected at least one positive.*\['B'\]"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img", empty_classes="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MultiLabelCSVDataset(csv_path, tmp_path / "img", empty_classes="ignore")
    with pytest.raises(ValueError, match="empty_classes must be one of"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img", empty_classes="skip")


def test_no_label_columns(tmp_path):
    csv_path = _make(tmp_path, "image\na.png\n")
    with pytest.raises(CSVDataError, match="expected at least one label column after the image column 'image'"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img")


def test_structural_errors(tmp_path):
    csv_path = _make(tmp_path, "image,A,B\na.png,1,0\nb.png,0\n")
    with pytest.raises(CSVDataError, match=r"line 3: expected 3 cells \(as in the header\), got 2"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img")
    csv_path.write_text("image,A,A\na.png,1,0\n")
    with pytest.raises(CSVDataError, match="line 1, column 'A': expected unique column names"):
        read_label_csv(csv_path)
    csv_path.write_text("image,A\n,1\n")
    with pytest.raises(CSVDataError, match="line 2, column 'image': expected an image id, got an empty cell"):
        read_label_csv(csv_path)
    csv_path.write_text("")
    with pytest.raises(CSVDataError, match="expected a header line, got an empty file"):
        read_label_csv(csv_path)
    csv_path.write_bytes(b"image,A\n\xff\xfe,1\n")
    with pytest.raises(CSVDataError, match="expected a UTF-8 text file"):
        read_label_csv(csv_path)
    with pytest.raises(FileNotFoundError, match="labels CSV not found"):
        read_label_csv(tmp_path / "nope.csv")
    csv_path.write_text(GOOD)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        MultiLabelCSVDataset(csv_path, tmp_path / "nope")


def test_quoted_multiline_cell_keeps_true_line_numbers(tmp_path):
    # header = line 1, a.png = line 2, b.png spans lines 3-4 (quoted newline), c.png = line 5
    csv_path = _make(tmp_path, 'image,A,note\na.png,1,ok\n"b.png",0,"two\nlines"\nc.png,x,ok\n')
    with pytest.raises(CSVDataError, match="line 5, column 'A'"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img", label_columns=["A"])


def test_unreadable_image_raises_naming_file(tmp_path):
    csv_path = _make(tmp_path, GOOD)
    good = (tmp_path / "img" / "b.png").read_bytes()
    (tmp_path / "img" / "b.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    (tmp_path / "img" / "c.png").write_bytes(b"not an image at all")
    ds = MultiLabelCSVDataset(csv_path, tmp_path / "img")  # construction only checks existence
    ds[0]
    with pytest.raises(BadImageError, match=r"b\.png.*labels\.csv, line 3"):
        ds[1]
    with pytest.raises(BadImageError, match=r"c\.png"):
        ds[2]


def test_transform_and_dataloader(tmp_path):
    from torch.utils.data import DataLoader

    from recipes.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transform, train_transform

    csv_path = _make(tmp_path, GOOD)
    ds = MultiLabelCSVDataset(csv_path, tmp_path / "img", transform=eval_transform(8))
    x, y, idx = next(iter(DataLoader(ds, batch_size=3)))
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
    assert y.shape == (3, 3) and idx.tolist() == [0, 1, 2]
    # eval is deterministic, and a constant image maps to (v - mean) / std
    const = Image.new("RGB", (20, 16), (255, 0, 128))
    out = eval_transform(8)(const)
    expect = [(1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (0.0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
              (128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    torch.testing.assert_close(out.mean(dim=(1, 2)), torch.tensor(expect), atol=1e-4, rtol=0)
    torch.testing.assert_close(denormalize(out)[:, 4, 4], torch.tensor([1.0, 0.0, 128 / 255]), atol=1e-4, rtol=0)
    # train is random but seeded, and outputs the requested size
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    torch.manual_seed(1)
    a = train_transform(32)(img)
    torch.manual_seed(1)
    b = train_transform(32)(img)
    torch.manual_seed(2)
    c = train_transform(32)(img)
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="size must be a positive int"):
        train_transform(0)
    with pytest.raises(TypeError, match="transform must be callable"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img", transform="resize")


def test_describe_tables_groups_and_figures(tmp_path, capsys):
    from recipes.data.describe import describe, labels_per_image
    from rskd_loss.metrics import shot_group_of

    # 6 images: label counts per row 1, 2, 3, 4, 0, 1 -> Table 2 row counts 0:1, 1:2, 2:1, 3:1, 3+:1
    y = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]])
    assert labels_per_image(y) == {"0": 1, "1": 2, "2": 1, "3": 1, "3+": 1, "sum": 6}
    # describe groups by rskd_loss.metrics (thresholds (100, 20)): 150 head, 50 medium, 5 tail; with no
    # class >= 100 the head group stays empty (no tertile fallback: the groups of the results)
    assert shot_group_of([150, 50, 5]) == ["head", "medium", "tail"]
    assert shot_group_of([5, 50, 30, 1, 2, 70]) == ["tail", "medium", "medium", "tail", "tail", "medium"]
    names = [f"{i}.png" for i in range(6)]
    _write_images(tmp_path / "img", names)
    (tmp_path / "l.csv").write_text("image,A,B,C,D\n" + "".join(
        f"{n},{','.join(map(str, r))}\n" for n, r in zip(names, y)))
    (tmp_path / "p.json").write_text(json.dumps({"subsets": [[0, 1], [2, 3]], "names": ["s1", "s2"], "num_classes": 4}))
    s = describe(tmp_path / "l.csv", tmp_path / "out", partition=tmp_path / "p.json")
    for f in ("class_counts.png", "cooccurrence.png", "subsets.png", "summary.json", "summary.txt"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    assert s["class_counts"] == [4, 4, 2, 1]
    assert s["groups"] == {"head": [], "medium": [], "tail": ["A", "B", "C", "D"]}  # all < 20, shown as is
    # co-occurrence A&B: rows 1, 2, 3 -> 3; C&D: row 3 -> 1
    assert s["cooccurrence"][0][1] == 3 and s["cooccurrence"][2][3] == 1
    sub = s["partition"]["subsets"]
    # subset {A, B}: images with A or B = rows 0, 1, 2, 3, 5 (5); with C or D too: rows 2, 3 (2)
    assert sub[0]["images"] == 5 and sub[0]["images_with_outside_labels"] == 2
    # subset {C, D}: rows 2, 3; counts C=2, D=1 -> imbalance 2
    assert sub[1]["counts"] == [2, 1] and sub[1]["imbalance_ratio"] == 2.0
    assert "labels per image" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text(json.dumps({"subsets": [[0, 1], [1, 2, 3]]}))
    with pytest.raises(ValueError, match="disjoint and cover all 4 classes"):
        describe(tmp_path / "l.csv", tmp_path / "out", partition=tmp_path / "bad.json", verbose=False)
    (tmp_path / "bad.json").write_text(json.dumps({"subsets": [[0, 1], [2, 3]], "num_classes": 5}))
    with pytest.raises(ValueError, match="expected num_classes 4"):
        describe(tmp_path / "l.csv", tmp_path / "out", partition=tmp_path / "bad.json", verbose=False)


# A hospital-style export: UTF-8 BOM, class names with spaces, the image column not first, an integer
# age, a free-text note, a 0/1/2 quality grade, and a label column with one typo.
EXPORT = ("patient_age,Image file,Diabetic retinopathy, Macular hole ,quality,note,Other finding,Glaucoma\n"
          "75,a.png,1,0,2,\"left eye, blurred\",0,1\n"
          "61,b.png,0,1,1,,1,0\n"
          "8,c.png,1,1,0,ok,x,0\n")


def test_label_columns_detected_in_an_export_with_metadata_columns(tmp_path):
    csv_path = _make(tmp_path, EXPORT, bom=True)
    taken, skipped = detect_label_columns(csv_path, image_column="Image file")
    assert taken == ["Diabetic retinopathy", "Macular hole", "Glaucoma"]
    assert [(c.name, c.first_value, c.first_line, c.bad_cells) for c in skipped] == [
        ("patient_age", "75", 2, 3), ("quality", "2", 2, 1), ("note", "left eye, blurred", 2, 3),
        ("Other finding", "x", 4, 1)]
    ds = MultiLabelCSVDataset(csv_path, tmp_path / "img", image_column="Image file")
    assert ds.class_names == tuple(taken) and ds.image_ids == ("a.png", "b.png", "c.png")
    np.testing.assert_array_equal(ds.targets, [[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    msg = ds.label_columns_message
    assert msg.startswith("labels.csv: took 3 label column(s) (every column of 0/1 values): "
                          "['Diabetic retinopathy', 'Macular hole', 'Glaucoma']; skipped 4 column(s)")
    assert "'patient_age' ('75' on line 2, 3 non-0/1 cells)" in msg and "'Other finding' ('x' on line 4)" in msg
    assert "data.class_names" in msg and "\n" not in msg


def test_label_columns_named_explicitly_in_an_export(tmp_path):
    csv_path = _make(tmp_path, EXPORT, bom=True)
    t = read_label_csv(csv_path, image_column="Image file", class_names=["Glaucoma", "Macular hole"])
    assert t.class_names == ("Glaucoma", "Macular hole") and not t.detected and t.skipped_columns == ()
    np.testing.assert_array_equal(t.targets, [[1, 0], [0, 1], [0, 1]])
    assert "(as named)" in label_columns_message(t) and "skipped" not in label_columns_message(t)
    # a named column with a value other than 0/1: file, line, column and value
    with pytest.raises(CSVDataError, match=r"labels.csv, line 4, column 'Other finding': expected a label "
                                           r"0 or 1, got 'x' \(the column is named as a label column\)"):
        read_label_csv(csv_path, image_column="Image file", class_names=["Glaucoma", "Other finding"])
    with pytest.raises(CSVDataError, match=r"line 2, column 'quality': expected a label 0 or 1, got '2'"):
        MultiLabelCSVDataset(csv_path, tmp_path / "img", image_column="Image file", class_names=["quality"])


def test_no_column_of_0_1_values_is_an_error_listing_the_columns(tmp_path):
    csv_path = _make(tmp_path, "image,age,grade\na.png,63,2\nb.png,70,0\nc.png,55,1\n")
    with pytest.raises(CSVDataError, match=r"expected at least one label column holding only 0/1.*got none: "
                                           r"'age' \('63' on line 2, 3 non-0/1 cells\), 'grade' \('2' on line 2\)"):
        read_label_csv(csv_path)


@pytest.mark.parametrize("bad_rows, refused", [(1, True), (2, True), (3, False)])
def test_a_nearly_0_1_column_is_refused_not_dropped(tmp_path, bad_rows, refused):
    """200 rows: a column 0/1 in all but <= 1 % of them (2 cells) is a label column with bad values
    (refused, naming the first cell); at 3 cells (1.5 %) it is metadata, skipped and listed."""
    rows = [f"{i}.png,{i % 2},{'2' if i < bad_rows else int(i % 3 == 0)}" for i in range(200)]
    csv_path = _make(tmp_path, "image,A,B\n" + "\n".join(rows) + "\n")
    if refused:
        with pytest.raises(CSVDataError, match=r"line 2, column 'B': expected a label 0 or 1, got '2': the column "
                                               rf"is 0/1 in all but {bad_rows} of 200 rows.*data.class_names"):
            read_label_csv(csv_path)
    else:
        table = read_label_csv(csv_path)
        assert table.class_names == ("A",) and [c.name for c in table.skipped_columns] == ["B"]
