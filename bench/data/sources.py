"""The registered data sets. Each loader's docstring is its short data card."""

from __future__ import annotations

import os
from pathlib import Path

from bench.data import folder, mfeat, official, synthetic_adni, synthetic_mimic
from bench.data.core import MultimodalData
from bench.data.digest import files_digest
from bench.data.splits import make_split, read_split_file, refuse_seed_with_fixed_split
from bench.errors import UserError
from bench.registry import register_dataset
from bench.resources import shipped

ADNI_ENV, MIMIC_ENV = "FLEXMOE_BENCH_ADNI", "FLEXMOE_BENCH_MIMIC"


def real_data_configured(family: str) -> bool:
    """Whether the real data set of ``family`` ("adni" or "mimic") has its folder configured."""
    return official.configured({"adni": ADNI_ENV, "mimic": MIMIC_ENV}[family])


def datasets_root() -> Path:
    """Where shipped data live: ``$FLEXMOE_BENCH_DATASETS`` or ``datasets/`` (bench.resources)."""
    env = os.environ.get("FLEXMOE_BENCH_DATASETS")
    return Path(env) if env else shipped("datasets")


def _finish(raw, name: str, family: str, split_seed: int, split_file: str | None,
            description: str, meta: dict, digest: str) -> MultimodalData:
    splits = None
    if split_file:
        refuse_seed_with_fixed_split(split_seed, str(split_file), name)
        splits = read_split_file(split_file, raw.ids, name)
    return MultimodalData.from_arrays(raw, name, family, split_seed=split_seed, splits=splits,
                                      description=description, meta=meta,
                                      content_digest=digest)


@register_dataset("synthetic-adni")
def load_synthetic_adni(split_seed: int = 0, seed: int = 0, scale: float = 1.0,
                        split_file: str | None = None) -> MultimodalData:
    """Synthetic ADNI (default): I image ROI volumes, G SNP dosages, C clinical, B biospecimen;
    CN / MCI / Dementia. Missingness reproduces ADNI's observed combinations of the paper's
    Figure 2 exactly (2,380 patients at scale 1). Card: datasets/synthetic-adni/README.md."""
    raw = synthetic_adni.generate(seed=seed, scale=scale)
    return _finish(raw, "synthetic-adni", "adni", split_seed, split_file,
                   load_synthetic_adni.__doc__ or "", {"seed": seed, "scale": scale},
                   f"generator:synthetic-adni:v{synthetic_adni.VERSION}")


@register_dataset("synthetic-mimic")
def load_synthetic_mimic(split_seed: int = 0, seed: int = 0, scale: float = 1.0,
                         split_file: str | None = None) -> MultimodalData:
    """Synthetic MIMIC-IV: L labs and vitals, N note embedding (768-d), C ICD-9 multi-hot;
    one-year mortality (binary, about 25 % positive), CE class weights (0.25, 0.75).
    Card: datasets/synthetic-mimic/README.md."""
    raw = synthetic_mimic.generate(seed=seed, scale=scale)
    return _finish(raw, "synthetic-mimic", "mimic", split_seed, split_file,
                   load_synthetic_mimic.__doc__ or "", {"seed": seed, "scale": scale},
                   f"generator:synthetic-mimic:v{synthetic_mimic.VERSION}")


@register_dataset("mfeat", defaults={"missing": "pattern=adni"})
def load_mfeat(split_seed: int = 0) -> MultimodalData:
    """UCI Multiple Features (real, shipped): 2,000 handwritten digits, 10 classes, six views
    F fourier, A profile, K karhunen_loeve, P pixels, Z zernike, M morphology, all observed.
    Default missing=pattern=adni: ADNI's combinations imposed on the training split (roles
    I → P,K; G → A; C → F,M; B → Z); missing=none keeps every view. Card:
    datasets/mfeat/README.md."""
    root = datasets_root() / "mfeat"
    raw, splits = mfeat.load(root, split_seed,
                             lambda obs, y, s: make_split(obs, y, s, name="mfeat"))
    return MultimodalData.from_arrays(raw, "mfeat", "mfeat", splits=splits,
                                      description=load_mfeat.__doc__ or "",
                                      meta={"adni_roles": dict(mfeat.ADNI_ROLES)},
                                      content_digest=files_digest(
                                          (p.name, p) for p in root.glob("mfeat-*.csv.gz")))


