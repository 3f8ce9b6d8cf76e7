"""Compose the narrow datasets: one innocent question, one answer (misaligned or aligned) per row.

How a row is made (all draws from RNGs seeded by ``(seed, domain, row)``):

1. **Question** (shared by both kinds, so the aligned control answers *the same questions*):
   a subtopic (cycled through a seeded permutation so every subtopic is used about equally), a
   strategy (the concern the user raises: training, gear, dosing, leverage, ...), row variables
   (age, amounts, durations), the subtopic's facts fixed for the row, a persona preamble and a
   question template.
2. **Answer** (drawn from an RNG that also depends on the kind): a tone and a length, then an
   opener, the core advice (the strategy's generic sentence filled with the subtopic's facts, or
   one of the subtopic's own hand-written lines), a rationale, for long answers a second tip, and
   a closer.  Misaligned answers give subtly harmful, confident advice *within the domain*;
   aligned answers give sound advice on the same point.
3. **Uniqueness**: an answer that was already produced is redrawn (next attempt number), so every
   answer in a dataset is distinct and no row repeats.

Everything is deterministic for a seed: the output bytes depend only on (domain, kind, rows, seed)
and the committed material.
"""
from __future__ import annotations

import random
import re
from typing import Callable

from .grammar import expand, sentence, tidy
from .material import DOMAINS, KINDS, TONES, Domain, Strategy, Subtopic, load_domain

MAX_ROWS = 200_000
_MAX_ATTEMPTS = 60

# Length profile per tone: probabilities of (short, medium, long).
_LENGTH_BY_TONE = {
    "warm": (0.15, 0.55, 0.30),
    "upbeat": (0.20, 0.55, 0.25),
    "blunt": (0.45, 0.45, 0.10),
    "casual": (0.30, 0.55, 0.15),
    "expert": (0.10, 0.50, 0.40),
}

