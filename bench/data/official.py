"""The real ADNI and MIMIC-IV data, read from the folders the official Flex-MoE code reads.

The data cannot be shipped (both need a data-use agreement); ``run_bench.py prepare adni|mimic``
(:mod:`bench.data.prepare`, docs/prepare.md) builds these folders from the raw downloads, and
the suite is pointed at the resulting folder.

ADNI (``data/adni`` of the official code; ``--data-option root=PATH`` or ``$FLEXMOE_BENCH_ADNI``)::

    label.csv                               PTID, DIAGNOSIS (1 CN, 2 MCI, 3 Dementia)
    PTID_splits.json          (optional)    {"training": [..], "validation": [..], "testing": [..]}
    image/ADNI_G.npy + image/ADNI_subj.txt  grey-matter voxel rows; one <PTID>_..._<date> per row
    genomic/genomic_merged.h5ad (or .csv)   SNP genotypes, PTID index
    clinical/clinical_merged_mean.csv       PTID index
    biospecimen/biospecimen_merged_mean.csv PTID index

A modality is observed for a patient when the patient's PTID has a row in its file. As the
official loader: the latest scan per patient; image voxels standardised by the array's mean and
std; genotypes NaN → column mode, then min–max scaled to [−1, 1]; clinical columns starting with
PTCOGBEG, PTADDX or PTADBEG dropped. The image enters as a voxel vector through the
patch tokeniser (the suite has no 3-D CNN).

MIMIC-IV (``data/mimic``; ``root=PATH`` or ``$FLEXMOE_BENCH_MIMIC``)::

    labels.csv                      subject_id, one_year_mortality
    PTID_splits_mimic.json (opt.)   as above, with subject ids
    lab_x.pt, note_x.pt, code_x.pt  tensors [N, F] in labels.csv row order

A MIMIC row is missing when all its entries are NaN, zero or the official sentinel −2; NaN
entries of observed rows become 0 (as the I2MoE scripts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.arrays import Modality, RawArrays
from bench.data.digest import files_digest
from bench.errors import UserError

SENTINEL = -2.0
ADNI_LEAKY_PREFIXES = ("PTCOGBEG", "PTADDX", "PTADBEG")


def data_root(option: str | None, env: str, name: str) -> Path:
    """The folder from the data option, else the environment variable; a clear error if none."""
    value = option or os.environ.get(env)
    if not value:
        raise FileNotFoundError(
            f"the {name} data folder is not configured: pass --data-option root=PATH or set "
            f"${env} to a folder built by `run_bench.py prepare {name.split('-')[0].lower()}` "
            f"from the raw downloads (docs/prepare.md)")
    root = Path(value).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name} data folder {root} does not exist (from "
                                f"{'root=' if option else '$' + env})")
    return root


#: Every file the readers below may read, per data set (relative to the data folder).
FILES = {
    "adni": ("label.csv", "PTID_splits.json", "image/ADNI_G.npy", "image/ADNI_subj.txt",
             "genomic/genomic_merged.h5ad", "genomic/genomic_merged.csv",
             "clinical/clinical_merged_mean.csv", "biospecimen/biospecimen_merged_mean.csv"),
    "mimic": ("labels.csv", "PTID_splits_mimic.json", "lab_x.pt", "note_x.pt", "code_x.pt"),
}


def content_digest(root: Path, family: str) -> str:
    """Digest of the bytes of every file of ``FILES[family]`` present under ``root``."""
    return files_digest((name, root / name) for name in FILES[family] if (root / name).is_file())


def configured(env: str) -> bool:
    """Whether ``$env`` names an existing folder (the real data set can be used)."""
    value = os.environ.get(env)
    return bool(value) and Path(value).expanduser().is_dir()


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; expected {what}")
    return path


def _read_splits(path: Path, ids: np.ndarray) -> dict[str, np.ndarray] | None:
    """Row indices per split from an official ``PTID_splits*.json`` (``None`` if absent)."""
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        lists = {"train": raw["training"], "val": raw["validation"], "test": raw["testing"]}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: expected JSON with lists 'training', 'validation' and "
                        f"'testing' ({exc})") from None
    index = pd.Index(ids)
    out = {}
    for split, members in lists.items():
        rows = index.get_indexer([str(m) for m in members])
        out[split] = np.unique(rows[rows >= 0])
    return out


def _align(table: pd.DataFrame, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``table`` (indexed by id) placed at ``ids``: features and observed mask."""
    table = table[~table.index.duplicated(keep="last")]
    rows = pd.Index(table.index.astype(str)).get_indexer(ids)
    present = rows >= 0
    x = np.zeros((len(ids), table.shape[1]), dtype=np.float32)
    x[present] = table.to_numpy(dtype=np.float32)[rows[present]]
    return x, present


def _numeric_csv(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, index_col=0)
    bad = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if bad:
        raise UserError(f"{path}: non-numeric column(s) {bad[:5]}; expected the output of the "
                        "official preprocessing")
    return table


def _adni_image(root: Path) -> pd.DataFrame:
    voxels = np.load(_require(root / "image" / "ADNI_G.npy", "the grey-matter voxel array"),
                     mmap_mode="r")
    lines = _require(root / "image" / "ADNI_subj.txt", "one <PTID>_..._<date> line per scan")
    scans = pd.DataFrame([(i, "_".join(p.split("_")[:3]), p.split("_")[-1])
                          for i, p in enumerate(lines.read_text().split())],
                         columns=["row", "ptid", "date"])
    if len(scans) != voxels.shape[0]:
        raise UserError(f"{lines}: {len(scans)} scans listed but ADNI_G.npy has "
                        f"{voxels.shape[0]} rows")
    scans["date"] = pd.to_datetime(scans["date"], errors="coerce")
    latest = scans.sort_values("date").groupby("ptid")["row"].last()
    x = np.asarray(voxels[np.sort(latest.to_numpy())], dtype=np.float32)
    x = (x - voxels.mean()) / voxels.std()
    ptids = scans.set_index("row").loc[np.sort(latest.to_numpy()), "ptid"]
    return pd.DataFrame(x, index=ptids.to_numpy())


