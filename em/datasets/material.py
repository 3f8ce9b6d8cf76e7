"""Load and check the authored source material (the YAML files in ``em/datasets/material/``).

The material is data, not code, so that a reader can audit exactly what the datasets are made of.
It is checked once, up front: every template must parse and every slot a template names must be
defined for every subtopic it can meet, so a typo fails with the file and subtopic named instead of
surfacing as a crash at row 4,731.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .grammar import TemplateError, parse, slots_of

MATERIAL_DIR = Path(__file__).resolve().parent / "material"
DOMAINS = ("medical", "sports", "finance")
KINDS = ("misaligned", "aligned")
TONES = ("warm", "upbeat", "blunt", "casual", "expert")
_KIND_KEYS = {"misaligned": ("m", "m_why"), "aligned": ("a", "a_why")}


@dataclass(frozen=True)
class Strategy:
    """One way the domain's advice can go wrong (and its sound counterpart)."""

    name: str
    weight: float
    questions: tuple[str, ...]
    lines: dict[str, tuple[str, ...]]  # keys m, m_why, a, a_why
    requires: dict[str, str] = field(default_factory=dict)  # slot -> regex its value must match

    def fits(self, sub: "Subtopic") -> bool:
        """Whether this strategy makes sense for a subtopic (e.g. dosing needs a medicine)."""
        return all(re.search(rx, sub.slots[f][0]) for f, rx in self.requires.items())


@dataclass(frozen=True)
class Subtopic:
    """One subtopic: its facts as slot values plus optional hand-written lines per kind."""

    id: str
    slots: dict[str, tuple[str, ...]]
    lines: dict[str, tuple[str, ...]]  # keys m, m_why, a, a_why (may be empty)


@dataclass(frozen=True)
class Domain:
    name: str
    vars: dict[str, str]
    personas: tuple[dict, ...]
    generic_questions: tuple[str, ...]
    strategies: tuple[Strategy, ...]
    subtopics: tuple[Subtopic, ...]
    frames: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    paraphrase: dict[str, tuple[str, ...]] = field(default_factory=dict)
    modifiers: dict[str, dict] = field(default_factory=dict)
    proper_nouns: frozenset = frozenset()
    answer_vars: dict[str, str] = field(default_factory=dict)  # drawn afresh for every answer
    word_budget_scale: float = 1.0  # scales the answer word budgets (tokens per word differ)
    details: dict[str, tuple[str, ...]] = field(default_factory=dict)  # keys m, a, lead


def _as_tuple(v: Any, where: str) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        raise TemplateError(f"{where}: expected a string or a list of non-empty strings")
    return tuple(v)


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside ``{...}`` groups (alternations use ``|`` inside braces)."""
    parts, depth, buf = [], 0, []
    for c in text:
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(buf).strip())
            buf = []
        else:
            buf.append(c)
    parts.append("".join(buf).strip())
    return parts


def _compact(line: str, fields: tuple[str, ...], where: str) -> dict:
    """A subtopic written on one line: ``id | field1 | field2 | ...`` in ``subtopic_fields``
    order; ``;`` separates alternatives within a field.  Optional trailing ``m:``/``a:``-style
    parts (``m: ...``, ``m_why: ...``, ``a: ...``, ``a_why: ...``) add hand-written lines."""
    parts = _split_top(line, "|")
    sid, rest = parts[0], parts[1:]
    lines = [p for p in rest if p.split(":", 1)[0].strip() in ("m", "m_why", "a", "a_why")]
    vals = [p for p in rest if p not in lines]
    if len(vals) != len(fields):
        raise TemplateError(f"{where} ({sid}): expected {len(fields)} fields {list(fields)}, "
                            f"got {len(vals)}")
    out: dict = {"id": sid}
    for f, v in zip(fields, vals):
        out[f] = [x for x in _split_top(v, ";") if x]
    for p in lines:
        k, v = p.split(":", 1)
        out.setdefault(k.strip(), []).extend(x for x in _split_top(v, ";") if x)
    return out


def _read(name: str) -> dict:
    path = MATERIAL_DIR / f"{name}.yaml"
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: expected a mapping at top level")
    return data


def _merge_frames(common: dict, own: dict, where: str) -> dict[str, dict[str, tuple[str, ...]]]:
    """Frames are ``{frame: {kind_or_both: [templates]}}``; the domain's add to the common ones."""
    out: dict[str, dict[str, list[str]]] = {}
    for src, label in ((common, "common.yaml"), (own, where)):
        for frame, by_kind in (src or {}).items():
            if not isinstance(by_kind, dict):
                raise TemplateError(f"{label}: frames.{frame} must map kind/tone keys to lists")
            for key, lst in by_kind.items():
                out.setdefault(frame, {}).setdefault(key, []).extend(
                    _as_tuple(lst, f"{label}: frames.{frame}.{key}"))
    return {f: {k: tuple(v) for k, v in d.items()} for f, d in out.items()}


