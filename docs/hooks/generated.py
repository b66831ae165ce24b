"""MkDocs hook: pages generated from the code at build time, so they cannot drift from it.
A page holds a marker ``<!-- generated: NAME -->`` that the build replaces."""

from bench.cli.manual import cli_reference, dataset_cards

GENERATORS = {"cli": cli_reference, "datasets": dataset_cards}


def on_page_markdown(markdown, page, config, files):
    for name, generate in GENERATORS.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown
