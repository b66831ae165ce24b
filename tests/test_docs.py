"""The documentation site: it builds strictly (a broken link or a missing page fails), its
generated pages come from the code, and the API pages cover every layer's modules."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bench import registry
from bench.cli.args import build_parser
from bench.cli.manual import _subcommands, cli_reference, dataset_cards

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                          "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True,
                         text=True, timeout=600,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "generated: cli" not in cli and "flexmoe-bench prepare adni" in cli
    api = (tmp_path / "site" / "api" / "training" / "index.html").read_text()
    assert "classification_metrics" in api


def test_the_cli_reference_lists_every_command_and_option():
    text = cli_reference()
    for name, _, sub in _subcommands(build_parser()):
        assert f"`{sub.prog}`" in text, name
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in text, (name, flag)
    assert "`flexmoe-bench prepare mimic`" in text and "`--embedder`" in text


def test_every_data_set_has_a_card():
    text = dataset_cards()
    for name in registry.list_datasets():
        assert f"## `{name}`" in text
        assert registry.dataset_doc(name).splitlines()[0] in text


def test_the_api_pages_cover_every_public_module():
    """Every module of the layers below the command line is on an API page (the prepare
    steps through their two entry modules)."""
    shown = set(re.findall(r"^::: ([\w.]+)", "\n".join(
        p.read_text() for p in (ROOT / "docs" / "api").glob("*.md")), re.M))
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts)
               for p in (ROOT / "bench").rglob("*.py") if p.name != "__init__.py"}
    left_out = {m for m in modules if m.startswith(("bench.cli.", "bench.data.prepare."))
                or m in ("bench.resources", "bench.data.digest", "bench.data.sources",
                         "bench.data.official", "bench.data.mfeat", "bench.data.synthetic",
                         "bench.data.synthetic_adni", "bench.data.synthetic_mimic")}
    missing = sorted(modules - shown - left_out)
    assert not missing, f"modules on no page of docs/api/: {missing}"
    assert not shown - modules, f"docs/api/ names modules that do not exist: {shown - modules}"


def _record_outputs():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import record_outputs
    finally:
        sys.path.pop(0)
    return record_outputs


def test_the_quick_starts_output_is_marked_for_regeneration():
    """The README and the measurements page show what `python run_bench.py run` printed,
    marked so that tools/record_outputs.py re-records both from one run."""
    shown = _record_outputs().marked([ROOT / "README.md", ROOT / "docs"])
    where = {(s.path.relative_to(ROOT).as_posix(), s.command) for s in shown}
    assert {("README.md", "python run_bench.py run"),
            ("docs/measurements.md", "python run_bench.py run")} <= where
    quick = {s.output for s in shown if s.command == "python run_bench.py run"}
    assert len(quick) == 1 and "run(s) written to bench-results/runs.sqlite" in quick.pop()


def test_record_outputs_writes_what_a_command_prints_and_check_finds_a_drift(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Before.\n\n<!-- output of: python run_bench.py list datasets -->\n```\n"
                    "stale\n```\n<!-- end of output -->\n\nAfter.\n")
    tool = _record_outputs()
    assert tool.main([str(page), "--check"]) == 1 and "stale" in page.read_text()
    assert tool.main([str(page)]) == 0
    text = page.read_text()
    assert text.startswith("Before.\n") and text.endswith("<!-- end of output -->\n\nAfter.\n")
    assert "synthetic-adni" in text and "stale" not in text
    assert tool.main([str(page), "--check"]) == 0