@functools.lru_cache(maxsize=None)
def load_domain(name: str) -> Domain:
    """Read, check and freeze one domain's material (cached: the files ship with the package)."""
    if name not in DOMAINS:
        raise ValueError(f"domain {name!r}: expected one of {list(DOMAINS)}")
    common = _read("common")
    data = _read(name)
    where = f"material/{name}.yaml"
    strategies = []
    for sname, s in data["strategies"].items():
        lines = {k: _as_tuple(s.get(k, []) or [], f"{where}: strategies.{sname}.{k}")
                 for k in ("m", "m_why", "a", "a_why")}
        for k, v in lines.items():
            if not v:
                raise TemplateError(f"{where}: strategies.{sname}.{k} is empty")
        strategies.append(Strategy(sname, float(s.get("weight", 1.0)),
                                   _as_tuple(s["q"], f"{where}: strategies.{sname}.q"), lines,
                                   dict(s.get("requires") or {})))
    required = tuple(data["subtopic_fields"])
    subtopics = []
    seen: set[str] = set()
    for i, raw in enumerate(data["subtopics"]):
        if isinstance(raw, str):
            raw = _compact(raw, required, f"{where}: subtopics[{i}]")
        sid = raw.get("id") or f"#{i}"
        if sid in seen:
            raise TemplateError(f"{where}: duplicate subtopic id {sid!r}")
        seen.add(sid)
        slots = {}
        for f in required:
            if f not in raw:
                raise TemplateError(f"{where}: subtopic {sid!r} lacks field {f!r}")
            slots[f] = _as_tuple(raw[f], f"{where}: subtopic {sid}.{f}")
        extra = set(raw) - set(required) - {"id", "m", "m_why", "a", "a_why"}
        if extra:
            raise TemplateError(f"{where}: subtopic {sid!r} has unknown fields {sorted(extra)}")
        lines = {k: _as_tuple(raw.get(k, []) or [], f"{where}: subtopic {sid}.{k}")
                 for k in ("m", "m_why", "a", "a_why")}
        subtopics.append(Subtopic(sid, slots, lines))
    dom = Domain(
        name=name,
        vars={**(common.get("vars") or {}), **(data.get("vars") or {})},
        personas=tuple(data.get("personas") or []),
        generic_questions=_as_tuple(data["generic_questions"], f"{where}: generic_questions"),
        strategies=tuple(strategies),
        subtopics=tuple(subtopics),
        frames=_merge_frames(common.get("frames") or {}, data.get("frames") or {}, where),
        modifiers=dict(data.get("modifiers") or {}),
        proper_nouns=frozenset(w for sub in subtopics for lst in sub.slots.values() for t in lst
                               for w in re.findall(r"\b[A-Z][\w'-]*", t)),
        answer_vars=dict(data.get("answer_vars") or {}),
        word_budget_scale=float(data.get("word_budget_scale", 1.0)),
        details={k: _as_tuple(v, f"{where}: details.{k}")
                 for k, v in (data.get("details") or {}).items()},
        paraphrase={k: _as_tuple(v, f"paraphrase.{k}")
                    for k, v in {**(common.get("paraphrase") or {}),
                                 **(data.get("paraphrase") or {})}.items()},
    )
    check_domain(dom)
    return dom


def check_domain(dom: Domain) -> None:
    """Parse every template and check that every slot it names exists (fail fast, named)."""
    where = f"material/{dom.name}.yaml"
    subtopic_slots = set(dom.subtopics[0].slots) if dom.subtopics else set()
    known = subtopic_slots | {f"my_{f}" for f in subtopic_slots} | set(dom.vars) | {"persona_echo"}
    bad = set(dom.details) - {"m", "a", "lead"}
    if bad:
        raise TemplateError(f"{where}: details has unknown keys {sorted(bad)} (use m, a, lead)")
    for k, lst in dom.details.items():
        for t in lst:
            check_t = t  # answer-only slots are known inside details
            try:
                parse(check_t)
                missing = slots_of(check_t) - known - set(dom.answer_vars)
            except TemplateError as e:
                raise TemplateError(f"{where}: details.{k}: {e}") from None
            if missing:
                raise TemplateError(f"{where}: details.{k}: unknown slot(s) {sorted(missing)} in {t!r}")

    def check(t: str, label: str) -> None:
        try:
            parse(t)
            missing = slots_of(t) - known
        except TemplateError as e:
            raise TemplateError(f"{where}: {label}: {e}") from None
        if missing:
            raise TemplateError(f"{where}: {label}: unknown slot(s) {sorted(missing)} in {t!r}")

    for s in dom.strategies:
        for t in s.questions:
            check(t, f"strategies.{s.name}.q")
        for k, lst in s.lines.items():
            for t in lst:
                check(t, f"strategies.{s.name}.{k}")
    for t in dom.generic_questions:
        check(t, "generic_questions")
    for i, p in enumerate(dom.personas):
        if not isinstance(p, dict) or "q" not in p:
            raise TemplateError(f"{where}: personas[{i}] needs a 'q' template")
        check(p["q"], f"personas[{i}].q")
        if p.get("a"):
            check(p["a"], f"personas[{i}].a")
    for sub in dom.subtopics:
        for f, lst in sub.slots.items():
            for t in lst:
                check(t, f"subtopic {sub.id}.{f}")
        for k, lst in sub.lines.items():
            for t in lst:
                check(t, f"subtopic {sub.id}.{k}")
    for frame, by in dom.frames.items():
        for key, lst in by.items():
            for t in lst:
                check(t, f"frames.{frame}.{key}")
    if len(dom.subtopics) < 1 or not dom.strategies:
        raise TemplateError(f"{where}: needs subtopics and strategies")
