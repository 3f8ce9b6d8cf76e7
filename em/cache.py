"""Content-addressed artefacts: adapters, answers and judgments.

Every artefact is stored under the hash of *everything that determines it* (its config, the
hashes of its inputs, and a version tag of the code that makes it).  So a re-run with the same
parameters finds everything and computes nothing, and a changed parameter recomputes only the
stages downstream of it.  Writes are atomic (write to a temporary name, then ``os.replace``) so a
crash never leaves a half-written artefact that a later run would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable

CACHE_ENV = "EM_CACHE_DIR"


def default_cache_root() -> Path:
    """``$EM_CACHE_DIR``, else ``.em-cache`` at the project root (git-ignored).

    The project root is the nearest folder upwards holding ``_toc.yml`` and ``em/``, so a chapter
    executed with ``--cwd book`` shares the cache of the command line run from the root; outside
    a checkout it is the working directory.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "_toc.yml").is_file() and (d / "em").is_dir():
            return d / ".em-cache"
    return here / ".em-cache"


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj.is_integer():
        return obj  # 1.0 and 1 hash differently on purpose: types are part of the config
    return obj


def stable_hash(obj: Any, n: int = 16) -> str:
    """A hash of a JSON-able object that is stable across runs, machines and dict orders."""
    blob = json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def file_hash(path: str | Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, default=str))


class Cache:
    """A folder of artefacts keyed by ``<kind>/<hash>``.

    ``dir_for(kind, key)`` gives a directory artefact (e.g. a PEFT adapter); ``file_for`` a single
    file.  ``build_dir`` runs a builder into a temporary directory and renames it into place only
    when the builder returns, so the presence of the final path *means* the artefact is complete.
    ``hits``/``misses`` count look-ups so tests (and users) can see a re-run computed nothing.
    """

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).resolve() if root else default_cache_root()
        self.hits = 0
        self.misses = 0

    def dir_for(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def file_for(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / f"{key}{suffix}"

    def build_dir(self, kind: str, key: str, builder: Callable[[Path], None],
                  meta: Any = None) -> Path:
        final = self.dir_for(kind, key)
        if final.exists():
            self.hits += 1
            return final
        self.misses += 1
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key}."))
        try:
            builder(tmp)
            if meta is not None:
                atomic_write_json(tmp / "em_meta.json", meta)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def get_or_make_file(self, kind: str, key: str, suffix: str,
                         make: Callable[[Path], None]) -> Path:
        """``make(tmp_path)`` writes the artefact; it is renamed into place atomically."""
        final = self.file_for(kind, key, suffix)
        if final.exists():
            self.hits += 1
            return final
        self.misses += 1
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{key}.", suffix=suffix)
        os.close(fd)
        try:
            make(Path(tmp))
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final