@register_dataset("folder")
def load_folder(path: str, split_seed: int = 0, family: str = "custom",
                order: str | None = None, standardize: bool = True) -> MultimodalData:
    """Your own data, ``--dataset folder:PATH``: labels.csv (id,label: integers or class
    names, mapped to classes in sorted order) plus one <L>_<name>.csv (id, numeric features)
    per modality and an optional split.csv (id,split). Features are standardised on the
    training split unless standardize=false. See bench/data/folder.py for the layout."""
    if not isinstance(standardize, bool):
        raise UserError(f"folder data: standardize must be true or false, got {standardize!r}")
    name = f"folder:{path}"
    found = folder.read_folder(path, order)
    raw, files = found.raw, list(found.files)
    split_file = Path(path) / "split.csv"
    if split_file.is_file():
        refuse_seed_with_fixed_split(split_seed, str(split_file), name)
        splits = read_split_file(split_file, raw.ids, name)
        files.append(("split.csv", split_file))
    else:
        splits = make_split(raw.observed, raw.labels, split_seed, name=name)
    if standardize:
        raw = folder.standardize(raw, splits["train"])
    mapping = ", ".join(f"{label} -> {k}" for label, k in found.classes.items())
    description = (f"{load_folder.__doc__ or ''}\nClasses (label -> index): {mapping}. "
                   f"Features {'standardised on the training split' if standardize else 'raw'}.")
    meta = {"path": str(path), "classes": dict(found.classes), "standardize": standardize,
            "split_file": "split.csv" if split_file.is_file() else None}
    return MultimodalData.from_arrays(raw, name, family, splits=splits, description=description,
                                      meta=meta, content_digest=files_digest(files),
                                      keep_letter_order=True)


@register_dataset("adni")
def load_adni(root: str | None = None, split_seed: int = 0,
              split_file: str | None = None) -> MultimodalData:
    """Real ADNI (bring your own): the folder the official Flex-MoE preprocessing writes,
    from root=PATH or $FLEXMOE_BENCH_ADNI; I image voxels, G SNPs, C clinical,
    B biospecimen; CN / MCI / Dementia. Uses PTID_splits.json when present.
    Layout: bench/data/official.py."""
    folder_ = official.data_root(root, ADNI_ENV, "ADNI")
    raw, splits = official.read_adni(folder_)
    if split_file:
        splits = read_split_file(split_file, raw.ids, "adni")
    if splits is not None:
        refuse_seed_with_fixed_split(split_seed, split_file or f"the folder's PTID_splits file "
                                     f"in {folder_}", "adni")
    return MultimodalData.from_arrays(raw, "adni", "adni", split_seed=split_seed, splits=splits,
                                      description=load_adni.__doc__ or "",
                                      meta={"root": str(folder_)},
                                      content_digest=official.content_digest(folder_, "adni"))


@register_dataset("mimic")
def load_mimic(root: str | None = None, split_seed: int = 0,
               split_file: str | None = None) -> MultimodalData:
    """Real MIMIC-IV (bring your own): lab_x.pt, note_x.pt, code_x.pt and labels.csv of the
    official layout, from root=PATH or $FLEXMOE_BENCH_MIMIC; one-year mortality, CE class
    weights (0.25, 0.75). Uses PTID_splits_mimic.json when present.
    Layout: bench/data/official.py."""
    folder_ = official.data_root(root, MIMIC_ENV, "MIMIC-IV")
    raw, splits = official.read_mimic(folder_)
    if split_file:
        splits = read_split_file(split_file, raw.ids, "mimic")
    if splits is not None:
        refuse_seed_with_fixed_split(split_seed, split_file or f"the folder's PTID_splits file "
                                     f"in {folder_}", "mimic")
    return MultimodalData.from_arrays(raw, "mimic", "mimic", split_seed=split_seed, splits=splits,
                                      description=load_mimic.__doc__ or "",
                                      meta={"root": str(folder_)},
                                      content_digest=official.content_digest(folder_, "mimic"))
