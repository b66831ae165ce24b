"""The ``modalities`` data option: a data set reduced to some of its modalities before any
imposed missingness — what it keeps, the keys it gives, and the errors of bad letters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.artefacts import catalogue, planning, spec
from bench.cli.main import main
from bench.data.load import load_data, resolve_data
from bench.hparams import SettingError
from bench.identity.config import build_grid


def test_only_the_named_modalities_remain_and_nothing_else_changes():
    full = load_data("mfeat", {"missing": "none"})
    data = load_data("mfeat", {"missing": "none", "modalities": "ZFM"})
    assert data.letters == "FZM"  # the data set's order, whatever the option's
    assert set(data.features) == set("FZM")
    cols = [full.letters.index(c) for c in "FZM"]
    assert torch.equal(data.observed, full.observed[:, cols])
    for c in "FZM":
        assert torch.equal(data.features[c], full.features[c])
    for part in ("train", "val", "test"):
        assert torch.equal(data.splits[part], full.splits[part])
    assert torch.equal(data.labels, full.labels)
    spec = data.restrict(data.letters).spec
    assert spec.letters == "FZM" and [m.letter for m in spec.all_modalities] == list("FZM")
    with pytest.raises(ValueError, match="unknown modality letter"):
        data.restrict("FA")


def test_missingness_is_imposed_on_the_kept_modalities_alone():
    data = load_data("mfeat", {"modalities": "FKZM", "missing": "mcar", "missing_rate": 0.4,
                               "missing_seed": 1})
    train = data.observed[data.splits["train"]].numpy()
    assert train.shape[1] == 4 and train.any(1).all()
    # 4 · 1,400 entries; the keep-one rule gives back one of four where all four dropped
    assert abs(1.0 - train.mean() - 0.4) < 4 * np.sqrt(0.24 / train.size) + 0.4 ** 4 / 4
    mar = load_data("mfeat", {"modalities": "KZM", "missing": "mar", "missing_rate": 0.4})
    assert mar.observed[mar.splits["train"], 0].all()  # K, the first kept, is the driver
    # mfeat's own default, the ADNI pattern, keeps the roles of the letters that remain
    pattern = load_data("mfeat", {"modalities": "FKZM"})
    assert pattern.meta["adni_roles"] == {"I": "K", "G": "", "C": "FM", "B": "Z"}
    train = pattern.observed[pattern.splits["train"]]
    assert train[:, [0, 3]].all()  # F and M play ADNI's always-observed clinical data


def test_the_option_is_in_the_key_only_when_given_and_in_any_order():
    assert "modalities" not in resolve_data("synthetic-adni")[1]
    assert resolve_data("synthetic-adni", {"modalities": None}) == resolve_data("synthetic-adni")
    small = {"scale": 0.1}
    (plain,) = build_grid(["tf"], "synthetic-adni", ["IG"], [0], data_options=small)
    (one,) = build_grid(["tf"], "synthetic-adni", ["IG"], [0],
                        data_options={**small, "modalities": "GIC"})
    (other,) = build_grid(["tf"], "synthetic-adni", ["IG"], [0],
                          data_options={**small, "modalities": "C,I,G"})
    assert one.key == other.key != plain.key
    assert one.data_options["modalities"] == "CGI"


def test_the_mechanisms_study_trains_on_the_kept_modalities():
    ac = planning.artefact_cells(catalogue.ARTEFACTS["mechanisms"],
                                planning.choose_dataset(spec.ANY, "mfeat"), "smoke",
                                options={"modalities": "FKZM"})
    assert {c.combo for c in ac.cells} == {"FKZM"}
    assert all(c.data_options["modalities"] == "FKMZ" for c in ac.cells)


@pytest.mark.parametrize("letters, message", [
    ("FF", "modalities='FF' must name each kept modality's letter once"),
    ("", "modalities='' must name each kept modality's letter once"),
])
def test_repeated_or_no_letters_are_refused(letters, message):
    with pytest.raises(SettingError, match=message):
        resolve_data("mfeat", {"modalities": letters})


def test_an_unknown_letter_is_one_line_before_training(capsys, tmp_path):
    store = tmp_path / "r.sqlite"
    code = main(["run", "--models", "tf", "--dataset", "synthetic-adni", "--data-option",
                 "scale=0.1", "--data-option", "modalities=IGX", "--store", str(store)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "unknown modality letter(s) 'X' for data set 'synthetic-adni'" in err
    assert not store.exists()
