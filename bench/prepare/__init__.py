"""``prepare``: raw ADNI / MIMIC-IV downloads → the folders the ``adni`` / ``mimic`` loaders
read (:mod:`bench.prepare.adni`, :mod:`bench.prepare.mimic`); docs/PREPARE.md is the guide."""