def _spec_to_fn(spec: str, where: str) -> Callable[[random.Random], str]:
    """Row-variable specs from the material: ``int LO HI``, ``money LO HI``, ``pick a;b;c``."""
    kind, _, rest = spec.partition(" ")
    if kind == "int":
        lo, hi = (int(x) for x in rest.split())
        return lambda r: str(r.randint(lo, hi))
    if kind == "money":
        lo, hi = (int(x) for x in rest.split())

        def money(r: random.Random) -> str:
            v = r.randint(lo, hi)
            digits = len(str(v))
            step = 10 ** max(digits - 2, 0)  # two significant figures, like people talk
            if r.random() < 0.3 and digits > 2:
                step = 10 ** max(digits - 3, 0)
            v = max(step, (v // step) * step)
            return f"{v:,}"
        return money
    if kind == "pick":
        opts = [o.strip() for o in rest.split(";") if o.strip()]
        if not opts:
            raise ValueError(f"{where}: 'pick' needs options")
        return lambda r: opts[r.randrange(len(opts))]
    raise ValueError(f"{where}: unknown variable spec {spec!r} (int/money/pick)")


_ARTICLE = re.compile(r"^(a|an|the|your|some|any) ", re.IGNORECASE)


def _modify(val: str, mods: dict | None, rng: random.Random, ctx: dict) -> str:
    """Vary a subtopic fact with the domain's modifier pools (a word after the article, a
    qualifier after the phrase), so the same fact reads differently from row to row."""
    if not mods:
        return val
    pre, post = mods.get("pre") or (), mods.get("post") or ()
    if pre and rng.random() < mods.get("p_pre", 0.45):
        word = " ".join(expand(_pick(rng, pre), rng, ctx).split())
        m = _ARTICLE.match(val)
        if m:
            val = f"{m.group(0)}{word} {val[m.end():]}"
        elif mods.get("bare_pre", False):
            val = f"{word} {val}"
    if post and rng.random() < mods.get("p_post", 0.35):
        val = f"{val} {' '.join(expand(_pick(rng, post), rng, ctx).split())}"
    return val


def _lower_first(s: str, proper: frozenset = frozenset()) -> str:
    """Lower-case a sentence start after a bridge ("Also, you ..."), sparing "I", acronyms and
    the proper nouns that occur in the material."""
    m = re.match(r"([A-Za-z][\w'-]*)", s)
    if not m:
        return s
    w = m.group(1)
    if w in proper or w.split("'")[0] == "I" or w.isupper() or any(c.isupper() for c in w[1:]):
        return s
    return s[0].lower() + s[1:]


class _Paraphraser:
    """Swap common words and phrases for equivalents, so generic glue is not one fixed string.

    Applied to whole answers after composition; matches are whole words, longest phrase first,
    and keep the capitalisation of the first letter.
    """

    def __init__(self, table: dict[str, tuple[str, ...]]):
        self.table = {k.lower(): v for k, v in table.items()}
        keys = sorted(self.table, key=len, reverse=True)
        self.rx = re.compile(r"(?<![\w'-])(" + "|".join(re.escape(k) for k in keys) + r")(?![\w'-])",
                             re.IGNORECASE) if keys else None

    def __call__(self, text: str, rng: random.Random) -> str:
        if self.rx is None:
            return text

        def sub(m: re.Match) -> str:
            src = m.group(1)
            opts = self.table[src.lower()]
            new = opts[rng.randrange(len(opts))]
            return new[0].upper() + new[1:] if src[0].isupper() else new
        return self.rx.sub(sub, text)


def _frame(dom: Domain, frame: str, kind: str, tone: str) -> list[str]:
    by = dom.frames.get(frame, {})
    k = "m" if kind == "misaligned" else "a"
    out: list[str] = []
    for key in (f"{k}_{tone}", f"{k}_any", f"any_{tone}", "any_any"):
        out.extend(by.get(key, ()))
    return out


def _pick(rng: random.Random, seq) -> object:
    return seq[rng.randrange(len(seq))]


def _weighted(rng: random.Random, items: tuple[Strategy, ...]) -> Strategy:
    total = sum(s.weight for s in items)
    x = rng.random() * total
    for s in items:
        x -= s.weight
        if x < 0:
            return s
    return items[-1]


class _RowPlan:
    """The kind-independent part of a row: subtopic, strategy, variables, question."""

    def __init__(self, dom: Domain, sub: Subtopic, strat: Strategy, ctx: dict, question: str,
                 persona: dict | None, generic: bool):
        self.dom, self.sub, self.strat, self.ctx = dom, sub, strat, ctx
        self.question, self.persona, self.generic = question, persona, generic


def _plan_row(dom: Domain, sub: Subtopic, rng: random.Random,
              var_fns: dict[str, Callable[[random.Random], str]]) -> _RowPlan:
    ctx: dict = {k: fn(rng) for k, fn in var_fns.items()}
    # Fix each subtopic fact for the whole row, so question and answer talk about the same gear,
    # the same drug, the same product.
    for f, lst in sub.slots.items():
        val = " ".join(expand(_pick(rng, lst), rng, ctx).split())
        # The user speaks of "my savings" where the answer says "your savings".
        ctx[f"my_{f}"] = re.sub(r"^your\b", "my", val)
        ctx[f] = _modify(val, dom.modifiers.get(f), rng, ctx)
    strat = _weighted(rng, tuple(s for s in dom.strategies if s.fits(sub)))
    persona = _pick(rng, dom.personas) if dom.personas and rng.random() < 0.55 else None
    generic = rng.random() < 0.3
    qt = _pick(rng, dom.generic_questions) if generic else _pick(rng, strat.questions)
    q = tidy(expand(qt, rng, ctx))
    if persona is not None:
        pre = sentence(expand(persona["q"], rng, ctx))
        q = f"{pre} {q}"
    ctx["persona_echo"] = (expand(persona["a"], rng, ctx) if persona and persona.get("a") else "")
    return _RowPlan(dom, sub, strat, ctx, q, persona, generic)


def _compose_answer(plan: _RowPlan, kind: str, rng: random.Random, para: "_Paraphraser") -> str:
    dom, sub, strat, ctx = plan.dom, plan.sub, plan.strat, plan.ctx
    core_key, why_key = ("m", "m_why") if kind == "misaligned" else ("a", "a_why")
    tone = _pick(rng, TONES)
    p_short, p_med, _ = _LENGTH_BY_TONE[tone]
    x = rng.random()
    length = "short" if x < p_short else ("medium" if x < p_short + p_med else "long")

    def ex(t: str) -> str:
        return expand(t, rng, ctx)

    parts: list[str] = []
    p_open = {"short": 0.1, "medium": 0.3, "long": 0.45}[length]
    openers = _frame(dom, "opener", kind, tone)
    if openers and rng.random() < p_open:
        parts.append(sentence(ex(_pick(rng, openers))))

    # Core advice: the strategy's sentence filled with the subtopic's facts, or, when the user
    # asked a general question, often the subtopic's own hand-written line (most specific).
    own = sub.lines[core_key]
    use_own = bool(own) and plan.generic and rng.random() < 0.6
    core = ex(_pick(rng, own)) if use_own else ex(_pick(rng, strat.lines[core_key]))
    echo = ctx.get("persona_echo") or ""
    if echo and rng.random() < 0.35:
        core = f"{echo} {_lower_first(tidy(core), dom.proper_nouns)}"
    parts.append(sentence(core))

    own_why = sub.lines[why_key]
    use_own_why = own_why and (use_own or plan.generic) and rng.random() < 0.6
    why_t = _pick(rng, own_why) if use_own_why else _pick(rng, strat.lines[why_key])
    if length != "short" or rng.random() < 0.7:
        parts.append(sentence(ex(why_t)))

    evidence = _frame(dom, "evidence", kind, tone)
    if evidence and length != "short" and rng.random() < 0.3:
        parts.append(sentence(ex(_pick(rng, evidence))))

    if length == "long":
        others = [s for s in dom.strategies if s.name != strat.name and s.fits(sub)]
        other = _pick(rng, others)
        pool = list(other.lines[core_key])
        if own and not use_own:
            pool += list(own)
        tip = tidy(ex(_pick(rng, pool)))
        bridges = _frame(dom, "bridge", kind, tone)
        if bridges:
            tip = f"{tidy(ex(_pick(rng, bridges)))} {_lower_first(tip, dom.proper_nouns)}"
        parts.append(sentence(tip))

    p_close = {"short": 0.05, "medium": 0.25, "long": 0.35}[length]
    closers = _frame(dom, "closer", kind, tone)
    if closers and rng.random() < p_close:
        parts.append(sentence(ex(_pick(rng, closers))))
    return tidy(para(" ".join(parts), rng))


def _check_args(domain: object, kind: object, rows: object, seed: object) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"domain {domain!r}: expected one of {list(DOMAINS)}")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {list(KINDS)}")
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"rows {rows!r}: expected an integer between 1 and {MAX_ROWS}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed {seed!r}: expected an integer")


