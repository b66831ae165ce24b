"""``prepare``: raw ADNI / MIMIC-IV downloads → the folders the ``adni`` / ``mimic`` loaders
read (:mod:`bench.data.prepare.adni`, :mod:`bench.data.prepare.mimic`); docs/prepare.md is the
guide."""
