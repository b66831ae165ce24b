"""Figures, the HTML / Markdown report, and `reproduce` end to end on a tiny grid."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bench.cli.main import main
from bench.rendering import plots
from bench.rendering.report import Section, write_report
from bench.rendering.tables import Panel, TableView
from bench.results.store import load_results

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
TINY = ["--set", "epochs=1", "--data-option", "scale=0.1"]


SENSITIVITY = pd.DataFrame({"axis": ["experts"] * 3 + ["top-k"] * 2, "value": [4, 16, 32, 1, 2],
                            "mean": [None, 60.0, 61.0, 58.0, 59.5],
                            "std": [None, 1.0, 0.5, 0, 0]})


def _figures() -> dict[str, object]:
    """Every figure from small tidy frames shaped like the views' output."""
    bank = pd.DataFrame({"panel": ["row"] * 4 + ["column"] * 4 + ["embedding"] * 3,
                         "row": ["IC", "IC", "C", "C", "I", "I", "G", "G", "C", "C", "IC"],
                         "column": ["IC", "C", "IC", "C", "I", "G", "I", "G", "I", "G", "G"],
                         "cosine": [1.0, 0.4, 0.4, 1.0, 1.0, 0.2, 0.2, 1.0, 0.1, -0.2, 0.3],
                         "samples": [12, 12, 40, 40, 40, 52, 40, 52, 40, 40, 12]})
    experts = pd.DataFrame({"expert": [0, 0, 2], "combo": ["IGCB", "C", "C"],
                            "tokens": [30, 10, 5], "share": [0.75, 0.25, 1.0]})
    mods = pd.DataFrame({"model": ["TF", "TF", "Flex-MoE", "Flex-MoE"],
                         "modalities": [2, 4, 2, 4], "mean": [50, 55, 60, 66],
                         "std": [1, 1, 2, 1]})
    cost = pd.DataFrame({"model": ["TF", "Flex-MoE"] * 2, "combo": ["IG", "IG", "IGCB", "IGCB"],
                         "acc": [55, 60, 57, 66], "gflop": [0.1, 0.2, 0.4, 0.3],
                         "params": [2e6, 1.1e6, 1e7, 1.3e6]})
    return {"fig4": plots.bank_similarity(bank),
            "fig5": plots.expert_activation(experts, 4), "fig6": plots.sensitivity(SENSITIVITY),
            "modalities": plots.accuracy_vs_modalities(mods),
            "cost": plots.accuracy_vs_cost(cost)}


def test_figures_have_labelled_axes_and_are_written_as_png_and_pdf(tmp_path):
    figures = _figures()
    for stem, fig in figures.items():
        for ax in fig.axes:
            if ax.get_label() != "<colorbar>":
                assert ax.get_xlabel() or ax.get_ylabel(), stem
        png, pdf = plots.save_figure(fig, tmp_path, stem)
        assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"
    assert figures["fig5"].axes[0].get_xlim() == (0.0, 4.0)  # every expert, used or not


def _report(tmp_path: Path) -> tuple[Path, Path]:
    mean = pd.DataFrame({"TF": [50.0, float("nan")], "Flex-MoE": [60.0, 61.0]},
                        index=pd.Index(["IG", "IGCB"], name="combo"))
    notes = pd.DataFrame({"TF": ["", "model not registered"], "Flex-MoE": ["", ""]},
                         index=mean.index)
    view = TableView("table1", "Table 1", "ADNI accuracy (%)", "caption words",
                     [Panel("Reproduced", mean, mean * 0 + 1, notes)])
    png = plots.save_figure(plots.sensitivity(SENSITIVITY), tmp_path, "fig6")[0]
    sections = [Section("table1", "Table 1: ADNI accuracy (%)", view.caption, view),
                Section("fig6", "Figure 6", "sensitivity caption", figures=[png],
                        notes=["experts = 4: run failed: ValueError"])]
    return write_report(sections, tmp_path, "report title", ["synthetic stand-in: no adni"])


def test_report_is_self_contained_html_with_a_markdown_twin(tmp_path):
    html_path, md_path = _report(tmp_path)
    page = html_path.read_text()
    assert page.count("<table>") == 1 and "data:image/png;base64," in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "<b>60.00 ± 1.00</b>" in page and "<u>50.00 ± 1.00</u>" in page  # per row
    assert "<b>61.00 ± 1.00</b>" in page and "–<sup>1</sup>" in page
    assert "synthetic stand-in: no adni" in page and "experts = 4: run failed" in page
    md = md_path.read_text()
    assert "![Figure 6](fig6.png)" in md and "| IGCB" in md.replace("|  IGCB", "| IGCB")
    assert "> **Synthetic data.** synthetic stand-in: no adni" in md


