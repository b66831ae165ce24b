"""Small raw ADNI downloads, in the formats and column names the released scripts read.

``write_raw(root)`` lays out the released ``data/adni`` folders (``diagnosis/``,
``clinical/``, ``biospecimen/``, ``genomic/``, ``image/``) with generated participants whose
features follow their diagnosis, and returns what the tests need to know about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

N = 150
SNPS = 60
#: A chain on chr1 whose second block starts at target 500: positions 500 and 1000 lift
#: differently when read as 0-based (released) and as 1-based (fixed).
CHAIN = ("chain 1000 chr1 1000 + 0 1000 chr1 2000 + 100 1200 1\n500 0 100\n500\n\n"
         "chain 1000 chr2 1000 + 0 1000 chr2 1000 + 0 1000 2\n1000\n\n")


def ptid(i: int) -> str:
    return f"{11 + i % 7:03d}_S_{i:04d}"


@dataclass
class Raw:
    root: Path
    ptids: list[str]
    diagnosis: dict[str, float]           # stable participants' diagnosis (1, 2, 3)
    converters: list[str]                 # diagnosis changes: in the tables, not labelled
    nan_rows: list[str]                   # a row without diagnosis: dropped everywhere
    other_phase: list[str]                # biomarkers from another phase than APOERES
    genotypes: dict[str, pd.DataFrame] = field(default_factory=dict)  # set → iid × SNP (A1 count)
    chain: Path | None = None


def _stamp(rng: np.random.Generator, n: int) -> list[str]:
    days = rng.integers(0, 3000, size=n)
    return [str(pd.Timestamp("2008-01-01") + pd.Timedelta(days=int(d))) for d in days]


def write_raw(root: Path, seed: int = 0, genomic: bool = True, image: bool = True) -> Raw:
    rng = np.random.default_rng(seed)
    ptids = [ptid(i) for i in range(N)]
    dx = 1 + np.arange(N) % 3
    converters, nan_rows = ptids[-10:-5], ptids[-5:]
    rows = []
    for i, p in enumerate(ptids):
        for v, code in enumerate(("bl", "m12")):
            d = float(dx[i])
            if p in converters and v == 1:
                d = float(dx[i] % 3 + 1)
            if p in nan_rows and v == 1:
                d = np.nan
            rows.append({"Phase": "ADNI2", "RID": i + 1, "PTID": p, "VISCODE": code,
                         "DIAGNOSIS": d, "update_stamp": f"201{v}-02-0{1 + i % 8} 10:00:00"})
    (root / "diagnosis").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "diagnosis" / "DXSUM_PDXCONV_22Apr2024.csv", index=False)
    labelled = {p: float(dx[i]) for i, p in enumerate(ptids) if p not in converters + nan_rows}

    clinical = root / "clinical"
    clinical.mkdir()
    signal = {p: float(dx[i]) for i, p in enumerate(ptids)}
    for t, name in enumerate(("MEDHIST", "NEUROEXM", "PTDEMOG", "RECCMEDS", "VITALS")):
        members = ptids[: N - 3 * t]  # some participants lack some tables
        frame = pd.DataFrame({
            "PHASE": "ADNI2", "PTID": members, "RID": range(1, len(members) + 1),
            "VISCODE": "bl", "SITEID": 11, "USERDATE": "2012-01-01",
            f"{name[:3]}SCORE": [signal[p] * 2 + rng.normal() for p in members],
            f"{name[:3]}LEVEL": [signal[p] + rng.normal() * 0.3 for p in members],
            f"{name[:3]}FLAG": rng.integers(0, 2, size=len(members)).astype(float),
            f"{name[:3]}KIND": rng.choice(["Yes", "No", "Unknown"], size=len(members)),
            f"{name[:3]}DATE": [f"20{10 + signal[p]:.0f}-0{1 + k % 9}-15"
                                for k, p in enumerate(members)],
            "UPDATE_STAMP": _stamp(rng, len(members)),
        })
        frame.loc[frame.index % 9 == 4, f"{name[:3]}SCORE"] = np.nan
        frame.loc[frame.index % 11 == 5, f"{name[:3]}KIND"] = np.nan
        if name in ("NEUROEXM", "VITALS"):  # a column two tables share
            frame["EXAMWEIGHT"] = [signal[p] * 10 + rng.normal() for p in members]
        frame.to_csv(clinical / f"{name}_09May2024.csv", index=False)

    bio = root / "biospecimen"
    bio.mkdir()
    apoe_members = ptids[: N - 20]
    pd.DataFrame({"Phase": "ADNI1", "PTID": apoe_members, "RID": range(1, len(apoe_members) + 1),
                  "VISCODE": "sc", "APGEN1": rng.choice([3, 4], size=len(apoe_members)),
                  "APGEN2": [4 if signal[p] == 3 else 3 for p in apoe_members],
                  "UPDATE_STAMP": _stamp(rng, len(apoe_members))}).to_csv(
        bio / "APOERES_09May2024.csv", index=False)
    upenn = ptids[10: N - 25]
    other_phase = upenn[:8]
    pd.DataFrame({"PHASE": ["ADNI2" if p in other_phase else "ADNI1" for p in upenn],
                  "RID": [ptids.index(p) + 1 for p in upenn], "VISCODE": "bl",
                  "ABETA40": [">1700" if k % 13 == 0 else f"{900 - 100 * signal[p]:.1f}"
                              for k, p in enumerate(upenn)],
                  "PTAU": [signal[p] * 5 + rng.normal() for p in upenn],
                  "EXAMDATE": "2011-05-01", "UPDATE_STAMP": _stamp(rng, len(upenn))}).to_csv(
        bio / "UPENNBIOMK_ROCHE_ELECSYS_09May2024.csv", index=False)

    raw = Raw(root, ptids, labelled, converters, nan_rows, other_phase)
    if genomic:
        _write_plink(raw, rng)
    if image:
        scans = [f"{p}_{2010 + k}-03-01" for p in ptids[: N - 30] for k in range(2)]
        (root / "image").mkdir()
        values = np.array([[signal["_".join(s.split("_")[:3])]] * 20 for s in scans])
        np.save(root / "image" / "ADNI_G.npy", values + rng.normal(size=values.shape))
        (root / "image" / "ADNI_subj.txt").write_text("\n".join(scans) + "\n")
    return raw


def _write_plink(raw: Raw, rng: np.random.Generator) -> None:
    from bed_reader import to_bed

    folder = raw.root / "genomic"
    folder.mkdir()
    snps = [f"rs{1000 + k}" for k in range(SNPS)]
    chroms = ["1"] * (SNPS // 2) + ["2"] * (SNPS - SNPS // 2)
    positions = [10 * (k + 1) for k in range(SNPS // 2)] + [10 * (k + 1) for k in
                                                             range(SNPS - SNPS // 2)]
    positions[20], positions[25] = 500, 1000  # where the two liftOver readings differ
    alleles = [("A", "G")] * SNPS
    alleles[5] = ("I", "D")  # dropped by the A/C/G/T filter
    for name, members in (("ADNI_cluster_01_forward_757LONI", raw.ptids[: 90]),
                          ("ADNI_GO_2_Forward_Bin", raw.ptids[80: 140])):
        g = rng.integers(0, 3, size=(len(members), SNPS)).astype(np.int8)
        g[rng.random(g.shape) < 0.02] = -127
        to_bed(folder / f"{name}.bed", g, count_A1=True, properties={
            "fid": members, "iid": members, "sex": [1] * len(members),
            "chromosome": chroms, "sid": snps, "bp_position": positions,
            "allele_1": [a for a, _ in alleles], "allele_2": [b for _, b in alleles]})
        raw.genotypes[name] = pd.DataFrame(g, index=members, columns=snps)
    raw.chain = raw.root / "chain" / "test.over.chain"
    raw.chain.parent.mkdir()
    raw.chain.write_text(CHAIN)
