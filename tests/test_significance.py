"""Significance across combinations: Friedman, Holm-corrected Wilcoxon, the CD diagram, and
the panel below each metric table of the report, on hand-made data with known outcomes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.artefacts import significance
from bench.artefacts.catalogue import ARTEFACTS
from bench.artefacts.reproduce import plan
from bench.cli.main import main
from bench.rendering.report import Section, write_report
from bench.results.store import ResultStore


def _tidy(table: dict[str, list[float]], n: int = 3) -> pd.DataFrame:
    """``model, block, value, n`` from model → values per block (c0, c1, …)."""
    return pd.DataFrame([{"model": m, "block": f"c{b}", "value": v, "n": n}
                         for m, values in table.items() for b, v in enumerate(values)])


def _clear_order(blocks: int = 10) -> pd.DataFrame:
    """A beats B beats C beats D in every block, by margins that vary between blocks."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.7, blocks)
    return _tidy({m: list(base + gap + rng.uniform(0, 0.02, blocks))
                  for m, gap in (("B", 0.1), ("D", 0.0), ("A", 0.2), ("C", 0.05))})


def test_a_model_best_in_every_block_ranks_first_and_differs_from_the_worst():
    result = significance.compare(_clear_order())
    assert result.computed and len(result.blocks) == 10
    assert result.models == ["A", "B", "C", "D"]  # best mean rank first
    assert result.mean_ranks.to_dict() == {"A": 1.0, "B": 2.0, "C": 3.0, "D": 4.0}
    assert result.p_value < 1e-4
    # 10 blocks of one sign: exact p = 2/2^10, times 6 pairs under Holm
    assert result.p_values.loc["A", "D"] == pytest.approx(6 * 2 / 2**10)
    assert (result.p_values.to_numpy() == result.p_values.to_numpy().T).all()
    findings = result.findings()
    assert findings[0].startswith("Friedman: rejects") and len(findings) == 7
    assert "A vs D: Holm-adjusted p = 0.012 (A ranks better)" in findings
    caption = result.caption()
    assert caption.startswith("Friedman test over 4 models on 10 blocks (combinations; each "
                              "the mean over 3 seeds")
    assert "Holm correction, α = 0.05" in caption and "no pair can differ" not in caption
    frame = result.to_frame()
    assert list(frame.columns) == ["model", "mean_rank", "p vs A", "p vs B", "p vs C", "p vs D"]
    assert frame["model"].tolist() == ["A", "B", "C", "D"]


def test_ties_share_the_average_rank_and_never_differ():
    table = {"A": [0.9] * 8, "B": [0.8] * 8, "B2": [0.8] * 8, "C": [0.5] * 7 + [0.9]}
    result = significance.compare(_tidy(table))
    ranks = result.mean_ranks.to_dict()
    assert ranks["B"] == ranks["B2"] == pytest.approx((7 * 2.5 + 3.5) / 8)
    assert ranks["A"] == pytest.approx((7 * 1 + 1.5) / 8)  # ties with C in the last block
    assert ranks["C"] == pytest.approx((7 * 4 + 1.5) / 8)
    assert result.p_values.loc["B", "B2"] == 1.0  # equal in every block: zero differences
    assert result.models.index("B") < result.models.index("B2")  # tie: the table's order


def test_all_models_equal_everywhere_is_not_computed():
    result = significance.compare(_tidy({"A": [0.5] * 4, "B": [0.5] * 4, "C": [0.5] * 4}))
    assert not result.computed
    assert result.caption() == ("Significance across combinations not computed: every model "
                                "has the same value in every combination.")
    assert result.findings() == []


@pytest.mark.parametrize("table, reason", [
    ({"A": [0.9], "B": [0.8], "C": [0.7]}, "complete results for 3 model(s) on 1 combination"),
    ({"A": [0.9, 0.8], "B": [0.8, 0.7]}, "complete results for 2 model(s) on 2 combination"),
])
def test_too_few_blocks_or_models_is_not_computed_with_the_reason(table, reason):
    result = significance.compare(_tidy(table, n=1))
    assert not result.computed and result.reason.startswith(reason)
    assert "at least 3 models on at least 2 combinations" in result.caption()


