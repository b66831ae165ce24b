"""``prepare mimic``: a raw MIMIC-IV download → the folder the ``mimic`` loader reads.

No MIMIC-IV preprocessing was released with Flex-MoE, so every rule here is the suite's
own: a constant or a keyword below, recorded in the manifest's ``choices`` and explained in
docs/prepare.md. One row per patient at the last discharge; one-year mortality
after it; L = aggregates of the most frequent lab items of that admission, N = its
discharge note(s) embedded (:mod:`bench.data.prepare.notes`), C = its ICD-9 codes, multi-hot.

Each step is cached (:class:`bench.data.prepare.output.Workspace`), keyed by the digests of its
raw inputs, its options and the steps it reads. The large tables (labevents has about 120
million rows) are read in chunks of the columns used, keeping only the cohort's rows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.data import official
from bench.data.prepare import notes
from bench.data.prepare.mimic_tables import TABLES, examples, read_table, unmatched, whole
from bench.data.prepare.output import VERSION, Workspace, describe_inputs, library_versions, stamp
from bench.data.prepare.raw import RawInputError
from bench.data.prepare.split import write_split
from bench.errors import UserError

logger = logging.getLogger(__name__)

FORMAT = "flexmoe-bench prepared mimic"
LABEL_FILE = "labels.csv"
#: Files written beside the loader's: what the L and C columns are.
SIDECARS = ("lab_items.csv", "code_vocab.csv")
HORIZON_DAYS = 365
IN_HOSPITAL_DEATHS = ("exclude", "keep")
AGGREGATES = ("mean", "min", "max", "last")
ICD_VERSION = 9


def build_cohort(patients: Path, admissions: Path,
                 in_hospital_deaths: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per patient (by subject_id): the last admission by discharge time (ties: the
    highest hadm_id) and the label; the counts the manifest reports."""
    pat = whole(patients, TABLES["patients"]).dropna(subset=["SUBJECT_ID"])
    repeated = pat["SUBJECT_ID"][pat["SUBJECT_ID"].duplicated()]
    if len(repeated):
        raise RawInputError(f"{patients}: column subject_id repeats {len(repeated)} id(s), e.g. "
                            f"{examples(repeated)}; expected one row per patient")
    adm = whole(admissions, TABLES["admissions"]).dropna(subset=["SUBJECT_ID", "HADM_ID"])
    known = adm["SUBJECT_ID"].isin(pat["SUBJECT_ID"])
    if not known.any():
        raise RawInputError(f"{admissions}: no subject_id matches one in {patients.name} (e.g. "
                            f"{examples(adm['SUBJECT_ID'].astype('int64'))}); are both tables "
                            "from the same MIMIC-IV download?")
    if not known.all():
        logger.warning("%s: %d admission(s) of subjects absent from %s left out", admissions,
                       int((~known).sum()), patients.name)
    adm = adm[known & adm["DISCHTIME"].notna()]
    if adm.empty:
        raise RawInputError(f"{admissions}: column dischtime is empty in every admission of a "
                            f"patient in {patients.name}; no patient left in the cohort")
    last = adm.sort_values(["DISCHTIME", "HADM_ID"], kind="mergesort").groupby(
        "SUBJECT_ID").tail(1).merge(pat, on="SUBJECT_ID", how="left")
    died = last["HOSPITAL_EXPIRE_FLAG"].fillna(0).to_numpy() == 1
    horizon = last["DISCHTIME"].dt.normalize() + pd.Timedelta(days=HORIZON_DAYS)
    label = (last["DOD"].notna() & (last["DOD"].dt.normalize() <= horizon)).to_numpy()
    if in_hospital_deaths == "keep":
        label |= died
    else:
        last, label = last[~died], label[~died]
    if last.empty:
        raise RawInputError(f"{admissions}: no patient left in the cohort: every last admission "
                            "ended in death (column hospital_expire_flag) and these are "
                            "excluded (--in-hospital-deaths exclude)")
    cohort = pd.DataFrame({"subject_id": last["SUBJECT_ID"].to_numpy(dtype=np.int64),
                           "hadm_id": last["HADM_ID"].to_numpy(dtype=np.int64),
                           "one_year_mortality": label.astype(np.int64)})
    info = {"patients_with_admission": len(died), "in_hospital_deaths": int(died.sum()),
            "admissions_without_patient": int((~known).sum())}
    return cohort.sort_values("subject_id").reset_index(drop=True), info


