"""Presets: each table's grid in the paper's order, the data-set choice, shared runs."""

from __future__ import annotations

import logging

import pytest

from bench.artefacts import planning, spec
from bench.artefacts.catalogue import ARTEFACTS, select
from bench.artefacts.spec import ADNI_COMBOS, MODEL_LABELS, DatasetChoice
from bench.artefacts.views import published
from bench.errors import UserError


def test_adni_tables_have_the_papers_rows_and_columns():
    for number in (1, 7, 8):
        art = ARTEFACTS[f"table{number}"]
        (sweep,) = art.sweeps
        assert sweep.combos == ADNI_COMBOS and len(sweep.combos) == 11
        assert [spec.model_label(m) for m in sweep.models] == [
            "[59] Venugopalan", "[33] Lee", "ShaSpec", "mmFormer", "TF", "MulT", "MAG",
            "LIMoE", "FuseMoE", "Flex-MoE", "I2MoE"]
    for number in (2, 9, 10):
        (sweep,) = ARTEFACTS[f"table{number}"].sweeps
        assert sweep.combos == ("LN", "LC", "NC", "LNC")
        assert sweep.models == ("tf", "mult", "mag", "limoe", "fusemoe", "flexmoe", "i2moe")


@pytest.mark.parametrize("art", [a for a in ARTEFACTS.values() if a.paper_file])
def test_published_numbers_cover_every_cell_of_their_table(art):
    paper = published(art.paper_file)
    (sweep,) = art.sweeps
    if art.kind == "ablation":
        assert list(paper["variant"]) == list(spec.ABLATIONS.values())
        return
    names = {MODEL_LABELS[m][1] for m in sweep.models} - {None}
    cells = {(c, m) for c in sweep.combos for m in names}
    assert cells == set(zip(paper["combo"], paper["model"]))


def test_select_names_tables_and_figures():
    assert [a.id for a in select("1, table4,fig6")] == ["table1", "table4", "fig6"]
    assert [a.id for a in select("all")] == [a for a in ARTEFACTS if a != "mechanisms"]
    assert [a.id for a in select("mechanisms")] == ["mechanisms"]
    with pytest.raises(UserError, match="unknown table or figure '5'"):
        select("5")


def test_sensitivity_maps_smoe_layers_to_alternating_fusion_layers():
    sweeps = [s for s in ARTEFACTS["fig6"].sweeps if s.axis == "number of SMoE layers"]
    assert [s.overrides for s in sweeps] == [{"num_layers": 1}, {"num_layers": 3},
                                             {"num_layers": 5}]
    assert [s.value for s in sweeps] == [1, 2, 3]


def test_missing_real_data_falls_back_to_synthetic_loudly(monkeypatch, caplog):
    monkeypatch.setattr(planning.registry, "list_datasets", lambda: ["synthetic-adni"])
    with caplog.at_level(logging.WARNING):
        choice = planning.choose_dataset("adni")
    assert choice == DatasetChoice("synthetic-adni", False, choice.note, choice.reason)
    assert "not configured" in choice.note and "'adni'" in choice.note
    assert "ADNI tables use synthetic-adni" in caplog.text


def test_real_data_is_used_when_it_loads_and_refused_when_it_does_not(monkeypatch):
    monkeypatch.setattr(planning.registry, "list_datasets", lambda: ["adni", "mimic"])

    def load(name):
        if name == "mimic":
            raise FileNotFoundError("no MIMIC-IV directory at data/mimic")
    monkeypatch.setattr(planning, "load_data", load)
    assert planning.choose_dataset("adni") == DatasetChoice("adni", True)
    fallback = planning.choose_dataset("mimic")
    assert fallback.name == "synthetic-mimic" and "no MIMIC-IV directory" in fallback.reason
    assert planning.choose_dataset("mimic", "mimic").real


def test_dataset_of_another_family_is_refused():
    with pytest.raises(ValueError, match="is a mimic data set"):
        planning.assign_datasets(select("1"), ["synthetic-mimic"])


def test_unregistered_models_are_named_and_tables_share_runs(monkeypatch):
    known = ["flexmoe", "tf"]
    monkeypatch.setattr(planning.registry, "list_models", lambda: known)
    choice = DatasetChoice("synthetic-adni", False, "stand-in")
    t1 = planning.artefact_cells(ARTEFACTS["table1"], choice, "smoke")
    t4 = planning.artefact_cells(ARTEFACTS["table4"], choice, "smoke")
    assert set(t1.unregistered) == set(ARTEFACTS["table1"].models()) - set(known)
    assert {c.model for c in t1.cells} == set(known)
    assert len(t1.cells) == 2 * 11 and all(c.seed == 0 for c in t1.cells)
    assert all(c.data_options["scale"] == 0.1 for c in t1.cells)
    assert {c.key for c in t4.cells} <= {c.key for c in t1.cells}
    paper = planning.artefact_cells(ARTEFACTS["table3"], choice, "paper")
    assert [c.seed for c in paper.cells] == [0, 1, 2]
    assert paper.cells[0].data_options["scale"] == 1.0 and "flexmoe-no-es" in paper.unregistered


def test_figure6_settings_the_model_refuses_are_points_without_a_result():
    """Flex-MoE needs more experts than the 14 partial combinations of four modalities: the
    4- and 8-expert points are planned without runs, their reason kept for the figure."""
    ac = planning.artefact_cells(ARTEFACTS["fig6"], DatasetChoice("synthetic-adni", False),
                                 "smoke")
    refused = {ac.sweeps[i][0].value: why for i, why in ac.skipped.items()}
    assert set(refused) == {4, 8} and all("refuses its settings" in w for w in refused.values())
    assert all(not cells for i, (_, cells) in enumerate(ac.sweeps) if i in ac.skipped)
    assert all(cells for i, (_, cells) in enumerate(ac.sweeps) if i not in ac.skipped)
