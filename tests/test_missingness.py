"""Missingness mechanisms imposed on the training split (``bench.data.missingness``): realised
rates, what ``mar`` and ``mnar`` depend on, the keep-one rule, the ADNI pattern, run keys and
the errors of bad values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bench.artefacts.reference import ci_cells, reference_dir
from bench.cli.main import main
from bench.data import missingness
from bench.data.load import load_data, resolve_data
from bench.data.missingness import modality_scores, simulate
from bench.data.synthetic_adni import COMBINATION_COUNTS
from bench.hparams import SettingError
from bench.identity.config import build_grid

LETTERS = "ABCDEF"
N, N_TRAIN = 3000, 2000
TRAIN = np.arange(N_TRAIN)


def _arrays(observed_share: tuple[float, ...] = (1.0,) * 6, seed: int = 0):
    """Independent standard-normal features (five per modality) and an observed mask with
    the given share per modality; evaluation rows (from N_TRAIN on) fully observed."""
    rng = np.random.default_rng(seed)
    features = {c: rng.normal(size=(N, 5)).astype(np.float32) for c in LETTERS}
    observed = rng.random((N, len(LETTERS))) < np.array(observed_share)
    observed[~observed.any(1), 0] = True
    observed[N_TRAIN:] = True
    return observed, features


def _dropped(before: np.ndarray, after: np.ndarray) -> float:
    return float((before[TRAIN] & ~after[TRAIN]).sum() / before[TRAIN].sum())


def _within(realised: float, rate: float, entries: int, slack: float = 0.0) -> bool:
    """Within four standard errors of ``rate`` (plus ``slack``, e.g. what keep-one gives back)."""
    return abs(realised - rate) <= 4.0 * np.sqrt(rate * (1 - rate) / entries) + slack


@pytest.mark.parametrize("mechanism", ["mcar", "mar", "mnar"])
@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_realised_rate_matches_the_rate(mechanism, rate):
    observed, features = _arrays()
    after = simulate(observed, features, TRAIN, LETTERS, mechanism, rate, seed=1)
    # the keep-one rule gives back one of six entries where all six were dropped
    assert _within(_dropped(observed, after), rate, observed[TRAIN].sum(), rate ** 6 / 6)


def test_mcar_rate_on_mfeat_and_nothing_else_changes():
    base = load_data("mfeat", {"missing": "none"})
    data = load_data("mfeat", {"missing": "mcar", "missing_rate": 0.3, "missing_seed": 2})
    train = data.splits["train"]
    before, after = base.observed[train].numpy(), data.observed[train].numpy()
    assert before.all()
    assert _within(1 - after.mean(), 0.3, before.size)
    for part in ("val", "test"):
        rows = data.splits[part]
        assert torch.equal(data.observed[rows], base.observed[rows])
        for c in data.letters:
            assert torch.equal(data.features[c][rows], base.features[c][rows])
    lost = torch.from_numpy(before & ~after)
    for j, c in enumerate(data.letters):
        assert (data.features[c][train][lost[:, j]] == 0).all()
        kept = ~lost[:, j]
        assert torch.equal(data.features[c][train][kept], base.features[c][train][kept])
    assert base.observed.all()  # the cached data set is untouched


def test_mnar_depends_on_each_modalitys_own_value():
    observed, features = _arrays()
    after = simulate(observed, features, TRAIN, LETTERS, "mnar", 0.4, seed=0)
    scores = modality_scores(features, observed, TRAIN, LETTERS)
    drop = observed[TRAIN] & ~after[TRAIN]
    for j in range(len(LETTERS)):
        own = scores[drop[:, j], j].mean() - scores[~drop[:, j], j].mean()
        other = (j + 1) % len(LETTERS)
        cross = scores[drop[:, j], other].mean() - scores[~drop[:, j], other].mean()
        assert own > 0.8 and abs(cross) < 0.15, (j, own, cross)


def test_mnar_label_depends_on_the_label_and_not_on_the_values():
    observed, features = _arrays()
    labels = np.random.default_rng(1).integers(0, 3, N)
    after = simulate(observed, features, TRAIN, LETTERS, "mnar-label", 0.3, seed=0,
                     labels=labels)
    assert _within(_dropped(observed, after), 0.3, observed[TRAIN].sum(), 0.3 ** 6 / 6)
    drop = (observed[TRAIN] & ~after[TRAIN]).mean(1)
    by_class = [drop[labels[TRAIN] == k].mean() for k in range(3)]
    assert 3 * by_class[0] < by_class[1] and 3 * by_class[1] < by_class[2], by_class
    scores = modality_scores(features, observed, TRAIN, LETTERS)
    lost = observed[TRAIN] & ~after[TRAIN]
    for j in range(len(LETTERS)):
        own = scores[lost[:, j], j].mean() - scores[~lost[:, j], j].mean()
        assert abs(own) < 0.15, (j, own)
    # the values play no part: other features, the same mask
    _, others = _arrays(seed=7)
    assert (simulate(observed, others, TRAIN, LETTERS, "mnar-label", 0.3, seed=0,
                     labels=labels) == after).all()
    with pytest.raises(ValueError, match="mnar-label needs the samples' labels"):
        simulate(observed, features, TRAIN, LETTERS, "mnar-label", 0.3)


def test_mnar_label_on_a_data_set_follows_its_classes():
    data = load_data("synthetic-adni", {"scale": 0.5, "missing": "mnar-label",
                                        "missing_rate": 0.3})
    base = load_data("synthetic-adni", {"scale": 0.5})
    train = data.splits["train"]
    lost = (base.observed[train] & ~data.observed[train]).float().mean(1)
    y = data.labels[train]
    assert lost[y == 0].mean() < lost[y == 1].mean() < lost[y == 2].mean()


def test_mar_keeps_the_driver_and_depends_on_its_value_only():
    observed, features = _arrays((0.95, 0.8, 0.8, 0.8, 0.8, 0.8))
    assert missingness.mar_driver(observed[TRAIN]) == 0
    after = simulate(observed, features, TRAIN, LETTERS, "mar", 0.3, seed=0)
    assert (after[TRAIN, 0] == observed[TRAIN, 0]).all()  # the driver is never dropped
    assert _within(_dropped(observed, after), 0.3, observed[TRAIN].sum())
    scores = modality_scores(features, observed, TRAIN, LETTERS)
    drop = observed[TRAIN] & ~after[TRAIN]
    has_driver = observed[TRAIN, 0]
    for j in range(1, len(LETTERS)):
        seen = observed[TRAIN, j] & has_driver
        d, k = drop[seen, j], ~drop[seen, j]
        driver = scores[seen, 0][d].mean() - scores[seen, 0][k].mean()
        own = scores[seen, j][d].mean() - scores[seen, j][k].mean()
        assert driver > 0.8 and abs(own) < 0.15, (j, driver, own)
    flat = observed[TRAIN] & ~has_driver[:, None]  # no driver: the flat mean probability
    assert 0.25 < drop[flat].mean() < 0.6


def test_mar_ties_go_to_the_first_modality_and_too_high_a_rate_is_refused():
    observed, features = _arrays()
    assert missingness.mar_driver(observed[TRAIN]) == 0
    with pytest.raises(ValueError, match="driver modality 'A'.*at most 0.833"):
        simulate(observed, features, TRAIN, LETTERS, "mar", 0.9)


def test_keep_one_rule_and_samples_only_lose_modalities():
    observed, features = _arrays((0.7, 0.5, 0.9, 0.6, 0.8, 0.4))
    for mechanism in ("mcar", "mar", "mnar", "mnar-label", "pattern=adni"):
        letters = LETTERS if mechanism != "pattern=adni" else "ABCD"
        obs = observed[:, :len(letters)].copy()
        obs[~obs.any(1), 0] = True
        rate = 0.6 if mechanism != "mar" else 0.5
        after = simulate(obs, features, TRAIN, letters, mechanism, rate, seed=3,
                         labels=np.arange(N) % 3)
        assert not (after & ~obs).any(), mechanism  # never gains
        assert after.any(1).all(), mechanism  # keeps one
        assert (after[N_TRAIN:] == obs[N_TRAIN:]).all(), mechanism  # evaluation rows untouched
    before = np.ones((N, 3), dtype=bool)
    after = simulate(before, {}, TRAIN, "ABC", "mcar", 0.95, seed=0)
    assert after.any(1).all() and (after[TRAIN].sum(1) == 1).mean() > 0.8


def test_the_same_seed_gives_the_same_mask_and_another_seed_another():
    observed, features = _arrays()
    one = simulate(observed, features, TRAIN, LETTERS, "mnar", 0.3, seed=5)
    assert (one == simulate(observed, features, TRAIN, LETTERS, "mnar", 0.3, seed=5)).all()
    assert (one != simulate(observed, features, TRAIN, LETTERS, "mnar", 0.3, seed=6)).any()


def test_adni_pattern_gives_adnis_shares():
    n = sum(COMBINATION_COUNTS.values())
    rows = np.arange(n)
    after = simulate(np.ones((n, 4), dtype=bool), {}, rows, "IGCB", "adni", seed=0)
    combos = ["".join(c for c, o in zip("IGCB", row) if o) for row in after]
    assert {c: combos.count(c) for c in set(combos)} == COMBINATION_COUNTS
    other = simulate(np.ones((n, 4), dtype=bool), {}, rows, "WXYZ", "pattern=adni", seed=0)
    assert (other == after).all()  # four other letters take I, G, C, B in order


def test_mfeat_defaults_to_the_adni_pattern_through_its_role_map():
    assert resolve_data("mfeat")[1] == {"eval": "complete", "missing": "pattern=adni",
                                        "missing_seed": 0}
    data = load_data("mfeat")
    train = data.observed[data.splits["train"]]
    combos = {}
    for row in train.tolist():
        key = "".join(c for c, o in zip(data.letters, row) if o)
        combos[key] = combos.get(key, 0) + 1
    assert combos == {"FAKPZM": 870, "FM": 281, "FKPM": 92, "FKPZM": 74, "FAZM": 71, "FZM": 12}


def test_options_that_do_not_apply_stay_out_of_the_key():
    plain = resolve_data("synthetic-adni")[1]
    assert resolve_data("synthetic-adni", {"missing": "none"})[1] == plain
    assert resolve_data("synthetic-adni", {"missing": "adni"})[1] == {
        **plain, "missing": "pattern=adni", "missing_seed": 0}
    assert resolve_data("mfeat", {"missing": "none"})[1] == {
        "eval": "complete", "missing": "none"}
    # given where they cannot apply, they are an error rather than silently ignored
    for options in ({"missing": "none", "missing_rate": 0.5}, {"missing_seed": 3},
                    {"missing": "adni", "missing_rate": 0.5}):
        with pytest.raises(SettingError, match="has no effect with missing="):
            resolve_data("synthetic-adni", options)
    small = {"scale": 0.1}
    (none,) = build_grid(["tf"], "synthetic-adni", ["IG"], [0], data_options=small)
    (mcar,) = build_grid(["tf"], "synthetic-adni", ["IG"], [0],
                         data_options={**small, "missing": "mcar", "missing_rate": 0.2})
    assert none.key != mcar.key
    assert mcar.identity()["data_options"] == {**none.identity()["data_options"],
                                               "missing": "mcar", "missing_rate": 0.2,
                                               "missing_seed": 0}


def test_keys_of_the_default_grid_are_unchanged():
    """The committed reference results (``run_bench.py check``) keep matching their runs."""
    reference = json.loads((reference_dir() / "synthetic-adni.json").read_text())
    runs = [r for r in reference["runs"] if not r["model"].startswith("(")]  # context lines
    expected = {(r["model"], r["combo"], r["seed"]): r["key"] for r in runs}
    models = sorted({r["model"] for r in runs})  # not models other tests add
    cells = ci_cells(models, {"synthetic-adni": ("IG", "IGCB")})
    assert {(c.model, c.combo, c.seed): c.key for c in cells} == expected


def test_folder_data_take_the_options(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(200)]
    pd.DataFrame({"id": ids, "label": [i % 2 for i in range(200)]}).to_csv(
        tmp_path / "labels.csv", index=False)
    for name in ("W_one", "X_two", "Y_three", "Z_four"):
        x = pd.DataFrame(rng.normal(size=(200, 3)).round(4), columns=["a", "b", "c"])
        x.insert(0, "id", ids)
        x.to_csv(tmp_path / f"{name}.csv", index=False)
    name = f"folder:{tmp_path}"
    base = load_data(name)
    for options in ({"missing": "mcar", "missing_rate": 0.5}, {"missing": "pattern=adni"}):
        data = load_data(name, options)
        train = data.splits["train"]
        assert not data.observed[train].all() and data.observed[train].any(1).all()
        for part in ("val", "test"):
            assert data.observed[data.splits[part]].all()
        assert torch.equal(data.splits["train"], base.splits["train"])
    (cell,) = build_grid(["tf"], name, ["WXYZ"], [0], data_options={"missing": "mnar"})
    assert cell.data_options["missing"] == "mnar" and cell.data_options["missing_rate"] == 0.3


@pytest.mark.parametrize("options, message", [
    ({"missing": "sometimes"}, "missing='sometimes' is not valid; expected one of 'none', "
                               "'mcar', 'mar', 'mnar', 'mnar-label', 'pattern=adni', 'adni'"),
    ({"missing": "mcar", "missing_rate": 1}, r"missing_rate=1 is out of range; expected a "
                                             r"number in \[0, 1\)"),
    ({"missing": "mcar", "missing_seed": -1}, "missing_seed=-1 is out of range"),
])
def test_bad_values_are_one_clear_error(options, message):
    with pytest.raises(SettingError, match=message):
        resolve_data("synthetic-adni", options)


def test_pattern_on_three_modalities_is_refused_before_training(capsys, tmp_path):
    with pytest.raises(ValueError, match="'synthetic-mimic': missing=pattern=adni needs four "
                                         "modalities"):
        load_data("synthetic-mimic", {"scale": 0.1, "missing": "pattern=adni"})
    code = main(["run", "--models", "tf", "--dataset", "synthetic-mimic", "--data-option",
                 "scale=0.1", "--data-option", "missing=adni", "--store",
                 str(tmp_path / "r.sqlite")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pattern=adni needs four modalities (mapped in order onto ADNI's I, G, C, B)" in err
    assert not (tmp_path / "r.sqlite").exists()
    with pytest.raises(ValueError, match="unknown missingness mechanism 'often'; accepted: "
                                         "none, mcar, mar, mnar, mnar-label, pattern=adni"):
        missingness.normalise("often")
