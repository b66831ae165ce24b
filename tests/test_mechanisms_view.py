"""The ``mechanisms`` artefact: its grid, data-set choice, captions, table and figure on a tiny
hand-made store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.artefacts import mechanisms_view, planning, spec, views
from bench.artefacts.catalogue import ARTEFACTS, select
from bench.artefacts.spec import ArtefactCells, DatasetChoice
from bench.identity.config import build_grid
from bench.rendering import plots

MODELS = ["flexmoe", "tf"]


@pytest.fixture
def cells(monkeypatch) -> ArtefactCells:
    """The artefact on mfeat with two registered models (smoke profile: seed 0)."""
    monkeypatch.setattr(planning.registry, "list_models", lambda: MODELS)
    return planning.artefact_cells(ARTEFACTS["mechanisms"], DatasetChoice("mfeat", False),
                                  "smoke", options={"missing": "mar", "missing_seed": 3})


def _store(ac: ArtefactCells) -> pd.DataFrame:
    """One finished run per cell: accuracy falls with the rate, TF 5 points below Flex-MoE."""
    rows = []
    for sweep, cs in ac.sweeps:
        for c in cs:
            acc = 0.9 - (sweep.value or 0.0) * 0.5 - (0.05 if c.model == "tf" else 0.0)
            rows.append({"key": c.key, "model": c.model, "combo": c.combo, "seed": c.seed,
                         "status": "ok", "error": None, "test_acc": acc, "device": "cpu",
                         "device_name": "test", "threads": 1, "epochs": 3, "batch_size": 8,
                         "lr": 1e-4, "code_version": "abc"})
    return pd.DataFrame(rows)


def test_the_grid_is_rate_zero_once_then_each_mechanism_and_rate(cells):
    labels = [mechanisms_view.column(s) for s, _ in cells.sweeps]
    assert labels == ["0 (none)"] + [f"{m} {r}" for m in ("mcar", "mar", "mnar")
                                     for r in (0.2, 0.4, 0.6)]
    assert set(cells.unregistered) == set(spec.ADNI_MODELS + spec.EXTRA_MODELS) - set(
        MODELS)
    for sweep, cs in cells.sweeps:
        assert sweep.combos == ("FAKPZM",) and {c.combo for c in cs} == {"FAKPZM"}
        options = cs[0].data_options
        if sweep.axis == "none":  # the sweep's mechanism wins over --data-option's
            assert options == {"eval": "complete", "missing": "none"}
        else:
            assert options == {"eval": "complete", "missing": sweep.axis,
                               "missing_rate": sweep.value, "missing_seed": 3}
    assert len({c.key for c in cells.cells}) == 2 * 10


def test_the_dataset_is_the_one_named_else_mfeat():
    arts = select("1,mechanisms")
    assert planning.assign_datasets(select("mechanisms"), [])["any"].name == "mfeat"
    chosen = planning.assign_datasets(arts, ["synthetic-adni"])
    assert chosen["any"].name == chosen["adni"].name == "synthetic-adni"
    assert planning.assign_datasets(select("mechanisms"), ["synthetic-mimic"])["any"].name == \
        "synthetic-mimic"


def test_the_default_is_mfeats_three_narrowest_views_and_a_named_mfeat_has_all(monkeypatch):
    monkeypatch.setattr(planning.registry, "list_models", lambda: MODELS)
    default = planning.assign_datasets(select("mechanisms"), [])["any"]
    assert default.options == {"modalities": "KZM"}
    ac = planning.artefact_cells(ARTEFACTS["mechanisms"], default, "smoke")
    assert {c.combo for c in ac.cells} == {"KZM"}
    assert all(c.data_options["modalities"] == "KMZ" for c in ac.cells)
    view = mechanisms_view.mechanisms_view(ac, _store(ac), "smoke")
    assert "by default its views K, Z, M alone (modalities=KZM" in view.caption
    assert "modalities=KMZ" in view.caption  # every run's shared data options
    named = planning.assign_datasets(select("mechanisms"), ["mfeat"])["any"]
    full = planning.artefact_cells(ARTEFACTS["mechanisms"], named, "smoke")
    assert {c.combo for c in full.cells} == {"FAKPZM"}
    mine = planning.artefact_cells(ARTEFACTS["mechanisms"], default, "smoke",
                                  options={"modalities": "FA"})  # the user's options win
    assert {c.combo for c in mine.cells} == {"FA"}


def test_rate_zero_runs_are_the_runs_without_imposed_missingness(monkeypatch):
    monkeypatch.setattr(planning.registry, "list_models", lambda: MODELS)
    ac = planning.artefact_cells(ARTEFACTS["mechanisms"], DatasetChoice("synthetic-adni", False),
                                "smoke")
    plain = build_grid(MODELS, "synthetic-adni", ["IGCB"], [0], "smoke")
    assert {c.key for c in ac.sweeps[0][1]} == {c.key for c in plain}


def test_captions_state_the_mechanism_rate_and_seed_and_never_the_default(monkeypatch):
    monkeypatch.setattr(planning.registry, "list_models", lambda: MODELS)
    frame = pd.DataFrame(columns=["status", "seed"])
    for options, shown in (({}, None), ({"missing": "mnar", "missing_rate": 0.4},
                                         "missing=mnar, missing_rate=0.4, missing_seed=0")):
        cs = build_grid(["tf"], "synthetic-adni", ["IG"], [0], "smoke", data_options=options)
        ac = ArtefactCells(ARTEFACTS["table1"], DatasetChoice("synthetic-adni", False),
                           [(ARTEFACTS["table1"].sweeps[0], cs)], ())
        text = views.caption(ac, frame, "smoke")
        assert ("missing" not in text) if shown is None else (shown in text), text


def test_table_rows_models_columns_mechanism_by_rate(cells, monkeypatch):
    monkeypatch.setattr(mechanisms_view, "context_metric",
                        lambda rows, metric: {rows["combo"].iloc[0]: {
                            "majority class": 0.1, "logistic regression": 0.5}})
    view = mechanisms_view.mechanisms_view(cells, _store(cells), "smoke")
    (panel,) = view.panels
    assert list(panel.mean.columns)[:2] == ["0 (none)", "mcar 0.2"]
    assert panel.mean.loc["Flex-MoE", "mnar 0.6"] == pytest.approx(60.0)
    assert panel.mean.loc["TF", "0 (none)"] == pytest.approx(85.0)
    assert np.isnan(panel.mean.loc["MulT", "mar 0.4"])
    assert panel.notes.loc["MulT", "mar 0.4"] == views.UNREGISTERED
    assert panel.mean.loc["(logistic regression)", "mcar 0.4"] == pytest.approx(50.0)
    assert panel.ranks().loc["Flex-MoE", "mar 0.2"] == 1
    assert "missing_seed=3" in view.caption and "here F (fourier)" in view.caption
    assert "mfeat is this table's default data set" in view.caption
    assert "Data set mfeat (eval=complete)." in view.caption  # the varying options: columns


def test_figure_one_panel_per_mechanism_from_the_shared_rate_zero(cells, tmp_path):
    data = mechanisms_view.mechanisms_data(cells, _store(cells))
    assert list(data.columns) == list(mechanisms_view.TIDY)
    flex = data[(data["model"] == "Flex-MoE") & (data["mechanism"] == "mar")]
    assert flex["rate"].tolist() == [0.0, 0.2, 0.4, 0.6]
    assert flex["mean"].tolist() == pytest.approx([90.0, 80.0, 70.0, 60.0])
    fig = plots.accuracy_vs_missing_rate(data)
    assert [ax.get_title() for ax in fig.axes] == ["mcar", "mar", "mnar"]
    assert all(ax.get_xlabel() for ax in fig.axes) and fig.axes[0].get_ylabel()
    (png,) = mechanisms_view.write_figure(cells, _store(cells), tmp_path)
    assert png.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "mechanisms-curves.csv").is_file()
    assert mechanisms_view.write_figure(cells, _store(cells).iloc[:0], tmp_path) == []


def test_a_rate_mar_cannot_reach_is_left_out_with_its_reason(monkeypatch):
    monkeypatch.setattr(planning.registry, "list_models", lambda: MODELS)
    monkeypatch.setattr(mechanisms_view, "context_metric", lambda rows, metric: {})
    ac = planning.artefact_cells(ARTEFACTS["mechanisms"],
                                DatasetChoice("synthetic-mimic", False), "smoke")
    ((index, reason),) = ac.skipped.items()
    assert ac.sweeps[index][0].axis == "mar" and ac.sweeps[index][1] == []
    assert "keeps the driver modality 'L'" in reason
    (panel,) = mechanisms_view.mechanisms_view(ac, _store(ac), "smoke").panels
    assert np.isnan(panel.mean.loc["TF", "mar 0.6"])
    assert panel.notes.loc["TF", "mar 0.6"] == f"not run: {reason}"
    assert panel.mean.loc["TF", "mar 0.4"] == pytest.approx(65.0)
