"""Test-time missing modalities: the data view, every model's missing path, the stored
metrics (which leave the run's own numbers alone), the table, figure and report."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
import torch

from bench import registry
from bench.artefacts import planning
from bench.artefacts.catalogue import ARTEFACTS, select
from bench.artefacts.robustness_view import STORED_WITHOUT, robustness_data, robustness_view
from bench.artefacts.spec import DatasetChoice
from bench.artefacts.views import NOT_RUN, UNREGISTERED
from bench.cli.main import main
from bench.data.load import load_data
from bench.errors import UserError
from bench.identity.config import build_grid
from bench.rendering.tables import to_html, to_markdown
from bench.results.schema import COLUMNS
from bench.results.store import ResultStore, load_results
from bench.training import robustness
from bench.training.run import execute
from bench.training.train import evaluate, fit, seed_everything

SMALL = {"scale": 0.1}
MODELS = registry.list_models()


@pytest.fixture(scope="module")
def run_data():
    return load_data("synthetic-adni", SMALL).restrict("IGCB")


def _combo_letters(view, row: int) -> str:
    return "".join(c for j, c in enumerate(view.spec.letters) if view.observed[row, j])


def test_without_hides_the_removed_modalities_and_leaves_the_view_alone(run_data):
    before = {c: x.clone() for c, x in run_data.features.items()}
    observed, combo = run_data.observed.clone(), run_data.combo.clone()
    view = run_data.without("GC")
    assert view.spec == run_data.spec and view.splits is run_data.splits
    assert not view.observed[:, [1, 2]].any()
    assert torch.equal(view.observed[:, [0, 3]], run_data.observed[:, [0, 3]])
    for c, x in view.features.items():
        assert x.shape == run_data.features[c].shape
        assert torch.equal(x, torch.zeros_like(x) if c in "GC" else run_data.features[c])
    for c, x in run_data.features.items():  # the run's own view is untouched
        assert torch.equal(x, before[c])
    assert torch.equal(run_data.observed, observed) and torch.equal(run_data.combo, combo)
    for row in range(len(view.labels)):
        letters = _combo_letters(view, row)
        assert int(view.combo[row]) == (view.spec.combos.index(letters) if letters else -1)
    test = view.splits["test"]
    assert (view.combo[test] == view.spec.combos.index("IB")).all()  # complete cases


@pytest.mark.parametrize("letters", ["", "IGCB", "BGIC", "X", "GG", "IX"])
def test_without_refuses_anything_but_a_proper_subset(run_data, letters):
    with pytest.raises(ValueError, match="non-empty proper subset of the run's modalities "
                                         "'IGCB'"):
        run_data.without(letters)


def test_removal_sets_are_every_proper_subset_by_size():
    sets = robustness.removal_sets("IGCB")
    assert sets[:4] == ("I", "G", "C", "B") and sets[4:6] == ("IG", "IC")
    assert len(sets) == len(set(sets)) == 2 ** 4 - 2 and sets[-1] == "GCB"
    assert [len(s) for s in sets] == sorted(len(s) for s in sets)
    assert robustness.removal_sets("LN") == ("L", "N") and robustness.removal_sets("L") == ()


@pytest.mark.parametrize("name", MODELS)
def test_a_removed_modality_never_reaches_the_model(name, run_data):
    """Its encoder sees no row of it, and whatever its features hold does not matter."""
    seed_everything(0)
    model = registry.create_model(name, run_data.spec).eval()
    watch = getattr(model, "missing_fill", "zero_embed") == "zero_embed"
    seen: dict[str, int] = {}
    hooks = 0
    for qual, module in model.named_modules():
        parts = qual.split(".")
        if len(parts) >= 2 and parts[-2] == "encoders" and parts[-1] in run_data.spec.letters:
            module.register_forward_pre_hook(
                lambda m, args, c=parts[-1]: seen.__setitem__(c, seen.get(c, 0) + len(args[0])))
            hooks += 1
    for removed in ("I", "GC", "ICB"):
        view = run_data.without(removed)
        batch = view.batch(view.splits["test"][:12])
        seen.clear()
        with torch.no_grad():
            clean, _ = model(batch)
            rows = dict(seen)
            noise = {c: torch.randn_like(x) if c in removed else x for c, x in batch.x.items()}
            dirty, _ = model(type(batch)(noise, batch.observed, batch.combo, batch.y))
        if hooks and watch:
            assert not any(rows.get(c, 0) for c in removed), (removed, rows)
            assert all(rows.get(c, 0) == len(batch) for c in view.spec.letters
                       if c not in removed), (removed, rows)
        torch.testing.assert_close(dirty, clean, rtol=0, atol=0, msg=f"without {removed}")


@pytest.fixture(scope="module")
def flexmoe_row():
    cell = build_grid(["flexmoe"], "synthetic-adni", ["IGCB"], [0], "smoke", {"epochs": 2},
                      SMALL)[0]
    return cell, execute(cell)


def test_stored_row_has_every_removal_with_finite_metrics(flexmoe_row):
    _, row = flexmoe_row
    assert row["status"] == "ok", row.get("error")
    assert list(row["robustness"]) == list(robustness.removal_sets("IGCB"))
    for metrics in row["robustness"].values():
        assert set(metrics) == {"acc", "f1", "auc"}
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in metrics.values())


def test_run_metrics_are_those_of_a_plain_fit_and_robustness_is_deterministic(flexmoe_row):
    """The runner's extra evaluation moves no stored number; the same seed, the same
    test-time metrics from an independent training."""
    cell, row = flexmoe_row
    data = load_data(cell.dataset, cell.data_options, cell.split_seed).restrict(cell.combo)
    seed_everything(cell.seed)
    model = registry.build_model(cell.model, data.spec, cell.hparams)
    result = fit(model, data, seed=cell.seed, **registry.split_hparams(cell.hparams)[0])
    for split, metrics in (("val", result.val), ("test", result.test)):
        for m, v in metrics.items():
            assert row[f"{split}_{m}"] == v, f"{split}_{m}"
    assert row["best_epoch"] == result.best_epoch
    assert row["val_acc_curve"] == result.val_acc_curve
    assert robustness.test_time_metrics(model, data) == row["robustness"]
    assert evaluate(model, data, "test") == result.test  # scoring changed nothing


def test_one_modality_run_has_no_removal():
    data = load_data("synthetic-adni", SMALL).restrict("I")
    seed_everything(0)
    model = registry.create_model("tf", data.spec)
    assert robustness.test_time_metrics(model, data) == {}


def test_robustness_runs_are_the_runs_of_run():
    for family, dataset in (("adni", "synthetic-adni"), ("mimic", "synthetic-mimic")):
        art = ARTEFACTS[f"robustness-{family}"]
        cells = planning.artefact_cells(art, DatasetChoice(dataset, False), "quick").cells
        plain = build_grid(list(art.models()), dataset, None, None, "quick")
        assert [c.key for c in cells] == [c.key for c in plain]
    assert [a.id for a in select("robustness")] == ["robustness-adni", "robustness-mimic"]
    assert {"robustness-adni", "robustness-mimic"} <= {a.id for a in select("all")}
    with pytest.raises(UserError, match="robustness"):
        select("robustnes")


def _row(cell, acc: float, removed: dict[str, float] | None) -> dict:
    row = {"key": cell.key, "status": "ok", "model": cell.model, "dataset": cell.dataset,
           "combo": cell.combo, "seed": cell.seed, "profile": cell.profile,
           "hparams": cell.hparams, "data_options": cell.data_options, "test_acc": acc,
           "test_f1": acc, "test_auc": acc, "test_pred_counts": [1, 1, 1], "device": "cpu",
           "device_name": "test", "threads": 1, "code_version": "test", "created_at": "1",
           "epochs": 1}
    if removed is not None:
        row["robustness"] = {k: {"acc": v, "f1": v, "auc": v} for k, v in removed.items()}
    return row


def test_view_shows_the_mean_over_subsets_and_seeds_and_footnotes_old_rows(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(planning.registry, "list_models", lambda: ["tf", "lee2019", "mag"])
    ac = planning.artefact_cells(ARTEFACTS["robustness-adni"],
                                DatasetChoice("synthetic-adni", False), "smoke", seeds=[0, 1])
    rng = np.random.default_rng(0)
    subsets = robustness.removal_sets("IGCB")
    tf = {c.seed: dict(zip(subsets, rng.uniform(0.2, 0.8, len(subsets))))
          for c in ac.cells if c.model == "tf"}
    rows = [_row(c, 0.5 + 0.1 * c.seed, tf[c.seed]) for c in ac.cells if c.model == "tf"]
    rows += [_row(c, 0.4, None) for c in ac.cells if c.model == "lee2019"]  # stored before
    with ResultStore(tmp_path / "r.sqlite") as store:
        for row in rows:
            store.write(row)
    df = load_results(tmp_path / "r.sqlite")
    view = robustness_view(ac, df, "smoke")
    panel = view.panels[0]
    assert list(panel.mean.columns) == ["0 removed", "1 removed", "2 removed", "3 removed"]
    for k in (1, 2, 3):
        values = [v * 100 for s in (0, 1) for r, v in tf[s].items() if len(r) == k]
        assert len(values) == 2 * math.comb(4, k)
        assert panel.mean.at["TF", f"{k} removed"] == pytest.approx(np.mean(values))
        assert panel.std.at["TF", f"{k} removed"] == pytest.approx(np.std(values))
    assert panel.mean.at["TF", "0 removed"] == pytest.approx(55.0)
    assert panel.mean.at["[33] Lee", "0 removed"] == pytest.approx(40.0)
    assert panel.mean.loc["[33] Lee", ["1 removed", "3 removed"]].isna().all()
    assert panel.note("[33] Lee", "2 removed") == STORED_WITHOUT
    assert panel.note("MAG", "1 removed") == NOT_RUN
    assert panel.note("Flex-MoE", "0 removed") == UNREGISTERED
    assert "mean ± population std over the removal subsets of that size and the seeds" in \
        view.caption
    assert STORED_WITHOUT in to_markdown(view) and "Robustness" in to_html(view)
    tidy = robustness_data(ac, df)
    assert list(tidy.columns) == ["model", "seed", "removed", "kept", "n_removed", "acc", "f1",
                                  "auc"]
    assert len(tidy) == 2 * (1 + len(subsets)) + 2
    first = tidy[(tidy["model"] == "TF") & (tidy["removed"] == "GC")].iloc[0]
    assert first["kept"] == "IB" and first["n_removed"] == 2


def test_store_without_the_robustness_column_reads_it_as_empty(tmp_path):
    """A store written before the column existed: read in place, then extended."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        columns = {c: t for c, t in COLUMNS.items() if c != "robustness"}
        conn.execute(f"CREATE TABLE runs ({', '.join(f'{c} {t}' for c, t in columns.items())})")
        conn.execute("INSERT INTO runs (key, status, created_at) VALUES ('old', 'ok', '1')")
    conn.close()
    assert load_results(path)["robustness"].tolist() == [{}]
    with ResultStore(path) as store:
        store.write({"key": "new", "status": "ok", "created_at": "2",
                     "robustness": {"I": {"acc": 0.5, "f1": 0.4, "auc": 0.6}}})
    assert load_results(path)["robustness"].tolist() == [
        {}, {"I": {"acc": 0.5, "f1": 0.4, "auc": 0.6}}]


