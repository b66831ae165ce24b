"""The command line: the parser (:mod:`bench.cli.args`) and the commands
(:mod:`bench.cli.main`)."""