def _console(browser: str, page: Path, *flags: str) -> list[str]:
    """Console messages (errors included) that headless Chromium logs for ``page``."""
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000",
                          *flags, "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "</html>" in run.stdout
    return [ln for ln in run.stderr.splitlines() if ":CONSOLE" in ln]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>missing();</script></body></html>")
    assert _console(CHROMIUM, broken)  # the check sees an error when there is one
    html_path, _ = _report(tmp_path)
    assert _console(CHROMIUM, html_path) == []


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
@pytest.mark.parametrize("width", [1400, 1920])
def test_a_wide_table_never_makes_the_page_scroll_sideways(tmp_path, width):
    """Table 4's shape (six models × four quantities, reproduced and published panels) and a
    figure at its natural size, measured in headless Chromium: the page is no wider than
    the window."""
    columns = [f"{m} {q}" for m in ("TF", "MulT", "MAG", "LIMoE", "FuseMoE", "Flex-MoE")
               for q in ("ms / iteration", "GFLOP", "parameters (M)", "ACC (%)")]
    mean = pd.DataFrame([[123.45] * len(columns)] * 3, columns=columns,
                        index=pd.Index(["IG", "IGC", "IGCB"], name="combo"))
    view = TableView("table4", "Table 4", "Cost on ADNI", "caption",
                     [Panel("Reproduced", mean), Panel("Reproduced and published", mean)])
    cost = pd.DataFrame({"model": ["TF", "Flex-MoE"], "combo": ["IG", "IG"], "acc": [50.0, 55.0],
                         "gflop": [0.2, 0.9], "params": [2e6, 5e6]})
    png = plots.save_figure(plots.accuracy_vs_cost(cost), tmp_path, "cost")[0]
    html_path, _ = write_report([Section("table4", "Table 4", "caption", view),
                                 Section("cost", "Accuracy vs cost", "caption", figures=[png])],
                                tmp_path, "report title", [])
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace(
        "</body>", "<script>console.log('WIDTHS ' + document.documentElement.scrollWidth + ' '"
                   " + window.innerWidth)</script></body>"))
    lines = _console(CHROMIUM, probe, f"--window-size={width},1000")
    page, window = map(int, next(ln for ln in lines if "WIDTHS" in ln)
                       .split("WIDTHS ")[1].split('"')[0].split()[:2])
    assert window == width and page <= window, (page, window)


def test_reproduce_trains_renders_and_resumes_from_the_store(tmp_path, capsys):
    store, out = tmp_path / "r.sqlite", tmp_path / "out"
    args = ["--store", str(store), "--out", str(out), "--dataset", "synthetic-adni", *TINY]
    assert main(["reproduce", "--table", "3,fig5", *args]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'} (and report.md" in printed
    assert "Table 3: Flex-MoE ablations" in printed and "**" not in printed  # Markdown: in its file
    rows = load_results(store)
    assert len(rows) == 6 and set(rows["status"]) == {"ok"}
    for name in ("table3.md", "table3.tex", "table3.csv", "fig5.png", "fig5.pdf", "fig5.csv",
                 "report.html", "report.md"):
        assert (out / name).is_file(), name
    (cached,) = (out / "models").glob("flexmoe-IGCB-*.pt")
    assert cached.stem.endswith(rows.loc[rows["model"] == "flexmoe", "key"].item())
    stamp = cached.stat().st_mtime_ns
    assert main(["report", "--table", "3,fig5", *args]) == 0
    assert len(load_results(store)) == 6 and cached.stat().st_mtime_ns == stamp
    # without --profile, report renders the profile of the store's latest runs and says so
    plain = ["--store", str(store), "--out", str(out), "--dataset", "synthetic-adni"]
    capsys.readouterr()
    assert main(["report", "--table", "3", *plain]) == 0
    assert "profile smoke: that of the latest finished runs" in capsys.readouterr().out
    assert "Table 3" in (out / "report.html").read_text()


def test_the_cost_figures_tick_labels_do_not_overlap():
    """Within one decade a log axis labels its minor ticks too, and they ran together."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    df = pd.DataFrame({"model": ["TF", "MulT", "Flex-MoE"] * 2, "combo": ["IG"] * 3 + ["IGCB"] * 3,
                       "acc": [50.0, 52.0, 55.0, 51.0, 53.0, 58.0],
                       "gflop": [0.21, 0.35, 0.52, 0.44, 0.61, 0.93],
                       "params": [2.1e6, 3.4e6, 5.2e6, 2.2e6, 3.9e6, 6.8e6]})
    fig = plots.accuracy_vs_cost(df)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    for ax in fig.axes:
        boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels(which="both")
                        if t.get_visible() and t.get_text()), key=lambda b: b.x0)
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), [(b.x0, b.x1) for b in boxes]
