"""ADNI's MRI modality: the outputs of the released image pipeline, taken as they are.

The released pipeline (``data/adni/image/``: a CentOS container, a cluster job script and
``GetADNI_Ravens.py``) segments each scan into RAVENS grey-matter maps on a CBICA cluster;
it cannot run here. ``prepare`` starts from either of its outputs, found under ``--raw``:

* ``ADNI_G.npy`` + ``ADNI_subj.txt`` (what ``GetADNI_Ravens.py`` writes): taken as they are;
* the RAVENS maps (``<subject>/<subject>_…_RAVENS_150_s2_DS.nii.gz``, one folder per scan,
  named ``<PTID>_<scan date>``) plus the atlas ``…muse_seg_DS222.nii.gz``: each map's
  values at the atlas's grey-matter voxels (label 150) become one row, as
  ``GetADNI_Ravens.py`` does (it needs ``nibabel``: ``pip install 'flexmoe-bench[adni]'``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.data.prepare.raw import RawInputError, find_one

logger = logging.getLogger(__name__)

RAVENS_SUFFIX = "_RAVENS_150_s2_DS.nii.gz"
GREY_MATTER = 150


def find_image_inputs(raw: Path) -> list[Path]:
    """The image inputs under ``raw``: the array and its subject list, or the atlas and the
    RAVENS maps; [] when there are none."""
    array = find_one(raw, ("ADNI_G.npy",), "the grey-matter array", required=False)
    if array is not None:
        subjects = find_one(raw, ("ADNI_subj.txt",), "ADNI_subj.txt (one scan name per row "
                            "of ADNI_G.npy) beside ADNI_G.npy")
        return [array, subjects]
    maps = sorted(raw.rglob(f"*{RAVENS_SUFFIX}"))
    if not maps:
        return []
    atlas = find_one(raw, ("*muse_seg_DS*.nii.gz",), "the atlas of the RAVENS maps (e.g. "
                     "BLSA_SPGR+MPRAGE_averagetemplate_muse_seg_DS222.nii.gz)")
    return [atlas, *maps]


def build_image(inputs: list[Path], into: Path) -> list[str]:
    """Write ``ADNI_G.npy`` and ``ADNI_subj.txt`` into ``into``; return the scan names."""
    if inputs[0].name == "ADNI_G.npy":
        array, subjects = inputs
        names = subjects.read_text().split()
        rows = np.load(array, mmap_mode="r").shape[0]
        if rows != len(names):
            raise RawInputError(f"{subjects}: {len(names)} scan names but {array} has {rows} "
                                "rows; expected one name per row")
        shutil.copyfile(array, into / "ADNI_G.npy")
        shutil.copyfile(subjects, into / "ADNI_subj.txt")
        return names
    try:
        import nibabel
    except ImportError:
        raise ImportError("reading RAVENS maps needs nibabel: pip install "
                          "'flexmoe-bench[adni]' (or bring ADNI_G.npy and ADNI_subj.txt)") \
            from None
    atlas, *maps = inputs
    grey = np.asarray(nibabel.load(atlas).get_fdata()) == GREY_MATTER
    names = [m.parent.name for m in maps]
    out = np.zeros((len(maps), int(grey.sum())))
    for k, path in enumerate(tqdm(maps, desc="RAVENS maps", unit="scan")):
        volume = np.asarray(nibabel.load(path).get_fdata())
        if volume.shape != grey.shape:
            raise RawInputError(f"{path}: shape {volume.shape} differs from the atlas "
                                f"{atlas.name} {grey.shape}")
        out[k] = volume[grey]
    np.save(into / "ADNI_G.npy", out)
    (into / "ADNI_subj.txt").write_text("".join(f"{n}\n" for n in names))
    return names


def scan_ptids(names: list[str]) -> set[str]:
    """The participants of scan names ``<PTID>_<…>_<date>`` (PTID: the first three parts)."""
    return {"_".join(n.split("_")[:3]) for n in names}
