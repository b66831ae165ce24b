"""The missing-modality data interface (:mod:`bench.data.core`, :mod:`bench.data.arrays`), the
registered data sets (:mod:`bench.data.sources`), loading them with their options
(:mod:`bench.data.load`), imposed missingness and ``prepare`` (raw downloads → loader folders)."""