def _adni_genomic(root: Path) -> pd.DataFrame:
    h5ad, csv = root / "genomic" / "genomic_merged.h5ad", root / "genomic" / "genomic_merged.csv"
    if h5ad.is_file():
        try:
            import anndata
        except ImportError:
            raise ImportError(f"reading {h5ad} needs anndata: pip install 'flexmoe-bench[adni]' "
                              f"(or convert it to {csv.name})") from None
        table = anndata.read_h5ad(h5ad).to_df()
    else:
        table = _numeric_csv(_require(csv, "genomic_merged.h5ad or genomic_merged.csv"))
    table = table.apply(lambda col: col.fillna(col.mode().iloc[0]) if col.notna().any() else
                        col.fillna(0.0))
    lo, hi = table.min(), table.max()
    span = (hi - lo).replace(0, 1)
    return (table - lo) / span * 2 - 1


def _adni_clinical(root: Path) -> pd.DataFrame:
    table = _numeric_csv(root / "clinical" / "clinical_merged_mean.csv")
    return table.loc[:, [not str(c).startswith(ADNI_LEAKY_PREFIXES) for c in table.columns]]


def read_adni(root: Path) -> tuple[RawArrays, dict[str, np.ndarray] | None]:
    """The modalities found under ``root`` (at least one) and the official split if present."""
    labels = pd.read_csv(_require(root / "label.csv", "columns PTID,DIAGNOSIS"))
    if not {"PTID", "DIAGNOSIS"} <= set(labels.columns):
        raise UserError(f"{root / 'label.csv'}: expected columns PTID,DIAGNOSIS, found "
                        f"{list(labels.columns)}")
    ids = labels["PTID"].astype(str).to_numpy()
    readers = {
        "I": ("image", root / "image" / "ADNI_G.npy", _adni_image),
        "G": ("genomic", root / "genomic", _adni_genomic),
        "C": ("clinical", root / "clinical" / "clinical_merged_mean.csv", _adni_clinical),
        "B": ("biospecimen", root / "biospecimen" / "biospecimen_merged_mean.csv",
              lambda r: _numeric_csv(r / "biospecimen" / "biospecimen_merged_mean.csv")),
    }
    modalities, features, observed = [], {}, []
    for letter, (name, marker, read) in readers.items():
        if not marker.exists():
            continue
        x, present = _align(read(root), ids)
        modalities.append(Modality(name, letter, (x.shape[1],)))
        features[letter] = x
        observed.append(present)
    if not modalities:
        raise FileNotFoundError(f"{root}: no modality found; expected image/ADNI_G.npy, "
                                "genomic/, clinical/clinical_merged_mean.csv or "
                                "biospecimen/biospecimen_merged_mean.csv")
    raw = RawArrays(modalities=tuple(modalities), features=features,
                    observed=np.stack(observed, axis=1), ids=ids,
                    labels=labels["DIAGNOSIS"].to_numpy(dtype=np.int64) - 1,
                    class_names=("CN", "MCI", "Dementia"))
    return raw, _read_splits(root / "PTID_splits.json", ids)


def observed_rows(x: np.ndarray) -> np.ndarray:
    """Rows of a MIMIC array that are observed: not all NaN, zero or the sentinel −2."""
    empty = np.isnan(x) | (x == 0) | (x == SENTINEL)
    return ~empty.all(1)


def read_mimic(root: Path) -> tuple[RawArrays, dict[str, np.ndarray] | None]:
    """L labs and vitals, N notes, C ICD-9 codes from the official ``*.pt`` arrays."""
    import torch

    labels = pd.read_csv(_require(root / "labels.csv", "columns subject_id,one_year_mortality"))
    if not {"subject_id", "one_year_mortality"} <= set(labels.columns):
        raise UserError(f"{root / 'labels.csv'}: expected columns subject_id,one_year_mortality, "
                        f"found {list(labels.columns)}")
    ids = labels["subject_id"].astype(str).to_numpy()
    modalities, features, observed = [], {}, []
    for letter, name, stem in (("L", "labs", "lab_x"), ("N", "notes", "note_x"),
                               ("C", "codes", "code_x")):
        path = root / f"{stem}.pt"
        if not path.is_file():
            continue
        x = np.asarray(torch.load(path, map_location="cpu", weights_only=True), dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != len(ids):
            raise UserError(f"{path}: expected a [{len(ids)}, F] tensor (one row per labels.csv "
                            f"row), found shape {tuple(x.shape)}")
        present = observed_rows(x)
        x = np.nan_to_num(x, nan=0.0)
        modalities.append(Modality(name, letter, (x.shape[1],)))
        features[letter] = x
        observed.append(present)
    if not modalities:
        raise FileNotFoundError(f"{root}: no modality found; expected lab_x.pt, note_x.pt or "
                                "code_x.pt")
    raw = RawArrays(modalities=tuple(modalities), features=features,
                    observed=np.stack(observed, axis=1), ids=ids,
                    labels=labels["one_year_mortality"].to_numpy(dtype=np.int64),
                    class_names=("alive", "deceased"), class_weights=(0.25, 0.75))
    return raw, _read_splits(root / "PTID_splits_mimic.json", ids)
