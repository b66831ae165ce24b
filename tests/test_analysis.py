"""Figure 4's data: cosine similarities between the missing-modality bank's own entries."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch.nn.functional import cosine_similarity

from bench.registry import create_model
from bench.rendering import plots
from flexmoe.analysis import bank_similarity

TINY = {"hidden": 8, "num_patches": 2, "num_heads": 2, "top_k": 2}


def _model(run, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return create_model("flexmoe", run.spec, **{"num_experts": 2 ** len(run.spec.letters),
                                                **TINY, **overrides})


def _matrix(frame: pd.DataFrame, panel: str) -> pd.DataFrame:
    part = frame[frame["panel"] == panel]
    return part.pivot(index="row", columns="column", values="cosine").reindex(
        index=list(dict.fromkeys(part["row"])), columns=list(dict.fromkeys(part["column"])))


@pytest.fixture(scope="module")
def run(toy_data):
    return toy_data.restrict("ABC")  # combos ABC, AB, AC, BC, A, B, C: all in the train split


def _hand_bank(model, observed_noise: float = 100.0) -> None:
    """Read entries (modality missing in the combination): constant blocks of known value;
    never-read entries (modality observed): large noise that must not count."""
    values = {("AB", "C"): 1.0, ("AC", "B"): 1.0, ("BC", "A"): 1.0,
              ("A", "B"): 1.0, ("A", "C"): 1.0, ("B", "A"): 1.0, ("B", "C"): -1.0,
              ("C", "A"): 1.0, ("C", "B"): -2.0}
    letters, combos = model.spec.letters, model.spec.combos
    bank = observed_noise * torch.randn_like(model.bank)
    for (combo, modality), value in values.items():
        bank[combos.index(combo), letters.index(modality)] = value
    model.bank.data.copy_(bank)


def test_row_and_column_panels_equal_hand_computed_cosines(run):
    model = _model(run)
    _hand_bank(model)
    sim = bank_similarity(model)  # no data: every combination of the run is a row
    rows, cols = _matrix(sim, "row"), _matrix(sim, "column")
    # rows: a cosine runs over the modalities both combinations miss (P·H cancels)
    assert rows.loc["AB", "AC"] == 0.0  # AB misses C, AC misses B: nothing in common
    assert rows.loc["AB", "A"] == pytest.approx(1 / math.sqrt(2))  # share C: 1·1 / (1·√2)
    assert rows.loc["A", "B"] == pytest.approx(-1 / 2)  # share C: 1·(−1) / (√2·√2)
    assert rows.loc["A", "C"] == pytest.approx(-2 / math.sqrt(10))  # share B: 1·(−2)/(√2·√5)
    assert rows.loc["ABC"].isna().all() and rows["ABC"].isna().all()  # misses nothing
    # columns: over the combinations missing both modalities
    assert cols.loc["A", "B"] == pytest.approx(-2 / math.sqrt(18))  # C: 1·(−2) / (√3·√6)
    assert cols.loc["A", "C"] == pytest.approx(-1 / 3)  # B: 1·(−1) / (√3·√3)
    assert cols.loc["B", "C"] == pytest.approx(1 / math.sqrt(18))  # A: 1·1 / (√6·√3)


def test_panels_are_symmetric_with_unit_diagonal_and_labelled_in_order(run):
    model = _model(run)
    sim = bank_similarity(model, run)
    assert list(dict.fromkeys(sim["panel"])) == ["row", "column", "embedding"]
    assert list(sim.columns) == ["panel", "row", "column", "cosine", "samples"]
    rows, cols = _matrix(sim, "row"), _matrix(sim, "column")
    assert list(rows.index) == list(rows.columns) == list(run.spec.combos)  # largest first
    assert list(cols.index) == list(cols.columns) == list("ABC")
    for matrix in (rows.drop(index="ABC", columns="ABC"), cols):
        values = matrix.to_numpy()
        assert (abs(values - values.T) < 1e-12).all()
        assert (values.diagonal() == 1.0).all() and (abs(values) <= 1).all()
    counts = run.combo_counts("train")
    row_samples = sim[sim["panel"] == "row"].groupby("row")["samples"].first()
    assert row_samples.to_dict() == counts
    col_samples = sim[sim["panel"] == "column"].groupby("row")["samples"].first()
    assert col_samples["A"] == sum(n for c, n in counts.items() if "A" not in c)


def test_random_bank_matches_a_direct_computation(run):
    model = _model(run, seed=3)
    letters, combos = model.spec.letters, model.spec.combos
    sim = bank_similarity(model)
    bank = model.bank.detach().double()
    mask = torch.tensor([[c not in combo for c in letters] for combo in combos])
    read = bank * mask[:, :, None, None]
    rows, cols = _matrix(sim, "row"), _matrix(sim, "column")
    for i, a in enumerate(combos[1:], 1):
        for j, b in enumerate(combos[1:], 1):
            expected = cosine_similarity(read[i].flatten(), read[j].flatten(), dim=0)
            assert rows.loc[a, b] == pytest.approx(float(expected))
    for i, a in enumerate(letters):
        for j, b in enumerate(letters):
            expected = cosine_similarity(read[:, i].flatten(), read[:, j].flatten(), dim=0)
            assert cols.loc[a, b] == pytest.approx(float(expected))
    every = bank_similarity(model, entries="all")  # every entry as stored, init included
    expected = cosine_similarity(bank[0].flatten(), bank[3].flatten(), dim=0)
    assert _matrix(every, "row").loc["ABC", "BC"] == pytest.approx(float(expected))


def test_only_read_entries_count_and_the_encoders_do_not(run):
    """The paper's panels compare the bank with itself. The old function compared each
    entry with the mean encoder embedding: that survives only as the extra panel."""
    model = _model(run)
    _hand_bank(model)
    before = bank_similarity(model, run)
    _hand_bank(model)  # new noise in the never-read (observed) entries only
    with torch.no_grad():
        for p in model.tokenizer.parameters():
            p.add_(torch.randn_like(p))
    after = bank_similarity(model, run)
    bank_panels = before["panel"] != "embedding"
    pd.testing.assert_frame_equal(before[bank_panels], after[bank_panels])
    assert not before.loc[~bank_panels, "cosine"].equals(after.loc[~bank_panels, "cosine"])
    every = bank_similarity(model, entries="all")
    assert not _matrix(every, "row").equals(_matrix(bank_similarity(model), "row"))


def test_rows_are_the_combinations_in_the_data_and_columns_use_global_modalities(adni):
    data = adni.restrict("IGCB")
    model = _model(data, num_experts=16)
    present = data.combo_counts("train")
    sim = bank_similarity(model, data, embedding=False)
    assert set(sim["panel"]) == {"row", "column"}
    assert list(_matrix(sim, "row").index) == [c for c in model.spec.combos if c in present]
    small = adni.restrict("GB")  # G, B: global bank columns 1 and 3
    model = _model(small)
    with torch.no_grad():
        model.bank[:, [0, 2]] = 1e6 * torch.randn_like(model.bank[:, [0, 2]])  # not in run
    sim = bank_similarity(model, entries="all")
    bank = model.bank.detach().double()[:, [1, 3]]
    assert list(_matrix(sim, "column").index) == ["G", "B"]
    expected = cosine_similarity(bank[:, 0].flatten(), bank[:, 1].flatten(), dim=0)
    assert _matrix(sim, "column").loc["G", "B"] == pytest.approx(float(expected))


def test_no_bank_and_unknown_entries_are_refused(run):
    with pytest.raises(ValueError, match="no bank"):
        bank_similarity(_model(run, bank=False))
    with pytest.raises(ValueError, match="entries"):
        bank_similarity(_model(run), entries="observed")


def test_figure_draws_the_paper_panels_side_by_side_with_labels(run):
    model = _model(run)
    sim = bank_similarity(model, run)
    for frame, panels in ((sim[sim["panel"] != "embedding"], 2), (sim, 3)):
        fig = plots.bank_similarity(frame)
        fig.draw_without_rendering()  # runs the layout
        axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert len(axes) == panels and len(fig.axes) == panels + 1  # one shared colour bar
        row_ax, col_ax = axes[:2]
        assert "rows" in row_ax.get_title() and "columns" in col_ax.get_title()
        assert [t.get_text() for t in row_ax.get_yticklabels()] == list(run.spec.combos)
        assert [t.get_text() for t in row_ax.get_xticklabels()] == list(run.spec.combos)
        assert [t.get_text() for t in col_ax.get_xticklabels()] == list("ABC")
        for ax in axes:
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert row_ax.get_position().x1 <= col_ax.get_position().x0  # side by side
    assert "not in the paper" in axes[2].get_title()
