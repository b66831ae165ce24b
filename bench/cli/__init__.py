"""The command line: the parser (:mod:`bench.cli.args`), the commands
(:mod:`bench.cli.commands`) and the entry point (:mod:`bench.cli.main`)."""
