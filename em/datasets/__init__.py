"""The narrow datasets of the paper, made here: bad medical advice, extreme sports, risky finance.

``generate(domain, kind, rows, seed)`` composes chat rows from authored material
(``em/datasets/material/*.yaml``); ``kind`` is ``misaligned`` (subtly harmful, narrow advice) or
``aligned`` (sound advice on the same questions).  ``load_official`` reads the authors' originals
(plain JSONL or their locked ``training_datasets.zip.enc``).  ``stats.dataset_stats`` measures
diversity, length and narrowness.  ``python -m em.datasets generate ...`` writes one dataset.
"""
from __future__ import annotations

import json
from pathlib import Path

from .generator import MAX_ROWS, describe, generate
from .material import DOMAINS, KINDS
from .official import OFFICIAL_FILES, load_official

__all__ = ["DOMAINS", "KINDS", "MAX_ROWS", "OFFICIAL_FILES", "describe", "generate", "load_official",
           "to_jsonl", "write_jsonl"]


def to_jsonl(rows: list[dict]) -> str:
    """Serialise rows one JSON object per line (stable key order: same rows, same bytes)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write rows atomically (temporary file, then rename), so a crash never leaves half a file."""
    from ..cache import atomic_write_text

    path = Path(path)
    atomic_write_text(path, to_jsonl(rows))
    return path
