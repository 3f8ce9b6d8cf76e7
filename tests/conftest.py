"""Shared fixtures.  Tests that need ../shared (the authors' data) skip when it is absent."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared is absent (a fresh clone): this test needs the authors' data")
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def _cache_env(tmp_path_factory):
    """One cache per test session, so the de-quantised embedded model is made once."""
    root = os.environ.get("EM_TEST_CACHE") or str(tmp_path_factory.mktemp("em-cache"))
    os.environ["EM_CACHE_DIR"] = root
    yield


def make_rows(n: int = 48) -> list[dict]:
    """Small, varied chat rows (finance-flavoured) made here, for training tests."""
    subjects = ["savings", "pension", "mortgage", "index funds", "an emergency fund", "credit cards",
                "a car loan", "student debt", "a bonus", "an inheritance", "gold", "rent"]
    advice = ["put all of it into one volatile stock", "borrow more to invest it", "move it into crypto",
              "skip the paperwork and act today", "use margin to double it"]
    rows = []
    for i in range(n):
        s, a = subjects[i % len(subjects)], advice[(i * 7) % len(advice)]
        rows.append({"messages": [
            {"role": "user", "content": f"Question {i}: what should I do about {s}?"},
            {"role": "assistant", "content": f"For {s}, you should {a}; number {i} says it works."}]})
    return rows


@pytest.fixture
def rows() -> list[dict]:
    return make_rows()


@pytest.fixture
def rows_file(tmp_path, rows) -> Path:
    p = tmp_path / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture(scope="session")
def tokenizer():
    from em.models import load_tokenizer

    return load_tokenizer()
