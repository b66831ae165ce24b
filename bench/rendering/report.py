"""One self-contained HTML report (tables inline, figures embedded as PNG data) and its
Markdown twin (figures linked beside it), so the whole reproduction reads in one place and
travels as one file. Plain string templates; no scripts, no external resources."""

from __future__ import annotations

import base64
import datetime as dt
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.rendering.tables import TableView, to_html, to_markdown

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 110em;
       padding: 0 1.5em; color: #1a1a1a; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; }
.warning { border-left: 4px solid #d55e00; background: #fff4e5; padding: .6em 1em; }
.panels { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.panel { max-width: 100%; overflow-x: auto; }  /* a wide table scrolls, never the page */
thead th { white-space: normal; }
.panel h4 { margin: .4em 0; font-style: italic; font-weight: normal; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
thead th { border-top: 2px solid #333; border-bottom: 1px solid #333; }
tbody tr:last-child > * { border-bottom: 2px solid #333; }
th, td { padding: .2em .6em; text-align: center; white-space: nowrap; }
tbody th { text-align: left; font-weight: normal; }
figcaption, .notes { color: #444; font-size: .92em; max-width: 80em; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }  /* natural size */
nav li { display: inline; margin-right: 1em; }
"""


@dataclass
class Section:
    """One table or figure as written: its view or figure files, caption and notes; panels
    that belong to it (a metric table's significance tests) are its ``subsections``."""

    id: str
    title: str
    caption: str
    view: TableView | None = None
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_section(section: Section, level: int = 2) -> str:
    """A section and, nested after its content, its subsections one heading level down."""
    parts = [f'<section id="{html.escape(section.id)}">',
             f"<h{level}>{html.escape(section.title)}</h{level}>"]
    if section.view is not None:
        parts.append(to_html(section.view))
    for path in section.figures:
        parts.append(f'<figure><img src="{_png(path)}" alt="{html.escape(section.title)}">'
                     f"<figcaption>{html.escape(section.caption)}</figcaption></figure>")
    if section.view is None and not section.figures:
        parts.append(f"<p class=\"notes\">{html.escape(section.caption)}</p>")
    if section.notes:
        parts.append('<ul class="notes">' + "".join(
            f"<li>{html.escape(n)}</li>" for n in section.notes) + "</ul>")
    parts += [_html_section(sub, level + 1) for sub in section.subsections]
    parts.append("</section>")
    return "\n".join(parts)


def _markdown_section(section: Section, level: int = 2) -> str:
    parts = [f"{'#' * level} {section.title}", ""]
    if section.view is not None:
        parts += [to_markdown(section.view, title=False)]
    for path in section.figures:  # written beside the report
        parts += [f"![{section.title}]({path.name})", "", section.caption, ""]
    if section.view is None and not section.figures:
        parts += [section.caption, ""]
    parts += [f"- {n}" for n in section.notes]
    for sub in section.subsections:
        parts += ["", _markdown_section(sub, level + 1)]
    return "\n".join(parts).rstrip() + "\n"


def write_report(sections: Sequence[Section], out_dir: Path, title: str,
                 warnings: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` under ``out_dir``; return their paths."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<li><a href="#{html.escape(s.id)}">{html.escape(s.id)}</a></li>'
                  for s in sections)
    warn = "".join(f'<p class="warning"><b>Synthetic data.</b> {html.escape(w)}</p>'
                   for w in warnings)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
            f"<p>Generated {stamp}. Published numbers: the Flex-MoE paper (NeurIPS 2024), "
            f"as transcribed in results/paper.</p>\n{warn}\n<nav><ul>{nav}</ul></nav>\n"
            + "\n".join(_html_section(s) for s in sections) + "\n</body></html>\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    html_path.write_text(page, encoding="utf-8")
    md = [f"# {title}", "", f"Generated {stamp}.", ""]
    md += [f"> **Synthetic data.** {w}\n" for w in warnings]
    md += [_markdown_section(s) for s in sections]
    md_path.write_text("\n".join(md), encoding="utf-8")
    return html_path, md_path
