"""A run's identity: every setting that can change a number is in the key, checked before
anything trains; the profile's rules live in one place."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from bench import registry
from bench.cli.main import main
from bench.data.core import DataSpec
from bench.data.load import load_data, resolve_data
from bench.hparams import SettingError
from bench.identity import config
from bench.identity.config import build_grid
from bench.model import BenchModel
from bench.profiles import PROFILES, Profile, get_profile
from bench.rendering.tables import select_runs
from bench.results.store import load_results
from bench.training.run import execute
from tests.conftest import spec_of

SMALL = {"scale": 0.1}


def _key(**kw) -> str:
    args = {"models": ["tf"], "dataset": "synthetic-adni", "combos": ["IG"], "seeds": [0],
            "data_options": SMALL}
    args.update(kw)
    (cell,) = build_grid(**args)
    return cell.key


@pytest.mark.parametrize("name", registry.list_models())
def test_every_constructor_argument_is_in_the_resolved_configuration(name):
    spec = spec_of({"A": 8, "B": 6, "C": 4})
    hp = registry.resolve_hparams(name, spec)
    cls = registry.model_class(name)
    # but the settings added after runs were stored, at the value those runs had
    args = set(registry.constructor_args(cls)) - set(cls.hparams_added)
    assert args <= set(hp)
    assert set(hp) == args | set(registry.TRAIN_KEYS)
    json.dumps(hp)  # stored and hashed as JSON


def _probe_class(hidden: int) -> type:
    class Probe(BenchModel):
        def __init__(self, spec: DataSpec, hidden: int = hidden, depth: int = 1) -> None:
            super().__init__(spec)

    return Probe


def test_changing_a_constructor_default_changes_the_key(monkeypatch):
    monkeypatch.setitem(registry._models, "key-probe", _probe_class(64))
    before = _key(models=["key-probe"])
    monkeypatch.setitem(registry._models, "key-probe", _probe_class(32))
    (cell,) = build_grid(["key-probe"], "synthetic-adni", ["IG"], [0], data_options=SMALL)
    assert cell.key != before and cell.hparams["hidden"] == 32


def test_numbers_are_normalised_and_loader_defaults_filled():
    base = _key(data_options={}, profile="paper")  # the paper profile adds no option
    assert _key(data_options={"scale": 1}, profile="paper") == base
    assert _key(data_options={"scale": 1.0}, profile="paper") == base
    assert _key(data_options={"scale": "1.0"}, profile="paper") == base
    assert _key(overrides={"lr": 1e-4}) == _key(overrides={"lr": "0.0001"})
    assert _key(overrides={"dropout": 0}) == _key(overrides={"dropout": 0.0})
    _, opts = resolve_data("synthetic-adni", {"scale": 1})
    assert opts == {"scale": 1.0, "seed": 0, "split_file": None, "eval": "complete"}
    assert isinstance(opts["scale"], float)


def test_the_profile_is_part_of_the_key():
    same = {"overrides": {"epochs": 3}, "seeds": [0], "data_options": SMALL}
    assert _key(profile="quick", **same) != _key(profile="paper", **same)


def test_the_key_version_is_hashed(monkeypatch):
    before = _key()
    monkeypatch.setattr(config, "KEY_VERSION", config.KEY_VERSION + 1)
    assert _key() != before


def _folder(root, seed: int = 0):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"p{i}" for i in range(60)]
    pd.DataFrame({"id": ids, "label": [i % 2 for i in range(60)]}).to_csv(
        root / "labels.csv", index=False)
    for name, width in (("A_first", 3), ("B_second", 2)):
        x = pd.DataFrame(rng.normal(size=(60, width)).round(4),
                         columns=[f"f{k}" for k in range(width)])
        x.insert(0, "id", ids)
        x.to_csv(root / f"{name}.csv", index=False)
    return root


def test_one_byte_of_a_folder_file_changes_the_key_and_a_copy_keeps_it(tmp_path):
    root = _folder(tmp_path / "study")
    before = _key(dataset=f"folder:{root}", combos=["AB"], data_options={})
    copy = shutil.copytree(root, tmp_path / "elsewhere")
    assert _key(dataset=f"folder:{copy}", combos=["AB"], data_options={}) == before
    path = root / "A_first.csv"
    text = path.read_text()
    path.write_text(text[:-2] + ("1" if text[-2] != "1" else "2") + text[-1])
    assert _key(dataset=f"folder:{root}", combos=["AB"], data_options={}) != before


def test_a_relative_folder_path_is_the_same_data_set(tmp_path, monkeypatch):
    root = _folder(tmp_path / "study")
    absolute = build_grid(["tf"], f"folder:{root}", ["AB"], [0])[0]
    monkeypatch.chdir(tmp_path)
    relative = build_grid(["tf"], "folder:study", ["AB"], [0])[0]
    assert relative.key == absolute.key and relative.dataset == absolute.dataset


def test_folder_combinations_keep_the_users_modality_order(tmp_path):
    data = load_data(f"folder:{_folder(tmp_path / 'study')}")
    assert data.check_letters("BA") == "BA"
    assert data.spec("BA").letters == "BA" and data.restrict("BA").spec.letters == "BA"
    (ab,) = build_grid(["tf"], data.name, ["AB"], [0])
    (ba,) = build_grid(["tf"], data.name, ["BA"], [0])
    assert ab.key != ba.key
    assert load_data("synthetic-adni", SMALL).check_letters("GI") == "IG"  # canonical there


def test_data_changed_after_the_grid_was_resolved_fails_that_run(tmp_path):
    root = _folder(tmp_path / "study")
    (cell,) = build_grid(["tf"], f"folder:{root}", ["AB"], [0], overrides={"epochs": 1})
    _folder(root, seed=1)
    row = execute(cell)
    assert row["status"] == "failed" and "changed since the grid was resolved" in row["error"]


def test_profiles_own_their_rules():
    quick, paper = get_profile("quick"), get_profile("paper")
    assert quick.default_combos("IGCB") == ["IGCB"]
    assert paper.default_combos("IGCB")[:2] == ["IG", "IC"] and len(paper.default_combos(
        "IGCB")) == 11
    assert quick.options_for("synthetic-adni", {"seed": 1}) == {"seed": 1}
    assert paper.options_for("synthetic-adni") == {}
    assert quick.train_settings() == {"epochs": 10} and paper.train_settings() == {}
    # a costly model gets its own schedule on top of the shared one
    assert quick.train_settings("fusemoe") == {"epochs": 3}
    assert quick.train_settings("mult") == {"epochs": 6, "batch_size": 32, "lr": 1e-3}
    for profile in PROFILES.values():  # the description is generated from the rules
        text = profile.describe()
        assert ", ".join(map(str, profile.seeds)) in text
        epochs = profile.train.get("epochs")
        assert (f"{epochs} epochs" in text) == (epochs is not None)
        for model, train in profile.model_train.items():
            assert f"{model}: " in text and all(f"{v:g}" in text for v in train.values())
    with pytest.raises(ValueError, match="combination rule 'some'"):
        Profile("odd", "a test", {}, (0,), "some")


def test_a_profile_schedule_of_a_model_reaches_its_ablations():
    spec = spec_of({"A": 10, "B": 10})
    base = registry.resolve_hparams("flexmoe", spec, profile="quick")
    variant = registry.resolve_hparams("flexmoe-no-bank", spec, profile="quick")
    assert base["epochs"] == variant["epochs"] == 10 and base["lr"] == variant["lr"] == 3e-4
    assert registry.resolve_hparams("mult", spec, profile="quick")["lr"] == 1e-3
    assert registry.resolve_hparams("mult", spec, {"lr": 0.01}, "quick")["lr"] == 0.01


@pytest.mark.parametrize("setting, expected", [
    ("epochs=abc", "model 'tf': epochs='abc' is not valid; expected an integer"),
    ("epochs=1.5", "epochs=1.5 is not valid; expected an integer"),
    ("epochs=0", "epochs=0 is out of range; expected an integer ≥ 1"),
    ("lr=0", "lr=0 is out of range; expected a number > 0"),
    ("lr=-1", "lr=-1 is out of range"),
    ("batch_size=0", "batch_size=0 is out of range"),
    ("dropout=2.5", "dropout=2.5 is out of range; expected a number in [0, 1)"),
    ("missing_fill=bogus", "expected one of 'zero_embed', 'zero_input'"),
    ("subnet_dim=abc", "subnet_dim='abc' is not valid; expected an integer"),
    ("batchnorm=maybe", "expected true or false"),
])
def test_a_bad_setting_is_one_clear_line_before_anything_trains(tmp_path, capsys, setting,
                                                                 expected):
    store = tmp_path / "r.sqlite"
    code = main(["run", "--models", "tf", "--combos", "IG", "--set", setting,
                 "--store", str(store)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not store.exists()  # no failed row stored for a configuration error


@pytest.mark.parametrize("args, expected", [
    (["--data-option", "foo=1"], "data set 'synthetic-adni' has no option 'foo'"),
    (["--data-option", "scale=abc"], "scale='abc' is not valid; expected a number"),
    (["--data-option", "scale=0"], "scale=0 is out of range"),
    (["--data-option", "scale"], "--data-option expects KEY=VALUE, got 'scale'"),
    (["--combos", ""], "the list of combinations is empty"),
    (["--combos", "IX"], "unknown modality letter(s) 'X'"),
    (["--seeds", ""], "the list of seeds is empty"),
    (["--seeds", "-1"], "seed=-1 is out of range"),
    (["--models", ""], "the list of models is empty"),
    (["--models", "nope"], "unknown model 'nope'"),
    (["--jobs", "0"], "--jobs must be at least 1, got 0"),
    (["--device", "gpu"], "unknown device 'gpu'; use auto, cpu, cuda or cuda:N"),
    (["--split-seed", "x"], "argument --split-seed"),
    (["--dataset", "nope"], "unknown data set 'nope'"),
])
def test_bad_arguments_are_one_clear_line_with_exit_code_2(tmp_path, capsys, args, expected):
    store = tmp_path / "r.sqlite"
    base = ["run", "--models", "tf", "--combos", "IG", "--store", str(store)]
    code = main(base + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not store.exists()


def test_reproduce_with_an_empty_table_list_is_refused(tmp_path, capsys):
    assert main(["reproduce", "--table", "", "--store", str(tmp_path / "r.sqlite")]) == 2
    assert "--table is empty" in capsys.readouterr().err


def test_dry_run_prints_the_whole_configuration(capsys):
    assert main(["run", "--models", "tf", "--combos", "IG", "--dry-run"]) == 0
    out = capsys.readouterr().out  # configurations (JSON lines), then the cost estimate
    (record,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert record["hparams"]["missing_fill"] == "zero_embed" and record["hparams"]["epochs"] == 10
    assert record["data_digest"] and record["split_digest"] and record["v"] == config.KEY_VERSION
    assert record["key"] == build_grid(["tf"], "synthetic-adni", ["IG"], [0])[0].key


def test_list_datasets_shows_each_loaders_options(capsys):
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "options (--data-option): seed=0, scale=1.0, split_file=None" in out
    assert "standardize=True" in out


def test_tables_leave_out_rows_of_an_older_key_version():
    row = {"status": "ok", "dataset": "synthetic-adni", "profile": "quick", "model": "tf",
           "combo": "IG", "seed": 0, "test_acc": 0.5, "hparams": {}}
    old = pd.DataFrame([{**row, "key": "a", "key_version": 1}])
    with pytest.raises(ValueError, match="only runs keyed by an older version"):
        select_runs(old)
    both = pd.concat([old, pd.DataFrame([{**row, "key": "b",
                                          "key_version": config.KEY_VERSION}])])
    assert select_runs(both)[0]["key"].tolist() == ["b"]


def test_list_models_shows_every_setting(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "missing_fill=zero_embed" in out and "attn_residual=official" in out


def test_a_quick_then_a_paper_run_of_the_same_settings_are_two_runs(tmp_path, capsys):
    args = ["run", "--models", "tf", "--combos", "IG", "--seeds", "0", "--set", "epochs=1",
            "--store", str(tmp_path / "r.sqlite")]
    assert main(args) == 0
    assert "1 run(s) written" in capsys.readouterr().out
    assert main(args + ["--profile", "paper", "--data-option", "scale=0.1"]) == 0
    out = capsys.readouterr().out
    assert "1 run(s) written" in out and "profile paper" in out
    rows = load_results(tmp_path / "r.sqlite")
    assert sorted(rows["profile"]) == ["paper", "quick"]
    assert (rows["key_version"] == config.KEY_VERSION).all()
    assert all(r["key"] == row_key for r, row_key in zip(rows["config"], rows["key"]))


def test_resolve_data_refuses_an_ill_typed_option():
    with pytest.raises(SettingError, match=r"mfeat.*missing_rate=2 is out of range.*\[0, 1\)"):
        resolve_data("mfeat", {"missing_rate": 2})
    with pytest.raises(SettingError, match="missing='sometimes' is not valid"):
        resolve_data("mfeat", {"missing": "sometimes"})


def test_no_machine_path_in_the_key(tmp_path):
    root = _folder(tmp_path / "study")
    (cell,) = build_grid(["tf"], f"folder:{root}", ["AB"], [0])
    assert str(tmp_path) not in json.dumps(cell.identity())
    assert str(root) in cell.record()["dataset"]
    assert os.path.isabs(cell.dataset.split(":", 1)[1])
