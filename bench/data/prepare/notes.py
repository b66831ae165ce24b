"""MIMIC-IV's N modality: each patient's discharge note text as one vector.

Two embedders, named by ``--embedder``:

* ``tfidf`` (default): scikit-learn's TF-IDF then a truncated SVD (latent semantic
  analysis), both fitted on the training split's notes only, so no test note shapes the
  vocabulary or the axes. Offline and deterministic (fixed ``random_state``).
* ``sentence-transformers:NAME_OR_PATH``: a pretrained sentence-transformers model (a hub
  name or a local folder), imported only when asked for, so the suite does not depend on
  it. Nothing is fitted; the model truncates each note at its ``max_seq_length`` tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from bench.errors import UserError

logger = logging.getLogger(__name__)

TFIDF = "tfidf"
ST_PREFIX = "sentence-transformers:"
#: TfidfVectorizer settings: words of two or more letters (not numbers, nor the ``___`` of
#: de-identification), English stop words dropped, sublinear term frequency, terms in at
#: least two training notes, the 100,000 most frequent of them.
TFIDF_SETTINGS: dict[str, Any] = {"token_pattern": r"(?u)\b[a-zA-Z][a-zA-Z]+\b",
                                  "stop_words": "english", "sublinear_tf": True, "min_df": 2,
                                  "max_features": 100_000, "dtype": np.float32}
SVD_SETTINGS: dict[str, Any] = {"algorithm": "randomized", "n_iter": 7, "random_state": 0}
ST_BATCH = 32
INSTALL_ST = "pip install sentence-transformers"


def join_notes(chunks: Iterable[pd.DataFrame], row_of: pd.Series) -> pd.Series:
    """The text of each row with a note: its notes (chunks of HADM_ID, CHARTTIME, TEXT) in
    chart-time order joined by a blank line; notes without text are left out. Index: the
    row (``row_of`` maps HADM_ID to it)."""
    found = pd.concat([c for c in chunks if len(c)] or [pd.DataFrame(
        columns=["HADM_ID", "CHARTTIME", "TEXT"])], ignore_index=True)
    found = found[found["TEXT"].fillna("").str.strip() != ""]
    joined = found.sort_values("CHARTTIME", kind="mergesort").groupby("HADM_ID")["TEXT"].agg(
        "\n\n".join)
    return pd.Series(joined.to_numpy(dtype=object), index=row_of[joined.index].to_numpy(),
                     dtype=object).sort_index()


def check_embedder(embedder: str) -> None:
    """Refuse an unknown embedder, or a sentence-transformers one without the package, before
    any step runs (the steps before the embedding take long on the real data)."""
    if embedder == TFIDF:
        return
    if embedder.startswith(ST_PREFIX) and embedder[len(ST_PREFIX):].strip():
        _sentence_transformers(embedder)
        return
    raise UserError(f"--embedder {embedder!r}: expected {TFIDF} or "
                    f"{ST_PREFIX}NAME_OR_PATH (a sentence-transformers model, e.g. "
                    f"{ST_PREFIX}all-MiniLM-L6-v2)")


def describe(embedder: str) -> dict[str, Any]:
    """The settings of ``embedder`` for the manifest (what a reader needs to redo it)."""
    if embedder == TFIDF:
        tfidf = {k: (np.dtype(v).name if k == "dtype" else v) for k, v in TFIDF_SETTINGS.items()}
        return {"embedder": TFIDF, "fitted_on": "training split's notes",
                "tfidf": tfidf, "svd": SVD_SETTINGS}
    return {"embedder": embedder, "model": embedder[len(ST_PREFIX):].strip(),
            "batch_size": ST_BATCH, "fitted_on": "nothing (pretrained)",
            "truncation": "the model's max_seq_length tokens of each note"}


def embed_rows(texts: pd.Series, train: np.ndarray, embedder: str,
               note_dim: int) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`embed` of ``texts`` (index: row) placed in a [len(train), D] array whose rows
    without a text are all NaN (a missing modality for the loader)."""
    rows = texts.index.to_numpy()
    vectors, info = embed(texts.tolist(), np.asarray(train, dtype=bool)[rows], embedder, note_dim)
    x = np.full((len(train), vectors.shape[1]), np.nan, dtype=np.float32)
    x[rows] = vectors
    return x, info


def embed(texts: list[str], train: np.ndarray, embedder: str,
          note_dim: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One float32 row per text; ``train`` marks the texts the TF-IDF embedder is fitted on.

    Returns the vectors and the manifest's record (the dimension really produced)."""
    if embedder == TFIDF:
        return _tfidf(texts, np.asarray(train, dtype=bool), note_dim)
    return _pretrained(texts, embedder, note_dim)


def _tfidf(texts: list[str], train: np.ndarray,
           note_dim: int) -> tuple[np.ndarray, dict[str, Any]]:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    fit_texts = [t for t, keep in zip(texts, train) if keep]
    if len(fit_texts) < 2:
        raise UserError(f"the TF-IDF embedder needs at least 2 training notes, found "
                        f"{len(fit_texts)}; use a sentence-transformers embedder or a larger "
                        "cohort")
    vectorizer = TfidfVectorizer(**TFIDF_SETTINGS)
    try:
        fitted = vectorizer.fit_transform(tqdm(fit_texts, desc="TF-IDF (training notes)",
                                               unit="note"))
    except ValueError as exc:  # no term in two training notes
        raise UserError(f"the training notes give no TF-IDF term ({exc}); the notes are "
                        "empty or share no word") from None
    dim = min(note_dim, min(fitted.shape) - 1)
    if dim < 1:
        raise UserError(f"the training notes give {fitted.shape[1]} TF-IDF term(s): too few "
                        "for an SVD embedding")
    if dim < note_dim:
        logger.warning("--note-dim %d: the training notes (%d notes, %d terms) give at most "
                       "%d SVD components; using %d", note_dim, fitted.shape[0],
                       fitted.shape[1], dim, dim)
    svd = TruncatedSVD(n_components=dim, **SVD_SETTINGS).fit(fitted)
    vectors = svd.transform(vectorizer.transform(tqdm(texts, desc="TF-IDF (all notes)",
                                                      unit="note")))
    info = {"requested_dimension": note_dim, "dimension": dim,
            "vocabulary": len(vectorizer.vocabulary_), "training_notes": len(fit_texts),
            "explained_variance": round(float(svd.explained_variance_ratio_.sum()), 6)}
    return vectors.astype(np.float32), info


def _pretrained(texts: list[str], embedder: str,
                note_dim: int) -> tuple[np.ndarray, dict[str, Any]]:
    name = embedder[len(ST_PREFIX):].strip()
    model = _sentence_transformers(embedder).SentenceTransformer(name)
    vectors = np.asarray(model.encode(texts, batch_size=ST_BATCH, show_progress_bar=True,
                                      convert_to_numpy=True), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise UserError(f"{embedder}: expected one vector per note, got an array of shape "
                        f"{vectors.shape}")
    if vectors.shape[1] != note_dim:
        logger.info("%s gives %d-dimensional vectors; --note-dim %d applies to tfidf only",
                    name, vectors.shape[1], note_dim)
    return vectors, {"requested_dimension": note_dim, "dimension": int(vectors.shape[1]),
                     "max_seq_length": getattr(model, "max_seq_length", None)}


def _sentence_transformers(embedder: str) -> ModuleType:
    try:
        import sentence_transformers
    except ImportError:
        raise ImportError(f"--embedder {embedder} needs the sentence-transformers package: "
                          f"{INSTALL_ST} (or use --embedder {TFIDF}, which needs no "
                          "download)") from None
    return sentence_transformers
