"""The missing-modality data interface (see :mod:`bench.data.core`)."""

from bench.data.arrays import Modality, RawArrays
from bench.data.core import Batch, DataSpec, MultimodalData, RunData, combinations

__all__ = ["Batch", "DataSpec", "Modality", "MultimodalData", "RawArrays", "RunData",
           "combinations"]
