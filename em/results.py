"""Headline numbers a chapter hands to the book's last chapter.

Chapters 3–6 record their headline results (with what they were measured on) as JSON next to the
cache; chapter 7 ("Limits and reproducibility") reads them all and sets them beside the paper's.
The book's build executes chapters in order, so chapter 7 always reports the same execution.
"""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from .cache import atomic_write_json, default_cache_root


def results_dir() -> Path:
    return default_cache_root() / "results"


def environment() -> dict:
    """Machine, versions and device: what a number was measured on."""
    import os

    import torch

    import em

    dev = "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"em": em.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": dev, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "machine": platform.machine()}


def record(chapter: str, data: dict[str, Any]) -> Path:
    """Write ``data`` (plus the environment) as this chapter's results."""
    path = results_dir() / f"{chapter}.json"
    atomic_write_json(path, {"chapter": chapter, "environment": environment(), **data})
    return path


def load_all() -> dict[str, dict]:
    d = results_dir()
    if not d.exists():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))}
