"""Bring-your-own CSV folders: clear errors naming file and line, label mapping,
standardisation on the training split, and a content digest of the files read."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from bench.registry import create_dataset

N = 40


def _write(root, labels=None, y_rows=30, seed=0):
    """labels.csv (0/1/2 unless given), X_first.csv (all samples), Y_second.csv (the first
    ``y_rows``); features are random, on a scale far from standard."""
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"p{i}" for i in range(N)]
    y = labels if labels is not None else [str(i % 3) for i in range(N)]
    pd.DataFrame({"id": ids, "label": y}).to_csv(root / "labels.csv", index=False)
    rng = np.random.default_rng(seed)
    for name, rows, width in (("X_first", N, 3), ("Y_second", y_rows, 2)):
        x = pd.DataFrame(rng.normal(5.0, 3.0, (rows, width)).round(3),
                         columns=[f"f{k}" for k in range(width)])
        x.insert(0, "id", ids[:rows])
        x.to_csv(root / f"{name}.csv", index=False)
    return root


def _load(root, **options):
    return create_dataset(f"folder:{root}", **options)


def _replace_line(path, line, text):
    """Overwrite 1-based ``line`` of ``path``."""
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


# --- labels -----------------------------------------------------------------------------

def test_non_integer_label_among_integers_names_file_line_and_value(tmp_path):
    _write(tmp_path)
    _replace_line(tmp_path / "labels.csv", 6, "p4,abc")
    with pytest.raises(ValueError, match=r"labels.csv: label 'abc' on line 6 \(id 'p4'\) "
                                         r"is not an integer"):
        _load(tmp_path)


def test_empty_label_names_file_and_line(tmp_path):
    _write(tmp_path)
    _replace_line(tmp_path / "labels.csv", 4, "p2,")
    with pytest.raises(ValueError, match=r"labels.csv: empty label on line 4 \(id 'p2'\)"):
        _load(tmp_path)


def test_empty_id_in_labels_names_the_line(tmp_path):
    _write(tmp_path)
    _replace_line(tmp_path / "labels.csv", 3, ",1")
    with pytest.raises(ValueError, match=r"labels.csv: empty id on line\(s\) 3"):
        _load(tmp_path)


def test_labels_one_to_k_map_in_numeric_order(tmp_path):
    labels = [("1", "2", "10")[i % 3] for i in range(N)]
    _write(tmp_path, labels=labels)
    data = _load(tmp_path)
    assert data.class_names == ("1", "2", "10")
    assert data.meta["classes"] == {"1": 0, "2": 1, "10": 2}
    expected = {"1": 0, "2": 1, "10": 2}
    assert data.labels.tolist() == [expected[v] for v in labels]
    assert "10 -> 2" in data.description


def test_class_names_map_in_string_order(tmp_path):
    labels = [("mci", "cn", "dementia")[i % 3] for i in range(N)]
    _write(tmp_path, labels=labels)
    data = _load(tmp_path)
    assert data.class_names == ("cn", "dementia", "mci")
    assert data.meta["classes"] == {"cn": 0, "dementia": 1, "mci": 2}
    assert data.labels[:3].tolist() == [2, 0, 1]


def test_a_single_class_is_refused(tmp_path):
    _write(tmp_path, labels=["1"] * N)
    with pytest.raises(ValueError, match="labels.csv: .*at least two classes"):
        _load(tmp_path)


# --- modality files ---------------------------------------------------------------------

def test_duplicate_ids_in_a_modality_file_name_ids_and_lines(tmp_path):
    _write(tmp_path)
    _replace_line(tmp_path / "X_first.csv", 10, "p3,1,2,3")
    with pytest.raises(ValueError, match=r"X_first.csv: duplicate id\(s\): 'p3' on lines 5, 10"):
        _load(tmp_path)


def test_id_only_or_header_only_modality_file_is_refused(tmp_path):
    _write(tmp_path)
    (tmp_path / "Y_second.csv").write_text("id\np1\np2\n")
    with pytest.raises(ValueError, match=r"Y_second.csv: only an id column; expected an id "
                                         "column followed by numeric feature columns"):
        _load(tmp_path)
    (tmp_path / "Y_second.csv").write_text("id,f0,f1\n")
    with pytest.raises(ValueError, match=r"Y_second.csv: no rows \(header only\)"):
        _load(tmp_path)
    (tmp_path / "Y_second.csv").write_text("")
    with pytest.raises(ValueError, match=r"Y_second.csv: file is empty"):
        _load(tmp_path)


def test_rows_longer_than_the_header_are_refused(tmp_path):
    """pandas would otherwise take the first column as an index and shift every value."""
    _write(tmp_path)
    (tmp_path / "Y_second.csv").write_text("id,a\np1,3,4\np2,5,6\n")
    with pytest.raises(ValueError, match="Y_second.csv: rows have more fields than the header"):
        _load(tmp_path)


def test_empty_id_in_a_modality_file_names_the_line(tmp_path):
    _write(tmp_path)
    _replace_line(tmp_path / "Y_second.csv", 7, ",1,2")
    with pytest.raises(ValueError, match=r"Y_second.csv: empty id on line\(s\) 7"):
        _load(tmp_path)


def test_bad_feature_values_name_the_line(tmp_path):
    _write(tmp_path)
    _replace_line(tmp_path / "X_first.csv", 8, "p6,1,oops,3")
    with pytest.raises(ValueError, match=r"X_first.csv: non-numeric feature column 'f1': "
                                         r"value 'oops' on line 8 \(id 'p6'\)"):
        _load(tmp_path)
    _write(tmp_path)
    _replace_line(tmp_path / "X_first.csv", 8, "p6,1,,3")
    with pytest.raises(ValueError, match=r"X_first.csv: empty or infinite .* line 8 \(id 'p6'\)"):
        _load(tmp_path)


def test_blank_lines_and_empty_rows(tmp_path):
    """Blank lines are skipped; a row with an id and no features marks the modality missing."""
    _write(tmp_path)
    path = tmp_path / "Y_second.csv"
    path.write_text(path.read_text().replace("\np5,", "\n\np5,", 1))
    _replace_line(path, 3, "p1,,")
    data = _load(tmp_path)
    assert int(data.observed[:, 1].sum()) == 29 and not data.observed[1, 1]


def test_order_option_and_file_name_order(tmp_path):
    _write(tmp_path)
    assert _load(tmp_path).letters == "XY"
    assert _load(tmp_path, order="YX").letters == "YX"
    with pytest.raises(ValueError, match="must list exactly"):
        _load(tmp_path, order="XZ")


# --- standardisation --------------------------------------------------------------------

def test_features_are_standardised_on_the_training_split(tmp_path):
    _write(tmp_path)
    data = _load(tmp_path)
    assert data.meta["standardize"] is True
    train = data.splits["train"].numpy()
    for j, m in enumerate(data.modalities):
        seen = train[data.observed[train, j].numpy()]
        x = data.features[m.letter].numpy()
        assert np.allclose(x[seen].mean(0), 0, atol=1e-5)
        assert np.allclose(x[seen].std(0), 1, atol=1e-4)
        assert not x[~data.observed[:, j].numpy()].any()


def test_standardize_false_keeps_the_csv_values(tmp_path):
    _write(tmp_path)
    data = _load(tmp_path, standardize=False)
    assert data.meta["standardize"] is False
    for m, name in zip(data.modalities, ("X_first", "Y_second")):
        csv = pd.read_csv(tmp_path / f"{name}.csv").drop(columns="id").to_numpy(np.float32)
        assert np.array_equal(data.features[m.letter].numpy()[:len(csv)], csv)
    assert not data.features["Y"][30:].any()
    with pytest.raises(ValueError, match="standardize must be true or false"):
        _load(tmp_path, standardize="False")


def test_constant_feature_keeps_std_one(tmp_path):
    _write(tmp_path)
    x = pd.read_csv(tmp_path / "X_first.csv")
    x["f2"] = 7.0
    x.to_csv(tmp_path / "X_first.csv", index=False)
    assert not _load(tmp_path).features["X"][:, 2].any()


# --- content digest ---------------------------------------------------------------------

def test_content_digest_follows_the_bytes_not_the_location(tmp_path):
    a = _write(tmp_path / "a")
    before = _load(a).content_digest
    assert before
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    assert _load(b).content_digest == before
    path = b / "Y_second.csv"
    text = path.read_text()
    i = text.index("\np3,") + 5  # a digit inside p3's first feature
    path.write_text(text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1:])
    assert _load(b).content_digest != before


def test_content_digest_covers_labels_and_split_file(tmp_path):
    _write(tmp_path)
    before = _load(tmp_path).content_digest
    data = _load(tmp_path)
    parts = {i: p for p in ("train", "val", "test") for i in data.ids[data.splits[p].numpy()]}
    split = pd.DataFrame({"id": list(parts), "split": list(parts.values())})
    split.to_csv(tmp_path / "split.csv", index=False)
    with_split = _load(tmp_path)
    assert with_split.meta["split_file"] == "split.csv"
    assert with_split.split_digest == data.split_digest
    assert with_split.content_digest != before
    _replace_line(tmp_path / "labels.csv", 2, "p0,2")
    assert _load(tmp_path).content_digest != with_split.content_digest

