"""The documentation's reference pages, generated from the code so they cannot drift: the
command line from the parser itself (:func:`bench.cli.args.build_parser`) and the data-set
cards from the registered loaders' docstrings. The documentation build inserts them."""

from __future__ import annotations

import argparse

from bench import registry
from bench.cli.args import build_parser

#: argparse's help placeholder for an option's default.
_SUPPRESSED = (None, argparse.SUPPRESS)


def _subcommands(parser: argparse.ArgumentParser
                 ) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each sub-command, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            flags = ", ".join(f"`{s}`" for s in action.option_strings)
            if action.nargs != 0:
                flags += f" `{action.metavar or action.dest.upper()}`"
        else:
            flags = f"`{action.metavar or action.dest}`"
        extras = []
        if action.choices is not None and not isinstance(action.choices, dict):
            extras.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
        text = (action.help or "").replace("%(default)s", str(action.default))
        if action.nargs != 0 and action.default not in _SUPPRESSED and action.default != [] \
                and "default" not in text and f"({action.default})" not in text:
            extras.append(f"default `{action.default}`")
        rows.append(f"| {flags} | {_cell(text)}{' — ' if extras and text else ''}"
                    f"{_cell('; '.join(extras))} |")
    return rows


def _section(summary: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    lines = [f"{'#' * level} `{parser.prog}`", ""]
    about = parser.description or summary
    if about:
        lines += [about, ""]
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    rows = _option_rows(parser)
    if rows:
        lines += ["| option | meaning |", "|---|---|", *rows, ""]
    for _, sub_summary, sub_parser in _subcommands(parser):
        lines += _section(sub_summary, sub_parser, level + 1)
    return lines


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """Every sub-command: what it does, its usage line and a table of its options."""
    parser = parser or build_parser()
    lines = []
    for _, summary, sub in _subcommands(parser):
        lines += _section(summary, sub, 2)
    return "\n".join(lines).rstrip() + "\n"


def dataset_cards() -> str:
    """One section per registered data set: its loader's docstring (its card) and its options
    with their defaults."""
    from bench.data.load import data_settings

    registry.load_builtins()
    lines = []
    for name in registry.list_datasets():
        lines += [f"## `{name}`", "", registry.dataset_doc(name), ""]
        settings = data_settings(name)
        if settings:
            lines += ["| option | default |", "|---|---|"]
            lines += [f"| `{key}` | `{default}` |"
                      for key, (_, default) in sorted(settings.items())]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