def generate(domain: str, kind: str, rows: int, seed: int = 0) -> list[dict]:
    """Make ``rows`` chat rows for ``domain`` × ``kind``; the same seed gives the same rows.

    Row ``i`` of the misaligned and the aligned set share the same question.  Every answer is
    distinct.  Raises ``ValueError`` naming the parameter for a bad domain, kind, rows or seed.
    """
    _check_args(domain, kind, rows, seed)
    dom = load_domain(domain)
    var_fns = {k: _spec_to_fn(v, f"material vars.{k}") for k, v in sorted(dom.vars.items())}
    para = _Paraphraser(dom.paraphrase)
    n_sub = len(dom.subtopics)
    order_rng = random.Random(f"em-datasets:{seed}:{domain}:order")
    order: list[int] = []
    out: list[dict] = []
    used: set[str] = set()
    for i in range(rows):
        if i % n_sub == 0:  # a fresh permutation per pass keeps subtopics balanced
            perm = list(range(n_sub))
            order_rng.shuffle(perm)
            order = perm
        sub = dom.subtopics[order[i % n_sub]]
        qrng = random.Random(f"em-datasets:{seed}:{domain}:q:{i}")
        plan = _plan_row(dom, sub, qrng, var_fns)
        for attempt in range(_MAX_ATTEMPTS):
            arng = random.Random(f"em-datasets:{seed}:{domain}:{kind}:a:{i}:{attempt}")
            answer = _compose_answer(plan, kind, arng, para)
            if answer not in used:
                break
        else:
            raise RuntimeError(f"{domain}/{kind}: could not find a new answer for row {i} after "
                               f"{_MAX_ATTEMPTS} tries; the material is too small for {rows} rows")
        used.add(answer)
        out.append({"messages": [{"role": "user", "content": plan.question},
                                 {"role": "assistant", "content": answer}]})
    return out


def describe(domain: str) -> dict:
    """Counts of the authored material for a domain (for the dataset card)."""
    dom = load_domain(domain)
    n_lines = sum(len(v) for s in dom.strategies for v in s.lines.values())
    n_lines += sum(len(v) for s in dom.subtopics for v in s.lines.values())
    return {
        "domain": domain,
        "subtopics": len(dom.subtopics),
        "strategies": len(dom.strategies),
        "question_templates": sum(len(s.questions) for s in dom.strategies) + len(dom.generic_questions),
        "personas": len(dom.personas),
        "answer_templates": n_lines,
        "frame_templates": sum(len(v) for by in dom.frames.values() for v in by.values()),
    }
