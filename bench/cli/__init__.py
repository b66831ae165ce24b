"""The command line: the parser (:mod:`bench.cli.args`) and the commands
(:mod:`bench.cli.main`).

Importing it asks OpenMP for its passive wait policy (:mod:`bench.threads`) before any
command imports torch, so runs keep their speed on a shared machine.
"""

from bench.threads import prefer_passive_wait

prefer_passive_wait()