def rows_by_admission(cohort: pd.DataFrame) -> pd.Series:
    """Cohort row of each cohort hadm_id."""
    return pd.Series(np.arange(len(cohort)), index=cohort["hadm_id"].to_numpy())


def build_labs(labevents: Path, d_labitems: Path, cohort: pd.DataFrame, lab_items: int,
               admissions: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Raw (unstandardised) L features [N, F] and one row per column describing it."""
    row_of = rows_by_admission(cohort)
    parts = [_partial(chunk) for chunk in read_table(
        labevents, TABLES["labevents"],
        lambda c: c["HADM_ID"].isin(row_of.index) & c["VALUENUM"].notna() & c["ITEMID"].notna())
        if len(chunk)]
    if not parts:
        raise unmatched(labevents, "hadm_id (of a row with a numeric valuenum)", admissions)
    stats = _combine(pd.concat(parts, ignore_index=True))
    counts = stats.groupby(level="ITEMID").size().rename("admissions").reset_index()
    ranked = counts.sort_values(["admissions", "ITEMID"], ascending=[False, True],
                                kind="mergesort")
    if len(ranked) < lab_items:
        logger.warning("--lab-items %d: the cohort's admissions have %d lab item(s); using "
                       "all of them", lab_items, len(ranked))
    chosen = ranked.head(lab_items).set_index("ITEMID")["admissions"]
    names = whole(d_labitems, TABLES["d_labitems"]).dropna(subset=["ITEMID"])
    label_of = names.drop_duplicates("ITEMID").set_index("ITEMID")["LABEL"]
    columns = [(a, i) for i in chosen.index for a in AGGREGATES]
    wide = stats[stats.index.get_level_values("ITEMID").isin(chosen.index)][list(AGGREGATES)]
    wide = wide.unstack("ITEMID").reindex(columns=pd.MultiIndex.from_tuples(columns))
    x = np.full((len(cohort), len(columns)), np.nan)
    x[row_of[wide.index].to_numpy()] = wide.to_numpy()
    meta = pd.DataFrame({"itemid": [int(i) for _, i in columns],
                         "label": [label_of.get(i, "") for _, i in columns],
                         "aggregate": [a for a, _ in columns],
                         "admissions": [int(chosen[i]) for _, i in columns]})
    return x, meta


def _partial(chunk: pd.DataFrame) -> pd.DataFrame:
    """Per (admission, item) of one chunk: sum, count, min, max, last value and its time."""
    chunk = chunk.dropna(subset=["CHARTTIME"]).sort_values("CHARTTIME", kind="mergesort")
    groups = chunk.groupby(["HADM_ID", "ITEMID"], sort=False)
    out = groups["VALUENUM"].agg(["sum", "count", "min", "max", "last"])
    out["time"] = groups["CHARTTIME"].last()
    return out.reset_index()


def _combine(parts: pd.DataFrame) -> pd.DataFrame:
    """The chunks' partial aggregates as one row per (admission, item); ``last`` is the value
    at the latest chart time (equal times: the later row in the file)."""
    groups = parts.sort_values("time", kind="mergesort").groupby(["HADM_ID", "ITEMID"])
    stats = pd.DataFrame({"sum": groups["sum"].sum(), "count": groups["count"].sum(),
                          "min": groups["min"].min(), "max": groups["max"].max(),
                          "last": groups["last"].last()})
    stats["mean"] = stats["sum"] / stats["count"]
    return stats


def build_codes(path: Path, cohort: pd.DataFrame, min_code_count: int,
                admissions: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Multi-hot [N, V] of the last admission's ICD-9 codes and the vocabulary: the codes of
    at least ``min_code_count`` cohort patients, in code order."""
    row_of = rows_by_admission(cohort)
    rows = pd.concat(list(read_table(path, TABLES["diagnoses_icd"],
                                     lambda c: c["HADM_ID"].isin(row_of.index))))
    if rows.empty:
        raise unmatched(path, "hadm_id", admissions)
    rows = rows[(rows["ICD_VERSION"] == ICD_VERSION) & rows["ICD_CODE"].notna()]
    pairs = pd.DataFrame({"row": row_of[rows["HADM_ID"]].to_numpy(),
                          "code": rows["ICD_CODE"].str.strip().str.upper().to_numpy()})
    pairs = pairs[pairs["code"] != ""].drop_duplicates()
    counts = pairs.groupby("code").size()
    vocab = counts[counts >= min_code_count].sort_index()
    if vocab.empty:
        raise RawInputError(f"{path}: no ICD-{ICD_VERSION} code (column icd_code with "
                            f"icd_version {ICD_VERSION}) of a last admission is shared by "
                            f"{min_code_count} or more cohort patients; lower --min-code-count")
    kept = pairs[pairs["code"].isin(vocab.index)]
    x = np.zeros((len(cohort), len(vocab)), dtype=np.float32)
    x[kept["row"].to_numpy(), vocab.index.get_indexer(kept["code"])] = 1.0
    return x, pd.DataFrame({"column": np.arange(len(vocab)), "code": vocab.index,
                            "patients": vocab.to_numpy()})


def standardise(x: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
    """``(x − mean) / std`` with the training rows' statistics (NaN ignored); columns constant
    or unobserved in training are dropped. Returns the kept columns and, per column, whether
    it was kept, its mean and its standard deviation."""
    frame = pd.DataFrame(x[train])
    mean, std = frame.mean().to_numpy(), frame.std(ddof=0).to_numpy()
    keep = np.nan_to_num(std) > 0
    scaled = ((x[:, keep] - mean[keep]) / std[keep]).astype(np.float32)
    return scaled, pd.DataFrame({"kept": keep, "train_mean": mean, "train_std": std})


def prepare_mimic(raw: Path, out: Path, *, embedder: str = notes.TFIDF, note_dim: int = 768,
                  lab_items: int = 50, min_code_count: int = 5,
                  in_hospital_deaths: str = "exclude", split_seed: int = 0,
                  val_frac: float = 0.15, test_frac: float = 0.15) -> dict[str, Any]:
    """Build ``out`` from the MIMIC-IV download under ``raw``; return its manifest."""
    raw, out = Path(raw), Path(out)
    options = {"embedder": embedder, "note_dim": note_dim, "lab_items": lab_items,
               "min_code_count": min_code_count, "in_hospital_deaths": in_hospital_deaths,
               "split_seed": split_seed, "val_frac": val_frac, "test_frac": test_frac}
    _check(raw, options)
    paths = {name: table.find(raw) for name, table in TABLES.items()}
    inputs = describe_inputs(raw, paths.values())
    sha = {i["path"]: i["sha256"] for i in inputs}
    adm = paths["admissions"]
    ws = Workspace(out, "mimic", LABEL_FILE, SIDECARS)

    def step(name: str, tables: tuple[str, ...], after: tuple[Path, ...],
             build: Callable[[Path], None], **opts: Any) -> Path:
        def logged(into: Path) -> None:
            logger.info("%s: building", name)
            build(into)

        digests = [(t, sha[str(paths[t].relative_to(raw))]) for t in tables]
        return ws.step(name, {"inputs": digests, "after": [a.name for a in after],
                              "options": opts}, logged)

    def cohort_step(into: Path) -> None:
        table, info = build_cohort(paths["patients"], adm, in_hospital_deaths)
        table.to_csv(into / "cohort.csv", index=False)
        (into / "info.json").write_text(json.dumps(info))

    cohort_dir = step("cohort", ("patients", "admissions"), (), cohort_step,
                      in_hospital_deaths=in_hospital_deaths)
    cohort = pd.read_csv(cohort_dir / "cohort.csv")
    ids = cohort["subject_id"].astype(str).to_numpy()
    labels = cohort["one_year_mortality"].to_numpy(dtype=np.int64)
    row_of = rows_by_admission(cohort)

    def labs_step(into: Path) -> None:
        x, meta = build_labs(paths["labevents"], paths["d_labitems"], cohort, lab_items, adm)
        np.save(into / "labs.npy", x)
        meta.to_csv(into / "columns.csv", index=False)

    def codes_step(into: Path) -> None:
        x, vocab = build_codes(paths["diagnoses_icd"], cohort, min_code_count, adm)
        np.save(into / "codes.npy", x)
        vocab.to_csv(into / "code_vocab.csv", index=False)

    def note_texts() -> pd.Series:
        texts = notes.join_notes(read_table(paths["discharge"], TABLES["discharge"], lambda c: c[
            "HADM_ID"].isin(row_of.index)), row_of)
        if texts.empty:
            raise unmatched(paths["discharge"], "hadm_id (of a note with text)", adm)
        return texts

    def found_step(into: Path) -> None:
        np.save(into / "rows.npy", note_texts().index.to_numpy(dtype=np.int64))

    labs_dir = step("labs", ("labevents", "d_labitems"), (cohort_dir,), labs_step,
                    lab_items=lab_items)
    codes_dir = step("codes", ("diagnoses_icd",), (cohort_dir,), codes_step,
                     min_code_count=min_code_count)
    found_dir = step("notes-found", ("discharge",), (cohort_dir,), found_step)

    def split_step(into: Path) -> None:
        observed = np.stack([~np.isnan(np.load(labs_dir / "labs.npy")).all(1),
                             np.isin(np.arange(len(ids)), np.load(found_dir / "rows.npy")),
                             np.load(codes_dir / "codes.npy").any(1)], axis=1)
        record = write_split(into / "PTID_splits_mimic.json", ids, observed, labels, split_seed,
                             val_frac, test_frac, "mimic")
        np.save(into / "observed.npy", observed)
        (into / "split.json").write_text(json.dumps(record))

    split_dir = step("split", (), (labs_dir, codes_dir, found_dir), split_step,
                     split_seed=split_seed, val_frac=val_frac, test_frac=test_frac)
    train = np.isin(ids, json.loads((split_dir / "PTID_splits_mimic.json").read_text())[
        "training"])

    def embed_step(into: Path) -> None:
        x, info = notes.embed_rows(note_texts(), train, embedder, note_dim)
        np.save(into / "notes.npy", x)
        (into / "info.json").write_text(json.dumps(info))

    embed_dir = step("notes-embedding", ("discharge",), (found_dir, split_dir), embed_step,
                     embedder=embedder, note_dim=note_dim)

    def tensors_step(into: Path) -> None:
        lab_x, stats = standardise(np.load(labs_dir / "labs.npy"), train)
        if not lab_x.shape[1]:
            raise RawInputError(f"{paths['labevents']}: no lab column varies among the training "
                                "patients; raise --lab-items")
        columns = pd.read_csv(labs_dir / "columns.csv", dtype={"label": str}).join(stats)
        columns[columns["kept"]].drop(columns="kept").reset_index(drop=True).rename_axis(
            "column").to_csv(into / "lab_items.csv")
        tensors = {"lab_x": lab_x, "note_x": np.load(embed_dir / "notes.npy"),
                   "code_x": np.load(codes_dir / "codes.npy")}
        for stem, x in tensors.items():
            torch.save(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                       into / f"{stem}.pt")
        pd.DataFrame({"subject_id": cohort["subject_id"], "one_year_mortality": labels}).to_csv(
            into / LABEL_FILE, index=False)
        seen = np.stack([official.observed_rows(x) for x in tensors.values()], axis=1)
        if (seen != np.load(split_dir / "observed.npy")).any():
            logger.warning("some patients with data read as missing (every value equal to the "
                           "training mean, or a note without a known term)")
        (into / "info.json").write_text(json.dumps({
            "observed": {k: int(v) for k, v in zip("LNC", seen.sum(0))},
            "every_modality": int(seen.all(1).sum()),
            "lab_columns_dropped": int((~columns["kept"]).sum())}))

    tensors_dir = step("tensors", (), (labs_dir, codes_dir, split_dir, embed_dir), tensors_step)
    files = {name: tensors_dir / name for name in (LABEL_FILE, "lab_x.pt", "note_x.pt",
                                                   "code_x.pt", "lab_items.csv")}
    files["code_vocab.csv"] = codes_dir / "code_vocab.csv"
    files["PTID_splits_mimic.json"] = split_dir / "PTID_splits_mimic.json"
    from bench.version import code_version

    manifest = {
        "format": FORMAT, "version": VERSION, "created": stamp(), "suite": code_version(),
        "raw": str(raw), "inputs": inputs, "options": options,
        "choices": _choices(options, cohort_dir, codes_dir, embed_dir, tensors_dir),
        "versions": library_versions(["pandas", "numpy", "scikit-learn", "torch",
                                      "sentence-transformers"]),
        "split": json.loads((split_dir / "split.json").read_text()),
        "counts": {"patients": len(ids), "positives": int(labels.sum()),
                   **json.loads((tensors_dir / "info.json").read_text())},
        "reused_steps": ws.reused,
    }
    return ws.place(files, manifest)


def _check(raw: Path, options: dict[str, Any]) -> None:
    """Refuse a bad option or a missing folder before any step runs."""
    if not raw.is_dir():
        raise FileNotFoundError(f"--raw {raw} is not a folder; expected the MIMIC-IV download "
                                "(hosp/ and note/ with patients.csv.gz, labevents.csv.gz, …)")
    for name in ("note_dim", "lab_items", "min_code_count", "split_seed"):
        value, least = options[name], 0 if name == "split_seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UserError(f"--{name.replace('_', '-')} must be an integer ≥ {least}, got "
                            f"{value!r}")
    val, test = options["val_frac"], options["test_frac"]
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise UserError(f"--val-frac {val} and --test-frac {test} must each lie in (0, 1) and "
                        "sum to less than 1 (the rest is the training split)")
    if options["in_hospital_deaths"] not in IN_HOSPITAL_DEATHS:
        raise UserError(f"--in-hospital-deaths {options['in_hospital_deaths']!r}: expected "
                        f"{' or '.join(IN_HOSPITAL_DEATHS)}")
    notes.check_embedder(options["embedder"])


def _choices(options: dict[str, Any], cohort_dir: Path, codes_dir: Path, embed_dir: Path,
             tensors_dir: Path) -> dict[str, Any]:
    """Every rule that makes this folder's "MIMIC-IV", for the manifest."""
    columns = pd.read_csv(tensors_dir / "lab_items.csv", dtype={"label": str},
                          keep_default_na=False)
    items = columns.drop_duplicates("itemid")
    vocab = pd.read_csv(codes_dir / "code_vocab.csv", dtype={"code": str})
    keep = options["in_hospital_deaths"] == "keep"
    return {
        "cohort": "patients with an admission with a dischtime; one row each, at the last "
                  "admission by dischtime (ties: the highest hadm_id); rows by subject_id",
        "label": f"one_year_mortality = 1 when dod is on or before the discharge date + "
                 f"{HORIZON_DAYS} days",
        "in_hospital_deaths": ("kept, labelled 1" if keep else
                               "excluded (their label is known at discharge)"),
        "cohort_counts": json.loads((cohort_dir / "info.json").read_text()),
        "labs": {"rows": "labevents rows of the last admission (hadm_id) with a numeric "
                         "valuenum and a charttime",
                 "selection": f"the {options['lab_items']} items most cohort admissions "
                              "have (ties: lower itemid)",
                 "aggregates": list(AGGREGATES),
                 "items": [f"{r.itemid} {r.label}" for r in items.itertuples()],
                 "standardisation": "training split's mean and std (ddof 0); columns "
                                    "constant or absent in training dropped; a missing "
                                    "entry stays NaN (the loader fills 0)",
                 "columns": len(columns)},
        "vitals": "not used (hosp/omr holds mostly outpatient measurements)",
        "codes": {"admission": "last", "icd_version": ICD_VERSION,
                  "vocabulary": f"codes of at least {options['min_code_count']} cohort "
                                "patients (all cohort patients, no label used)",
                  "vocabulary_size": len(vocab), "encoding": "multi-hot (0/1)"},
        "notes": {"rows": "note/discharge notes of the last admission (hadm_id), several "
                          "joined in charttime order", **notes.describe(options["embedder"]),
                  **json.loads((embed_dir / "info.json").read_text())},
        "missing": "L: no lab value → all-NaN row; N: no note with text → all-NaN row; "
                   "C: no vocabulary code → all-zero row",
    }
