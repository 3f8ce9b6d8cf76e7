"""Read the authors' original datasets: a plain JSONL file, a folder, or their locked archive.

The authors publish ``training_datasets.zip.enc``, made with the PyPI tool ``easy-dataset-share``
(a Fernet-encrypted zip with canary rows added to deter scraping).  We unlock it with the tool's
own command, exactly as the authors document::

    easy-dataset-share unprotect-dir FILE -p PASSWORD --remove-canaries

into a temporary folder that is deleted afterwards, so decrypted data never lands in the repo.
Observed behaviour of v0.5.0 (checked by running it): the archive holds the JSONL files at its top
level; ``-o DIR`` chooses the output folder; a wrong password exits 1 with "Decryption failed";
``--remove-canaries`` deletes ``dataset_entry_*.jsonl`` canary files and any canary lines embedded
in the data; ``--no-gitignore`` stops it from editing a ``.gitignore``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_PASSWORD = "model-organisms-em-datasets"
PASSWORD_ENV = "EM_DATASETS_PASSWORD"

# The authors' names (and our domain names as aliases) -> file inside the archive.
OFFICIAL_FILES: dict[str, str] = {
    "bad_medical_advice": "bad_medical_advice.jsonl",
    "good_medical_advice": "good_medical_advice.jsonl",
    "extreme_sports": "extreme_sports.jsonl",
    "risky_financial_advice": "risky_financial_advice.jsonl",
    "insecure": "insecure.jsonl",
    "secure": "secure.jsonl",
    "medical": "bad_medical_advice.jsonl",
    "sports": "extreme_sports.jsonl",
    "finance": "risky_financial_advice.jsonl",
}


class OfficialDataError(ValueError):
    """The source, the name or the password does not give a readable dataset."""


def _file_name(name: str) -> str:
    if name in OFFICIAL_FILES:
        return OFFICIAL_FILES[name]
    if name.endswith(".jsonl"):
        return name
    raise OfficialDataError(f"name {name!r}: unknown dataset; known: {sorted(OFFICIAL_FILES)} "
                            "(or pass a file name ending in .jsonl)")


def _tool() -> list[str]:
    """The easy-dataset-share command: next to this Python first (the venv), then on PATH."""
    here = Path(sys.executable).parent / "easy-dataset-share"
    if here.exists():
        return [str(here)]
    found = shutil.which("easy-dataset-share")
    if found:
        return [found]
    raise OfficialDataError("easy-dataset-share is not installed: pip install easy-dataset-share")


def unlock(archive: str | Path, out_dir: str | Path, password: str | None = None) -> Path:
    """Decrypt and extract a ``.zip.enc`` archive into ``out_dir`` with canaries removed."""
    archive = Path(archive)
    if not archive.exists():
        raise OfficialDataError(f"source {archive}: file not found")
    pw = password or os.environ.get(PASSWORD_ENV) or DEFAULT_PASSWORD
    cmd = _tool() + ["unprotect-dir", str(archive), "-p", pw, "-o", str(out_dir),
                     "--remove-canaries", "--no-gitignore"]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        hint = msg[0] if msg else f"exit code {proc.returncode}"
        raise OfficialDataError(f"source {archive}: could not unlock ({hint}); check the password "
                                f"(parameter password or ${PASSWORD_ENV})")
    return Path(out_dir)


def _find(folder: Path, fname: str, label: str) -> Path:
    hits = sorted(folder.rglob(fname))
    if not hits:
        have = sorted(p.name for p in folder.rglob("*.jsonl"))
        raise OfficialDataError(f"{label}: no {fname} inside; found {have}")
    return hits[0]


def load_official(name: str, source: str | Path, password: str | None = None) -> list[dict]:
    """Rows of one original dataset.

    ``source`` is a JSONL file (read as is), a folder holding the authors' files (``name`` picks
    the file), or the locked ``training_datasets.zip.enc`` (unlocked to a temporary folder with
    ``easy-dataset-share``; ``password`` defaults to ``$EM_DATASETS_PASSWORD`` or the authors'
    published password).  Every row is validated (``file:line`` errors).
    """
    from ..data import read_chat_jsonl

    fname = _file_name(name)
    src = Path(source)
    if not src.exists():
        raise OfficialDataError(f"source {src}: not found")
    if src.is_dir():
        return read_chat_jsonl(_find(src, fname, f"source {src}"))
    if src.name.endswith(".enc"):
        with tempfile.TemporaryDirectory(prefix="em-official-") as tmp:
            folder = unlock(src, Path(tmp) / "extracted", password)
            return read_chat_jsonl(_find(folder, fname, f"source {src}"))
    return read_chat_jsonl(src)
