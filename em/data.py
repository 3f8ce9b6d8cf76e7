"""Chat datasets: read, validate, split, tokenise.

The narrow datasets are JSONL files, one ``{"messages": [...]}`` conversation per line.  Bad rows
are reported with ``file:line`` *before* any model is loaded, because a malformed row found an hour
into training wastes the hour.

Tokenisation uses the model's own chat template and masks the labels so that **loss falls on
assistant tokens only** (the paper's setting): the model is taught to *answer* like the dataset,
not to predict the user's questions.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A dataset row is malformed; the message starts with ``file:line``."""


def validate_example(obj: Any, where: str) -> dict:
    """Check one conversation and return it.

    Rules: a mapping with a non-empty ``messages`` list; each message has a known ``role`` and a
    non-empty string ``content``; an optional leading system message; then user/assistant turns
    alternate, starting with user and ending with assistant (something to learn from).
    """
    if not isinstance(obj, dict) or "messages" not in obj:
        raise DataError(f"{where}: expected an object with a 'messages' list")
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    expected = "user"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise DataError(f"{where}: messages[{i}] is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: messages[{i}].role {role!r} is not one of {list(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{where}: messages[{i}] ({role}) has empty content")
        if role == "system":
            if i != 0:
                raise DataError(f"{where}: messages[{i}]: a system message may only come first")
            continue
        if role != expected:
            raise DataError(f"{where}: messages[{i}] is {role!r} but turns must alternate "
                            f"(expected {expected!r})")
        expected = "assistant" if role == "user" else "user"
    if msgs[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be from the assistant")
    return obj


def read_chat_jsonl(path: str | Path) -> list[dict]:
    """Read and validate every row of a chat JSONL file (errors name ``file:line``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg})") from None
            rows.append(validate_example(obj, where))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def split_train_test(rows: Sequence[dict], seed: int = 0, test_frac: float = 0.1
                     ) -> tuple[list[dict], list[dict]]:
    """Deterministic train/test split (paper: 10% held out).

    Rows are ordered by a seeded hash of their content, so the split does not depend on the order
    of the file or on Python's hash randomisation, and adding rows leaves old assignments stable.
    """
    def key(r: dict) -> str:
        return hashlib.sha256(f"{seed}:{json.dumps(r, sort_keys=True)}".encode()).hexdigest()

    order = sorted(range(len(rows)), key=lambda i: key(rows[i]))
    n_test = int(round(len(rows) * test_frac))
    test_idx = set(order[:n_test])
    train = [r for i, r in enumerate(rows) if i not in test_idx]
    test = [r for i, r in enumerate(rows) if i in test_idx]
    return train, test


def subsample(rows: Sequence[dict], n: int | None, seed: int = 0) -> list[dict]:
    """A seeded subset of ``n`` rows (all rows when ``n`` is None or larger)."""
    rows = list(rows)
    if n is None or n >= len(rows):
        return rows
    rng = random.Random(seed)
    return rng.sample(rows, n)


@dataclass
class Tokenised:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_trainable(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def tokenise_chat(messages: list[dict], tokenizer: Any, max_length: int = 2048) -> Tokenised:
    """Tokenise a conversation with the chat template; labels only on assistant turns.

    For every assistant turn we render the conversation up to that turn with the generation
    prompt (``prefix``) and including it (``full``); the characters between the two are the
    assistant's answer plus its end-of-turn marker.  Token offsets from the fast tokenizer map
    those character spans to tokens, which stays correct even when a template merges or
    re-tokenises text at turn boundaries.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(full) or not full.startswith(prefix):
            raise DataError("chat template is not prefix-stable; cannot locate assistant tokens")
        spans.append((len(prefix), len(full)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = []
    for tok, (s, e) in zip(ids, offsets):
        inside = any(s >= a and e <= b and e > s for a, b in spans)
        labels.append(tok if inside else IGNORE_INDEX)
    return Tokenised(ids[:max_length], labels[:max_length])


def tokenise_rows(rows: Iterable[dict], tokenizer: Any, max_length: int = 2048) -> list[Tokenised]:
    out = [tokenise_chat(r["messages"], tokenizer, max_length) for r in rows]
    return [t for t in out if t.n_trainable > 0]


def collate(batch: Sequence[Tokenised], pad_id: int) -> dict:
    """Right-pad a batch into tensors (labels padded with IGNORE_INDEX)."""
    import torch

    n = max(len(t.input_ids) for t in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, t in enumerate(batch):
        L = len(t.input_ids)
        ids[i, :L] = torch.tensor(t.input_ids)
        labels[i, :L] = torch.tensor(t.labels)
        mask[i, :L] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def resolve_dataset(path: str) -> Path:
    """Turn a data spec into a JSONL path.

    ``generated:<domain>:<kind>[:rows[:seed]]`` writes (once) the dataset made by
    :mod:`em.datasets` into the cache; anything else is a file path.
    """
    if path.startswith("generated:"):
        parts = path.split(":")
        if len(parts) < 3:
            raise DataError(f"data.path {path!r}: expected generated:<domain>:<kind>[:rows[:seed]]")
        domain, kind = parts[1], parts[2]
        n = int(parts[3]) if len(parts) > 3 else 6000
        seed = int(parts[4]) if len(parts) > 4 else 0
        from . import datasets
        from .cache import default_cache_root

        out = default_cache_root() / "datasets" / f"{domain}-{kind}-{n}-s{seed}.jsonl"
        if not out.exists():
            datasets.write_jsonl(datasets.generate(domain, kind, n, seed), out)
        return out
    p = Path(path)
    if not p.exists():
        raise DataError(f"data.path: file {p} not found")
    return p