def test_reproduce_and_report_render_the_table_and_the_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(planning.registry, "list_models", lambda: ["lee2019", "tf"])
    store, out = str(tmp_path / "r.sqlite"), tmp_path / "out"
    args = ["--table", "robustness", "--profile", "smoke", "--set", "epochs=1",
            "--store", store, "--out", str(out), "--device", "cpu"]
    assert main(["reproduce", *args]) == 0
    for family in ("adni", "mimic"):
        stem = f"robustness-{family}"
        for suffix in (".md", ".tex", ".csv", "-subsets.csv", ".png", ".pdf"):
            assert (out / f"{stem}{suffix}").is_file(), stem + suffix
    page = (out / "report.html").read_text()
    assert 'id="robustness-adni"' in page and 'id="robustness-mimic"' in page
    assert page.count("<img") == 2 and "removed" in page
    df = load_results(store)
    ok = df[(df["dataset"] == "synthetic-mimic") & (df["model"] == "tf")]
    ac = planning.artefact_cells(ARTEFACTS["robustness-mimic"],
                                DatasetChoice("synthetic-mimic", False), "smoke",
                                {"epochs": 1})
    cell = robustness_view(ac, df, "smoke").panels[0].mean.at["TF", "1 removed"]
    hand = np.mean([m["acc"] * 100 for r in ok["robustness"] for k, m in r.items()
                    if len(k) == 1])
    assert cell == pytest.approx(hand)
    (out / "report.html").unlink()
    assert main(["report", *args]) == 0
    assert 'id="robustness-adni"' in (out / "report.html").read_text()