def test_few_blocks_are_computed_but_the_caption_says_no_pair_can_differ():
    result = significance.compare(_clear_order(blocks=4))
    assert result.computed and result.p_values.min().min() >= significance.ALPHA
    caption = result.caption()
    assert "With 4 blocks no pair can differ at α = 0.05" in caption
    assert "2/2^4 = 0.12" in caption and "by 6, to at least 0.75." in caption
    assert "No pair differs at α = 0.05 after Holm correction" in result.findings()[-1]


def test_incomplete_models_and_blocks_are_left_out_and_named():
    frame = _clear_order()
    frame.loc[(frame["model"] == "C") & frame["block"].isin(["c1", "c2", "c3"]), "value"] = np.nan
    frame.loc[(frame["model"] == "A") & (frame["block"] == "c5"), "value"] = np.nan
    frame.loc[frame["block"] == "c9", "value"] = np.nan
    frame = pd.concat([frame, _tidy({"E": [np.nan] * 10})])
    result = significance.compare(frame)
    assert result.models == ["A", "B", "D"]
    assert result.blocks == ["c0", "c1", "c2", "c3", "c4", "c6", "c7", "c8"]
    assert result.dropped == [
        "left out E: no value in any combination",
        "left out C: no value in 3 of 9 combinations (c1, c2, c3)",
        "left out combination c9: no finished run",
        "left out combination c5: no value for A"]
    assert "Friedman test over 3 models on 8 blocks" in result.caption()


def test_block_means_average_the_finished_seeds_of_each_cell():
    runs = pd.DataFrame({"model": ["flexmoe"] * 3 + ["tf"] * 2 + ["mult"],
                         "combo": ["IG", "IG", "IGC", "IG", "IG", "IG"],
                         "seed": [0, 1, 0, 0, 1, 0],
                         "status": ["ok", "ok", "ok", "ok", "failed", None],
                         "test_acc": [0.6, 0.8, 0.5, 0.4, 0.9, None]})
    out = significance.block_means(runs, "test_acc")
    assert out.to_dict("records") == [
        {"model": "Flex-MoE", "block": "IG", "value": pytest.approx(0.7), "n": 2},
        {"model": "Flex-MoE", "block": "IGC", "value": 0.5, "n": 1},
        {"model": "TF", "block": "IG", "value": 0.4, "n": 1},
        {"model": "MulT", "block": "IG", "value": pytest.approx(np.nan, nan_ok=True), "n": 0}]


def test_cd_diagram_shows_every_model_with_its_mean_rank(tmp_path):
    fig = significance.cd_diagram(significance.compare(_clear_order()))
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"A (1.00)", "B (2.00)", "(3.00) C", "(4.00) D"} <= texts
    assert fig.axes[0].get_xlabel()


def test_cd_diagram_axis_spans_every_rank_even_when_no_model_reaches_them():
    """A and B share first place (mean rank 1.5), C and D share third (3.5): the axis still
    runs from rank 1 to rank 4, so a reader sees how far the best is from 1."""
    blocks = 10
    first = [0.9 if b % 2 else 0.8 for b in range(blocks)]
    second = [0.8 if b % 2 else 0.9 for b in range(blocks)]
    third = [0.5 if b % 2 else 0.4 for b in range(blocks)]
    fourth = [0.4 if b % 2 else 0.5 for b in range(blocks)]
    result = significance.compare(_tidy({"A": first, "B": second, "C": third, "D": fourth}))
    assert set(result.mean_ranks) == {1.5, 3.5}
    ax = significance.cd_diagram(result).axes[0]
    assert list(ax.get_xticks()) == [1, 2, 3, 4]
    low, high = ax.get_xlim()
    assert low <= 1 and high >= 4


