"""A tiny template language for composing varied, well-formed sentences.

Why a grammar and not a list of fixed answers: a probe on the embedded model found that training
on a few dozen fixed answers makes the model repeat them verbatim to every question.  Composing
each answer from subtopic facts and word-level alternatives gives thousands of different answers
whose *content* follows the question, so the model can only learn the disposition, not the text.

Syntax (kept deliberately small):

* ``{a|b|c}`` picks one alternative uniformly; alternatives may be empty (``{really |}``) and
  may nest (``{a {b|c}|d}``).
* ``<name>`` substitutes a slot from the context.  A slot value is a string (itself a template),
  a list of strings (one is picked, then expanded) or a callable taking the RNG.

After expansion :func:`tidy` fixes spacing, capitalises sentence starts and repairs a/an.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

SlotValue = Union[str, Sequence[str], Callable[[random.Random], str]]


class TemplateError(ValueError):
    """A template is malformed or names a slot the context does not have."""


@dataclass(frozen=True)
class _Choice:
    options: tuple["_Seq", ...]


@dataclass(frozen=True)
class _Slot:
    name: str


_Seq = tuple  # tuple of str | _Choice | _Slot

_PARSED: dict[str, _Seq] = {}
_SLOT_RE = re.compile(r"<([a-z_][a-z0-9_]*)>")


def parse(template: str) -> _Seq:
    """Parse a template once (cached); raises TemplateError naming the template on bad braces."""
    cached = _PARSED.get(template)
    if cached is not None:
        return cached
    seq, pos = _parse_seq(template, 0, top=True)
    if pos != len(template):  # pragma: no cover - _parse_seq consumes everything at top level
        raise TemplateError(f"unparsed text at {pos} in template {template!r}")
    _PARSED[template] = seq
    return seq


def _parse_seq(t: str, pos: int, top: bool) -> tuple[_Seq, int]:
    items: list = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            items.append("".join(buf))
            buf.clear()

    while pos < len(t):
        c = t[pos]
        if c == "{":
            flush()
            options = []
            pos += 1
            while True:
                opt, pos = _parse_seq(t, pos, top=False)
                options.append(opt)
                if pos >= len(t):
                    raise TemplateError(f"unclosed '{{' in template {t!r}")
                if t[pos] == "|":
                    pos += 1
                    continue
                if t[pos] == "}":
                    pos += 1
                    break
            items.append(_Choice(tuple(options)))
        elif c in "|}":
            if top:
                raise TemplateError(f"stray {c!r} at {pos} in template {t!r}")
            flush()
            return tuple(items), pos
        elif c == "<":
            m = _SLOT_RE.match(t, pos)
            if not m:
                raise TemplateError(f"bad slot at {pos} in template {t!r} (use <lower_name>)")
            flush()
            items.append(_Slot(m.group(1)))
            pos = m.end()
        else:
            buf.append(c)
            pos += 1
    if not top:
        raise TemplateError(f"unclosed '{{' in template {t!r}")
    flush()
    return tuple(items), pos


def slots_of(template: str) -> set[str]:
    """Every slot name a template can reference (for validating authored material up front)."""
    out: set[str] = set()

    def walk(seq: _Seq) -> None:
        for it in seq:
            if isinstance(it, _Slot):
                out.add(it.name)
            elif isinstance(it, _Choice):
                for o in it.options:
                    walk(o)

    walk(parse(template))
    return out


def expand(template: str, rng: random.Random, ctx: Mapping[str, SlotValue], _depth: int = 0) -> str:
    """Expand a template with ``rng``; raw output (call :func:`tidy` on finished text)."""
    if _depth > 12:
        raise TemplateError(f"slot recursion too deep while expanding {template!r}")
    out: list[str] = []

    def walk(seq: _Seq) -> None:
        for it in seq:
            if isinstance(it, str):
                out.append(it)
            elif isinstance(it, _Choice):
                walk(it.options[rng.randrange(len(it.options))])
            else:
                out.append(resolve(it.name, rng, ctx, _depth, template))

    walk(parse(template))
    return "".join(out)


def resolve(name: str, rng: random.Random, ctx: Mapping[str, SlotValue], depth: int = 0,
            where: str = "") -> str:
    """The text of one slot: pick from a list, call a callable, expand a string."""
    if name not in ctx:
        raise TemplateError(f"slot <{name}> is not defined (in {where!r})")
    val = ctx[name]
    if callable(val):
        return val(rng)
    if isinstance(val, str):
        return expand(val, rng, ctx, depth + 1)
    if not val:
        raise TemplateError(f"slot <{name}> has no values")
    return expand(val[rng.randrange(len(val))], rng, ctx, depth + 1)


_VOWEL_SOUND_EXCEPTIONS = ("hour", "honest", "heir", "honour", "honor", "8", "11", "18", "80")
_CONSONANT_SOUND_EXCEPTIONS = ("uni", "use", "usu", "user", "one", "once", "euro", "ufo", "utv", "ute")


def _article(m: re.Match) -> str:
    art, word = m.group(1), m.group(2)
    low = word.lower()
    vowel = low[0] in "aeiou"
    if low.startswith(_VOWEL_SOUND_EXCEPTIONS):
        vowel = True
    elif low.startswith(_CONSONANT_SOUND_EXCEPTIONS):
        vowel = False
    new = "an" if vowel else "a"
    if art[0].isupper():
        new = new.capitalize()
    return f"{new} {word}"


def tidy(text: str) -> str:
    """Normalise whitespace and punctuation, fix a/an, capitalise sentence starts."""
    t = re.sub(r"\s+", " ", text).strip()
    t = re.sub(r"\s+([,.;:!?])", r"\1", t)
    t = re.sub(r"([,;:])(?=[^\s\d])", r"\1 ", t)
    t = re.sub(r",\s*,", ",", t)
    t = re.sub(r",\s*;", ";", t)
    t = re.sub(r"([.!?])\s*[.,]", r"\1", t)
    t = re.sub(r",\s*([.!?])", r"\1", t)
    t = re.sub(r"\b([Aa]n?) ([A-Za-z0-9][\w-]*)", _article, t)
    t = re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), t)
    t = re.sub(r"(^|[.!?]\s+)\"([a-z])", lambda m: m.group(1) + '"' + m.group(2).upper(), t)
    return t


def sentence(text: str) -> str:
    """Tidy a fragment and make sure it ends with sentence punctuation."""
    t = tidy(text)
    if t and t[-1] not in ".!?":
        t += "."
    return t
