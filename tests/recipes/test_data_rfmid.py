"""RFMiD: a miniature copy of the official layout loads through the generic data set."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from recipes.data.csv_dataset import CSVDataError, MultiLabelCSVDataset
from recipes.data.rfmid import (
    RFMID_CHALLENGE_CLASSES,
    RFMID_CLASSES,
    RFMID_LAYOUTS,
    detect_rfmid_variant,
    load_rfmid,
    load_rfmid_merged,
    write_rfmid_merged_csv,
)

# the official header, typed out independently of the module's constant
OFFICIAL_HEADER = ("ID,Disease_Risk,DR,ARMD,MH,DN,MYA,BRVO,TSLN,ERM,LS,MS,CSR,ODC,CRVO,TV,AH,ODP,ODE,ST,"
                   "AION,PT,RT,RS,CRS,EDN,RPEC,MHL,RP,CWS,CB,ODPM,PRH,MNF,HR,CRAO,TD,CME,PTCR,CF,VH,MCA,"
                   "VS,BRAO,PLQ,HPED,CL")
CHALLENGE_HEADER = ("ID,Disease_Risk,DR,ARMD,MH,DN,MYA,BRVO,TSLN,ERM,LS,MS,CSR,ODC,CRVO,TV,AH,ODP,ODE,"
                    "ST,AION,PT,RT,RS,CRS,EDN,RPEC,MHL,RP,OTHER")


def _rows(n_labels, n_rows, seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((n_rows, n_labels)) < 0.3).astype(int)
    y[np.arange(n_labels) % n_rows, np.arange(n_labels)] = 1  # every class has a positive
    risk = (y.sum(axis=1) > 0).astype(int)
    return y, risk


def _mini_rfmid(root, header=OFFICIAL_HEADER, layout="official", sizes=(3, 2, 2), seed=0):
    """Write the official folder layout with tiny PNGs; ids restart at 1 in every split."""
    cols = header.split(",")
    truth = {}
    for k, (split, n) in enumerate(zip(("train", "val", "test"), sizes)):
        csv_rel, img_rel = RFMID_LAYOUTS[layout][split]
        (root / img_rel).mkdir(parents=True, exist_ok=True)
        y, risk = _rows(len(cols) - 2, n, seed + k)
        lines = [header]
        for i in range(n):
            lines.append(",".join([str(i + 1), str(risk[i]), *map(str, y[i])]))
            Image.new("RGB", (6, 4), (10 * k, 20 * i, 5)).save(root / img_rel / f"{i + 1}.png")
        (root / csv_rel).write_text("\n".join(lines) + "\n")
        truth[split] = (y, risk)
    return truth


def test_official_layout_loads_45_classes_in_official_order(tmp_path):
    truth = _mini_rfmid(tmp_path)
    ds = load_rfmid(tmp_path, "train", empty_classes="error")
    assert isinstance(ds, MultiLabelCSVDataset)
    assert ds.class_names == tuple(OFFICIAL_HEADER.split(",")[2:]) == RFMID_CLASSES
    assert len(ds.class_names) == 45 and "Disease_Risk" not in ds.class_names
    np.testing.assert_array_equal(ds.targets, truth["train"][0])
    assert ds.image_ids == ("1", "2", "3") and ds.image_paths[0] == tmp_path / "Training_Set/Training/1.png"
    img, target, index = ds[2]
    assert img.size == (6, 4) and target.shape == (45,) and index == 2
    val = load_rfmid(tmp_path, "val", empty_classes="ignore")
    assert len(val) == 2 and val.image_dir == tmp_path / "Evaluation_Set" / "Validation"
    test = load_rfmid(tmp_path, "test", empty_classes="ignore")
    assert test.image_dir == tmp_path / "Test_Set" / "Test"
    # Disease_Risk kept on request, as the first class
    ds = load_rfmid(tmp_path, "train", keep_disease_risk=True, empty_classes="ignore")
    assert ds.class_names[0] == "Disease_Risk" and len(ds.class_names) == 46
    np.testing.assert_array_equal(ds.targets[:, 0], truth["train"][1])


def test_challenge_variant_28_columns(tmp_path):
    truth = _mini_rfmid(tmp_path, header=CHALLENGE_HEADER)
    ds = load_rfmid(tmp_path, "val", empty_classes="ignore")
    assert ds.class_names == RFMID_CHALLENGE_CLASSES and len(ds.class_names) == 28
    assert ds.class_names[-1] == "OTHER" and ds.class_names[:27] == RFMID_CLASSES[:27]
    np.testing.assert_array_equal(ds.targets, truth["val"][0])
    with pytest.raises(CSVDataError, match="expected the 45-condition"):
        load_rfmid(tmp_path, "val", variant="full")


def test_merge_three_splits_with_unique_ids(tmp_path):
    truth = _mini_rfmid(tmp_path)
    out = tmp_path / "merged" / "rfmid_all.csv"
    ds = load_rfmid_merged(tmp_path, out)
    assert len(ds) == 3 + 2 + 2 and len(set(ds.image_ids)) == 7
    assert ds.image_ids[0] == "Training_Set/Training/1.png"
    assert ds.image_ids[3] == "Evaluation_Set/Validation/1.png"  # ID 1 again, other split
    assert ds.image_ids[-1] == "Test_Set/Test/2.png"
    assert ds.class_names == RFMID_CLASSES
    np.testing.assert_array_equal(
        ds.targets, np.concatenate([truth[s][0] for s in ("train", "val", "test")]))
    # the merged CSV is a plain generic CSV: the generic class reads it with no RFMiD knowledge
    generic = MultiLabelCSVDataset(out, tmp_path)
    np.testing.assert_array_equal(generic.targets, ds.targets)
    assert out.read_text().splitlines()[0].split(",")[:3] == ["image", "DR", "ARMD"]
    # a subset of splits, e.g. the official train + val for cross-validation
    path = write_rfmid_merged_csv(tmp_path, tmp_path / "tv.csv", splits=("train", "val"))
    assert len(MultiLabelCSVDataset(path, tmp_path, empty_classes="ignore")) == 5


def test_other_layouts(tmp_path):
    _mini_rfmid(tmp_path / "k", layout="kaggle")
    assert len(load_rfmid(tmp_path / "k", "test", layout="kaggle", empty_classes="ignore")) == 2
    with pytest.raises(FileNotFoundError, match=r"RFMiD train labels not found.*try layout='kaggle'"):
        load_rfmid(tmp_path / "k", "train")
    mapping = {"train": ("Training_Set/Training_Set/RFMiD_Training_Labels.csv",
                         "Training_Set/Training_Set/Training")}
    assert len(load_rfmid(tmp_path / "k", "train", layout=mapping, empty_classes="ignore")) == 3
    with pytest.raises(ValueError, match="must have an entry for split 'val'"):
        load_rfmid(tmp_path / "k", "val", layout=mapping)


def test_bad_headers_and_arguments(tmp_path):
    header = OFFICIAL_HEADER.replace(",CL", "")
    _mini_rfmid(tmp_path, header=header)
    msg = r"RFMiD_Training_Labels\.csv: expected the RFMiD columns of the 'full' variant, missing \['CL'\]"
    with pytest.raises(CSVDataError, match=msg):
        load_rfmid(tmp_path, "train")
    with pytest.raises(CSVDataError, match="expected an RFMiD header starting with 'ID'"):
        detect_rfmid_variant(["image", "DR"])
    assert detect_rfmid_variant(OFFICIAL_HEADER.split(",")) == "full"
    assert detect_rfmid_variant(CHALLENGE_HEADER.split(",")) == "challenge"
    with pytest.raises(ValueError, match="split must be one of"):
        load_rfmid(tmp_path, "training")
    with pytest.raises(ValueError, match="layout must be one of"):
        load_rfmid(tmp_path, "train", layout="zenodo")
    with pytest.raises(ValueError, match="variant must be 'auto' or one of"):
        load_rfmid(tmp_path, "train", variant="45")


def test_merge_refuses_mixed_variants_and_bad_splits(tmp_path):
    _mini_rfmid(tmp_path)
    csv_rel, _ = RFMID_LAYOUTS["official"]["test"]
    (tmp_path / csv_rel).write_text(CHALLENGE_HEADER + "\n1,0" + ",0" * 28 + "\n2,0" + ",0" * 28 + "\n")
    with pytest.raises(CSVDataError, match="same RFMiD variant"):
        write_rfmid_merged_csv(tmp_path, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()
    with pytest.raises(ValueError, match="splits must be unique"):
        write_rfmid_merged_csv(tmp_path, tmp_path / "m.csv", splits=("train", "train"))
    with pytest.raises(ValueError, match="non-empty sequence"):
        write_rfmid_merged_csv(tmp_path, tmp_path / "m.csv", splits="train")


def test_bad_label_in_rfmid_names_file_line_and_column(tmp_path):
    _mini_rfmid(tmp_path)
    csv_rel, _ = RFMID_LAYOUTS["official"]["val"]
    p = tmp_path / csv_rel
    lines = p.read_text().splitlines()
    cells = lines[2].split(",")
    cells[2 + RFMID_CLASSES.index("ARMD")] = "2"
    lines[2] = ",".join(cells)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(CSVDataError, match=r"RFMiD_Validation_Labels\.csv, line 3, column 'ARMD'"):
        load_rfmid(tmp_path, "val")