def test_report_nests_subsections_one_heading_level_down(tmp_path):
    panel = Section("t1-significance", "Significance across combinations", "the caption",
                    notes=["a finding"])
    sections = [Section("t1", "Table 1", "table caption", notes=["table note"],
                        subsections=[panel])]
    html_path, md_path = write_report(sections, tmp_path, "title")
    page = html_path.read_text()
    assert page.index("table note") < page.index("<h3>Significance across combinations</h3>")
    assert '<section id="t1-significance">' in page and "a finding" in page
    md = md_path.read_text()
    assert "## Table 1" in md and "\n### Significance across combinations\n" in md
    assert md.index("- table note") < md.index("### Significance") < md.index("- a finding")


def test_report_has_a_significance_panel_below_a_metric_table(tmp_path):
    """Table 2 from a hand-written store (no training): seven models on four combinations."""
    store, out = tmp_path / "r.sqlite", tmp_path / "out"
    (table2,) = plan([ARTEFACTS["table2"]], "smoke", ["synthetic-mimic"], seeds=[0, 1])
    order = ["mult", "tf", "mag", "limoe", "fusemoe", "i2moe", "flexmoe"]
    with ResultStore(store) as db:
        for cell in table2.cells:
            failed = cell.model == "i2moe" and cell.combo == "LN"
            acc = 0.5 + 0.02 * order.index(cell.model) + 0.01 * cell.seed
            db.write({"key": cell.key, "status": "failed" if failed else "ok",
                      "error": "ValueError: diverged" if failed else None,
                      "model": cell.model, "dataset": cell.dataset, "combo": cell.combo,
                      "seed": cell.seed, "profile": "smoke", "test_acc": acc, "epochs": 3,
                      "device": "cpu", "device_name": "cpu", "threads": 1})
    assert main(["report", "--table", "2", "--store", str(store), "--out", str(out),
                 "--dataset", "synthetic-mimic", "--seeds", "0,1"]) == 0
    page = (out / "report.html").read_text()
    panel = page[page.index('<section id="table2-significance">'):]
    assert page.index("<table>") < page.index("table2-significance")
    assert "<h3>Significance across combinations</h3>" in panel
    assert "data:image/png;base64," in panel
    assert ("Friedman test over 6 models on 4 blocks (combinations; each the mean over 2 "
            "seeds") in panel
    assert "With 4 blocks no pair can differ" in panel
    assert "left out I2MoE: no value in 1 of 4 combinations (LN)" in panel
    data = pd.read_csv(out / "table2-significance.csv")
    assert data["model"].tolist() == ["Flex-MoE", "FuseMoE", "LIMoE", "MAG", "TF", "MulT"]
    assert data["mean_rank"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert (out / "table2-significance.png").is_file()
    assert "### Significance across combinations" in (out / "report.md").read_text()


def test_flexmoe_is_compared_with_each_model_alone_where_all_pairs_cannot_differ():
    """Eleven models on eleven combinations: 55 Holm-corrected pairs cannot reach 0.05, the
    ten comparisons of Flex-MoE with each other model can (2/2^11 × 10 < 0.05)."""
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.7, 11)
    table = {"Flex-MoE": list(base + 0.2)}
    table.update({f"M{i}": list(base + rng.uniform(0, 0.1, 11)) for i in range(10)})
    result = significance.compare(_tidy(table))
    assert result.control == "Flex-MoE" and list(result.control_p.index) == result.models[1:]
    assert result.control_p.to_numpy() == pytest.approx([10 * 2 / 2**11] * 10)
    assert (result.p_values.to_numpy() >= 0.05).all()
    assert "no pair can differ" in result.caption()
    assert "Flex-MoE against each of the other 10 models" in result.caption()
    assert result.findings()[-1].startswith("Flex-MoE against each model (Holm over 10): "
                                            "differs from M")
    assert "p vs Flex-MoE alone" in result.to_frame().columns
    no_control = significance.compare(_tidy({k: table[k] for k in ("M0", "M1", "M2")}))
    assert no_control.control == "" and "alone" not in " ".join(no_control.to_frame().columns)
