"""ADNI's genomic modality: PLINK binary sets → allele filter → liftOver → merge → LD pruning.

Follows the released ``data/adni/genomic/genomic_preprocess.ipynb``. Genotypes are read
and written with ``bed-reader``; coordinates are lifted with the ``liftover`` package and a
chain file the user gives (``--chain``; without one, positions stay as downloaded);
merging and pruning (``--indep-pairwise 50 5 0.1``) run PLINK 1.9, found as ``$PLINK``,
else ``plink1.9`` (Debian's package) or a ``plink`` reporting v1.9 on ``PATH``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from bench.data.prepare.raw import RawInputError

logger = logging.getLogger(__name__)

#: The released notebook's five sets, in its merge order (the first is the base).
RELEASED_SETS = ("ADNI_cluster_01_forward_757LONI", "ADNI_GO_2_Forward_Bin",
                 "ADNI_GO2_GWAS_2nd_orig_BIN", "ADNI3_PLINK_Final", "ADNI3_PLINK_FINAL_2nd")
#: Participants the released notebook leaves out of the ADNI 1 set (cell 9).
RELEASED_DROPPED = {"ADNI_cluster_01_forward_757LONI": ("073_S_0909", "130_S_1201")}
ACGT = ("A", "C", "G", "T")
LD_PRUNE = ("50", "5", "0.1")
_CHROM_NAMES = {"X": 23, "Y": 24, "XY": 25, "MT": 26, "M": 26}
INSTALL_PLINK = ("the genomic step needs PLINK 1.9: on Debian or Ubuntu `apt install "
                 "plink1.9`; elsewhere put PLINK 1.9 on PATH or name it in $PLINK; or leave "
                 "the genomic modality out with --skip genomic")


def find_sets(raw: Path) -> list[Path]:
    """PLINK sets (path prefixes) under ``raw``: the released five in the released order,
    then any others by name. A .bed without its .bim or .fam is an error."""
    prefixes = []
    for bed in sorted(raw.rglob("*.bed")):
        prefix = bed.with_suffix("")
        for ext in (".bim", ".fam"):
            if not prefix.with_suffix(ext).is_file():
                raise RawInputError(f"{bed}: no {prefix.name}{ext} beside it; a PLINK set is "
                                    ".bed + .bim + .fam with one name")
        prefixes.append(prefix)
    rank = {name.lower(): k for k, name in enumerate(RELEASED_SETS)}
    return sorted(prefixes, key=lambda p: (rank.get(p.name.lower(), len(rank)), p.name))


def set_files(prefix: Path) -> list[Path]:
    return [prefix.with_suffix(ext) for ext in (".bed", ".bim", ".fam")]


def find_plink() -> tuple[str, str]:
    """The PLINK 1.9 executable (see the module docstring) and its version line, or a clear
    error."""
    named = os.environ.get("PLINK")
    candidates = [named] if named else [shutil.which("plink1.9"), shutil.which("plink")]
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
        except OSError:
            continue
        if "v1.9" in out:
            return exe, out.strip()
    where = f"$PLINK={named} is not PLINK 1.9" if named else "no PLINK 1.9 found"
    raise FileNotFoundError(f"{where}; {INSTALL_PLINK}")


def _table(path: Path, names: list[str]) -> pd.DataFrame:
    table = pd.read_csv(path, sep=r"\s+", header=None, dtype=str)
    if table.shape[1] != len(names):
        raise RawInputError(f"{path}: {table.shape[1]} columns; expected {len(names)} "
                            f"({', '.join(names)})")
    table.columns = names
    return table


def read_bim(prefix: Path) -> pd.DataFrame:
    return _table(prefix.with_suffix(".bim"), ["chrom", "snp", "cm", "pos", "a1", "a2"])


def read_fam(prefix: Path) -> pd.DataFrame:
    return _table(prefix.with_suffix(".fam"), ["fid", "iid", "father", "mother", "sex", "pheno"])


def chrom_codes(chrom: pd.Series) -> pd.Series:
    """PLINK chromosome codes as numbers (``chr7`` → 7, ``X`` → 23, ``MT`` → 26)."""
    text = chrom.astype(str).str.upper().str.replace(r"^CHR", "", regex=True)
    return pd.to_numeric(text.replace(_CHROM_NAMES), errors="coerce")


def lift(bim: pd.DataFrame, chain: Path | None, one_based: bool) -> tuple[np.ndarray, pd.Series,
                                                                         pd.Series]:
    """Rows of ``bim`` on chromosomes 1–24 that lift to one place on a primary contig, with
    their new chromosome code and position.

    Released: each position is written as a BED interval ``[pos, pos]`` (a 1-based position
    read as 0-based) and the lifted start becomes the new 1-based position. Fixed
    (``liftover-coordinates``): position − 1 is lifted and 1 added back.
    """
    codes = chrom_codes(bim["chrom"])
    rows = np.flatnonzero(((codes >= 1) & (codes <= 24)).to_numpy())
    if chain is None:
        return rows, codes.iloc[rows].astype(int), bim["pos"].iloc[rows].astype(int)
    from liftover import ChainFile

    try:
        converter = ChainFile(str(chain))
    except Exception as exc:  # the C++ reader raises plain errors on a malformed file
        raise RawInputError(f"{chain}: not a readable chain file ({exc})") from None
    names = {c: "chr" + {23: "X", 24: "Y"}.get(c, str(c)) for c in range(1, 25)}
    kept, contigs, positions = [], [], []
    shift = 1 if one_based else 0
    for row, code, pos in tqdm(zip(rows, codes.iloc[rows].astype(int),
                                   bim["pos"].iloc[rows].astype(int)),
                               total=len(rows), desc="liftOver", unit="SNP", leave=False):
        hits = converter.convert_coordinate(names[code], int(pos) - shift)
        if len(hits) == 1 and "_" not in hits[0][0]:
            kept.append(row)
            contigs.append(hits[0][0])
            positions.append(int(hits[0][1]) + shift)
    new = chrom_codes(pd.Series(contigs, dtype=str))
    primary = (new.notna() & new.between(1, 26)).to_numpy()
    return (np.asarray(kept, dtype=np.int64)[primary],
            new[primary].astype(int).reset_index(drop=True),
            pd.Series(positions, dtype=np.int64)[primary].reset_index(drop=True))


def rewrite_set(prefix: Path, into: Path, chain: Path | None, fixes: frozenset[str]) -> Path:
    """One set filtered to A/C/G/T SNPs on chromosomes 1–24 and lifted, written as a new
    PLINK set in ``into``.

    Released quirk (``allele-filter``): the notebook rewrites the .bim alone, so the k-th
    kept SNP's name is read with the k-th genotype column of the unfiltered .bed; fixed,
    each kept SNP keeps its own genotypes.
    """
    from bed_reader import open_bed, to_bed

    bim, fam = read_bim(prefix), read_fam(prefix)
    acgt = (bim["a1"].isin(ACGT) & bim["a2"].isin(ACGT)).to_numpy()
    kept = bim[acgt].reset_index(drop=True)
    columns = np.flatnonzero(acgt) if "allele-filter" in fixes else np.arange(len(kept))
    rows, chroms, positions = lift(kept, chain, "liftover-coordinates" in fixes)
    samples = np.flatnonzero(~fam["iid"].isin(RELEASED_DROPPED.get(prefix.name, ())).to_numpy())
    if not len(rows) or not len(samples):
        raise RawInputError(f"{prefix}.bim: no SNP left after the A/C/G/T filter, the "
                            "chromosome 1–24 filter and liftOver")
    with open_bed(prefix.with_suffix(".bed"), iid_count=len(fam), sid_count=len(bim),
                  count_A1=True) as bed:
        genotypes = bed.read(index=np.s_[samples, columns[rows]], dtype="int8")
    out = into / prefix.name
    snps, f = kept.iloc[rows], fam.iloc[samples]
    to_bed(out.with_suffix(".bed"), genotypes, count_A1=True, properties={
        "fid": f["fid"].tolist(), "iid": f["iid"].tolist(), "father": f["father"].tolist(),
        "mother": f["mother"].tolist(), "sex": pd.to_numeric(f["sex"], errors="coerce")
        .fillna(0).astype(int).tolist(), "pheno": f["pheno"].tolist(),
        "chromosome": [str(c) for c in chroms], "sid": snps["snp"].tolist(),
        "cm_position": pd.to_numeric(snps["cm"]).tolist(), "bp_position": list(positions),
        "allele_1": snps["a1"].tolist(), "allele_2": snps["a2"].tolist()})
    logger.info("%s: %d of %d SNPs kept, %d participants", prefix.name, len(rows), len(bim),
                len(samples))
    return out


def _plink(exe: str, args: list[str], out: Path, what: str) -> None:
    done = subprocess.run([exe, *args, "--out", str(out)], capture_output=True, text=True)
    if done.returncode:
        log = out.with_suffix(".log")
        text = log.read_text() if log.is_file() else done.stdout + done.stderr
        tail = " | ".join(line for line in text.strip().splitlines()[-4:] if line.strip())
        raise RawInputError(f"PLINK failed while {what} (exit {done.returncode}): {tail}")


def merge_and_prune(exe: str, sets: list[Path], work: Path) -> tuple[Path, dict]:
    """Merge the sets (variants with three or more alleles across sets, which PLINK lists
    in ``.missnp``, are left out and the merge rerun) and keep PLINK's LD-pruned SNPs."""
    merged, info = work / "merged", {"sets": [s.name for s in sets], "missnp_excluded": 0}
    rest = work / "merge_list.txt"
    rest.write_text("".join(f"{s}\n" for s in sets[1:]))
    args = ["--bfile", str(sets[0])] + (["--merge-list", str(rest)] if sets[1:] else [])
    try:
        _plink(exe, [*args, "--make-bed"], merged, "merging the sets")
    except RawInputError:
        missnp = merged.with_name("merged-merge.missnp")
        if not missnp.is_file():
            raise
        info["missnp_excluded"] = len(missnp.read_text().split())
        logger.warning("PLINK: %d SNP(s) with three or more alleles across the sets are left "
                       "out", info["missnp_excluded"])
        cleaned = []
        for s in sets:
            _plink(exe, ["--bfile", str(s), "--exclude", str(missnp), "--make-bed"],
                   work / f"{s.name}.clean", f"excluding the .missnp SNPs of {s.name}")
            cleaned.append(work / f"{s.name}.clean")
        rest.write_text("".join(f"{s}\n" for s in cleaned[1:]))
        args = ["--bfile", str(cleaned[0])] + (["--merge-list", str(rest)] if sets[1:] else [])
        _plink(exe, [*args, "--make-bed"], merged, "merging the sets")
    _plink(exe, ["--bfile", str(merged), "--indep-pairwise", *LD_PRUNE], work / "pruned",
           "LD pruning")
    final = work / "final"
    _plink(exe, ["--bfile", str(merged), "--extract", str(work / "pruned.prune.in"),
                 "--make-bed"], final, "extracting the pruned SNPs")
    info["snps_after_pruning"] = len(read_bim(final))
    return final, info


def build_genomic(sets: list[Path], into: Path, chain: Path | None, fixes: frozenset[str],
                  exe: str) -> tuple[list[str], dict]:
    """``genomic_merged.h5ad`` in ``into`` (participants × pruned SNPs, the count of each
    SNP's second allele as the released ``read_plink1_bin`` gives it, NaN where missing)."""
    import anndata
    from bed_reader import open_bed

    work = into / "plink"
    work.mkdir()
    lifted = [rewrite_set(p, work, chain, fixes) for p in tqdm(sets, desc="PLINK sets")]
    final, info = merge_and_prune(exe, lifted, work)
    with open_bed(final.with_suffix(".bed"), count_A1=False) as bed:
        values = bed.read(dtype="float32")
        iids, sids = bed.iid.tolist(), bed.sid.tolist()
    adata = anndata.AnnData(X=values, obs=pd.DataFrame(index=pd.Index(iids, dtype=str)),
                            var=pd.DataFrame(index=pd.Index(sids, dtype=str)))
    adata.write_h5ad(into / "genomic_merged.h5ad")
    shutil.rmtree(work)
    info["participants"] = len(iids)
    return iids, info
