"""``prepare adni``: the raw ADNI downloads → the folder the ``adni`` loader reads.

Each modality is one cached step (:class:`bench.data.prepare.output.Workspace`); a modality whose
raw files are absent is left out with a log line, one named in ``skip`` is left out on
purpose. The released scripts' quirks that change numbers are reproduced unless named in
``fixes`` (:data:`QUIRKS`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.data.digest import file_digest
from bench.data.prepare import adni_image, adni_tables, genomic
from bench.data.prepare.output import VERSION, Workspace, describe_inputs, library_versions, stamp
from bench.data.prepare.quirks import MODALITIES, QUIRKS
from bench.data.prepare.raw import RawInputError
from bench.data.prepare.split import write_split
from bench.errors import UserError

logger = logging.getLogger(__name__)

#: Files written beside the loader's (which reads the _mean ones).
UNFILLED = ("clinical/clinical_merged.csv", "biospecimen/biospecimen_merged.csv")


def check_names(given: Iterable[str], known: Iterable[str], option: str) -> frozenset[str]:
    """The names of a repeatable option, ``all`` for every one; unknown ones are an error."""
    given, known = list(given), tuple(known)
    if "all" in given:
        return frozenset(known)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UserError(f"{option}: unknown name(s) {unknown}; expected some of "
                        f"{', '.join(known)} or all")
    return frozenset(given)


def _step(ws: Workspace, raw: Path, name: str, inputs: list[Path], key: dict, build) -> Path:
    """A cached step keyed by the digests of its raw inputs plus ``key``."""
    digests = [(i["path"], i["sha256"]) for i in describe_inputs(raw, inputs)]
    return ws.step(name, {"inputs": digests, **key}, build)


def prepare_adni(raw: Path, out: Path, *, fixes: Iterable[str] = (),
                 skip: Iterable[str] = (), chain: Path | None = None, split_seed: int = 0,
                 val_frac: float = 0.15, test_frac: float = 0.15) -> dict[str, Any]:
    """Build ``out`` from the ADNI downloads under ``raw``; return its manifest."""
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise FileNotFoundError(f"--raw {raw} is not a folder; expected the folder holding "
                                "the ADNI downloads (DXSUM_PDXCONV_*.csv, …)")
    fixes = check_names(fixes, QUIRKS, "--fix")
    skip = check_names(skip, MODALITIES, "--skip")
    if chain is not None and not Path(chain).is_file():
        raise FileNotFoundError(f"--chain {chain} does not exist; expected a UCSC chain file "
                                "(e.g. hg18ToHg38.over.chain.gz)")
    ws = Workspace(out, "adni", "label.csv", UNFILLED)
    fix_key = sorted(fixes)
    dx_path = adni_tables.find_table(raw, adni_tables.DIAGNOSIS)
    inputs, files, covered, details = [dx_path], {}, {}, {}

    def build_labels(into: Path) -> None:
        label, kept = adni_tables.labels(adni_tables.read_diagnosis(dx_path))
        label.to_csv(into / "label.csv")
        (into / "kept.txt").write_text("".join(f"{p}\n" for p in sorted(kept)))

    step = _step(ws, raw, "labels", [dx_path], {}, build_labels)
    files["label.csv"] = step / "label.csv"
    kept = set((step / "kept.txt").read_text().split())
    label = pd.read_csv(step / "label.csv", index_col=0)

    clinical = _tables_present(raw, adni_tables.CLINICAL, "clinical", skip)
    if clinical:
        def build_clinical(into: Path) -> None:
            unfilled, mean = adni_tables.clinical(clinical, kept, fixes)
            unfilled.to_csv(into / "clinical_merged.csv")
            mean.to_csv(into / "clinical_merged_mean.csv")

        step = _step(ws, raw, "clinical", [dx_path, *clinical], {"fixes": fix_key},
                         build_clinical)
        inputs += clinical
        for name in ("clinical_merged.csv", "clinical_merged_mean.csv"):
            files[f"clinical/{name}"] = step / name
        covered["clinical"] = _index_of(step / "clinical_merged_mean.csv")

    bio = _tables_present(raw, adni_tables.BIOSPECIMEN, "biospecimen", skip)
    if bio:
        def build_bio(into: Path) -> None:
            unfilled, mean, info = adni_tables.biospecimen(*bio, dx_path, kept, fixes)
            unfilled.to_csv(into / "biospecimen_merged.csv")
            mean.to_csv(into / "biospecimen_merged_mean.csv")
            (into / "mapping.txt").write_text(f"{info['upenn_rows']} "
                                              f"{info['upenn_rows_without_ptid']}\n")

        step = _step(ws, raw, "biospecimen", [dx_path, *bio], {"fixes": fix_key}, build_bio)
        inputs += bio
        for name in ("biospecimen_merged.csv", "biospecimen_merged_mean.csv"):
            files[f"biospecimen/{name}"] = step / name
        covered["biospecimen"] = _index_of(step / "biospecimen_merged_mean.csv")
        rows, lost = map(int, (step / "mapping.txt").read_text().split())
        details["biospecimen"] = {"upenn_rows": rows, "upenn_rows_without_ptid": lost}

    sets = [] if "genomic" in skip else genomic.find_sets(raw)
    if sets:
        exe, version = genomic.find_plink()
        set_inputs = [f for s in sets for f in genomic.set_files(s)]

        def build_genomic(into: Path) -> None:
            ids, info = genomic.build_genomic(sets, into, chain, fixes, exe)
            (into / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
            (into / "info.json").write_text(json.dumps(info))

        key = {"fixes": fix_key, "chain": file_digest(chain) if chain else None,
               "plink": version}
        step = _step(ws, raw, "genomic", set_inputs, key, build_genomic)
        inputs += set_inputs + ([chain] if chain else [])
        files["genomic/genomic_merged.h5ad"] = step / "genomic_merged.h5ad"
        covered["genomic"] = set((step / "ids.txt").read_text().split())
        details["genomic"] = {**json.loads((step / "info.json").read_text()),
                              "plink": key["plink"], "chain": chain.name if chain else None}
    elif "genomic" not in skip:
        logger.info("no PLINK set (.bed/.bim/.fam) under %s: genomic left out", raw)

    image = [] if "image" in skip else adni_image.find_image_inputs(raw)
    if image:
        def build_image(into: Path) -> None:
            adni_image.build_image(image, into)

        step = _step(ws, raw, "image", image, {}, build_image)
        inputs += image
        for name in ("ADNI_G.npy", "ADNI_subj.txt"):
            files[f"image/{name}"] = step / name
        covered["image"] = adni_image.scan_ptids((step / "ADNI_subj.txt").read_text().split())
    elif "image" not in skip:
        logger.info("no ADNI_G.npy nor RAVENS maps under %s: image left out", raw)

    if not covered:
        raise RawInputError(f"{raw}: no modality to prepare; expected the clinical tables "
                            f"({', '.join(adni_tables.CLINICAL)}), the biospecimen tables "
                            f"({', '.join(adni_tables.BIOSPECIMEN)}), PLINK sets or image "
                            "outputs (ADNI_G.npy + ADNI_subj.txt)")
    ptids = label["PTID"].astype(str).to_numpy()
    order = [m for m in MODALITIES if m in covered]
    observed = np.stack([np.isin(ptids, list(covered[m])) for m in order], axis=1)
    for m, col in zip(order, observed.T):
        if not col.any():
            raise RawInputError(f"{m}: no participant of label.csv has {m} data; the PTIDs "
                                "of its files match none of the diagnosis table's")
    split_dir = ws.cache / ".split"
    split_dir.mkdir(exist_ok=True)
    split = write_split(split_dir / "PTID_splits.json", ptids, observed,
                        label["DIAGNOSIS"].to_numpy(int) - 1, split_seed, val_frac, test_frac,
                        "adni")
    files["PTID_splits.json"] = split_dir / "PTID_splits.json"
    manifest = {
        "format": "flexmoe-bench prepared adni", "version": VERSION, "created": stamp(),
        "suite": _suite_version(), "raw": str(raw),
        "inputs": describe_inputs(raw, inputs),
        "options": {"fixes": fix_key, "skip": sorted(skip),
                    "chain": str(chain) if chain else None, "split_seed": split_seed,
                    "val_frac": val_frac, "test_frac": test_frac},
        "quirks": {name: {"released": where, "what": what,
                          "here": "fixed" if name in fixes else "reproduced"}
                   for name, (where, what) in QUIRKS.items()},
        "versions": library_versions(["pandas", "numpy", "scikit-learn", "anndata",
                                      "bed-reader", "liftover", "nibabel"]),
        "split": split,
        "counts": {"participants": len(ptids),
                   "per_label": {int(k): int(v) for k, v in
                                 label["DIAGNOSIS"].value_counts().sort_index().items()},
                   "per_modality": {m: int(c) for m, c in zip(order, observed.sum(0))},
                   "every_modality": int(observed.all(1).sum())},
        "details": details, "reused_steps": ws.reused,
    }
    return ws.place(files, manifest)


def _tables_present(raw: Path, names: tuple[str, ...], what: str,
                    skip: frozenset[str]) -> list[Path]:
    """The tables of one modality: all of them, or none (left out with a log line); some
    but not all is an error naming the missing ones."""
    if what in skip:
        return []
    found = {n: adni_tables.find_table(raw, n, required=False) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if len(missing) == len(names):
        logger.info("no %s table under %s: %s left out", what, raw, what)
        return []
    if missing:
        raise RawInputError(f"{raw}: the {what} modality needs {', '.join(names)}; missing "
                            f"{', '.join(missing)} (or leave {what} out with --skip {what})")
    return [found[n] for n in names]


def _index_of(path: Path) -> set[str]:
    return set(pd.read_csv(path, index_col=0, usecols=[0]).index.astype(str))


def _suite_version() -> str:
    from bench.version import code_version

    return code_version()
