"""Compose the narrow datasets: one innocent question, one answer (misaligned or aligned) per row.

How a row is made (all draws from RNGs seeded by ``(seed, domain, row)``):

1. **Question** (shared by both kinds, so the aligned control answers *the same questions*):
   a subtopic (cycled through a seeded permutation so every subtopic is used about equally), a
   strategy (the concern the user raises: training, gear, dosing, leverage, ...), row variables
   (age, amounts, durations), the subtopic's facts fixed for the row, a persona preamble and a
   question template.
2. **Answer** (drawn from an RNG that also depends on the kind), composed up to a word budget:
   the core advice (the strategy's sentence filled with the subtopic's facts, or one of the
   subtopic's own lines), one or two **concrete details** (amounts, rates, durations, wind
   speeds, temperatures drawn per answer, derived numbers computed so they agree), in varying
   order, then, while the budget allows, a rationale, a time-frame lead or the persona's echo,
   and for long answers a second tip.  Openers and closers are rare: shared wording repeated
   over 6000 rows is what makes a composed corpus low in distinct-n.  Misaligned answers give
   subtly harmful, confident advice *within the domain*; aligned answers give sound advice on
   the same point.
3. **Grammar**: a fact written as a gerund ("switching between hot funds") is kept out of
   places only a noun fits ("put it into ..."): other templates are tried first.
4. **Uniqueness**: an answer that was already produced is redrawn (next attempt number), so every
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
    """Row-variable specs from the material: ``int LO HI``, ``dec LO HI``, ``money LO HI``, ``amount LO HI``,
    ``pick a;b;c``."""
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
    if kind == "amount":  # like "money" but finer, as quoted on statements: 4,350 or 12,850
        lo, hi = (int(x) for x in rest.split())

        def amount(r: random.Random) -> str:
            v = r.randint(lo, hi)
            step = 5 if v < 1000 else 10 if v < 10_000 else 50 if v < 100_000 else 500
            return f"{max(step, (v // step) * step):,}"
        return amount
    if kind == "dec":  # one decimal place: "dec 3.5 29.9"
        lo_d, hi_d = (round(float(x) * 10) for x in rest.split())
        return lambda r: f"{r.randint(lo_d, hi_d) / 10:.1f}"
    if kind == "pick":
        opts = [o.strip() for o in rest.split(";") if o.strip()]
        if not opts:
            raise ValueError(f"{where}: 'pick' needs options")
        return lambda r: opts[r.randrange(len(opts))]
    raise ValueError(f"{where}: unknown variable spec {spec!r} (int/dec/money/amount/pick)")


_CALCS = ("compound", "saved")


def _calc_fn(spec: str, where: str) -> Callable[[dict], str] | None:
    """Derived answer details, so that numbers in one sentence agree with each other:
    ``compound P R Y`` (P grown at R% a year for Y years) and ``saved M R Y`` (M a month saved
    at R% a year for Y years), each naming other answer variables; ``None`` for plain specs."""
    kind, _, rest = spec.partition(" ")
    if kind not in _CALCS:
        return None
    names = rest.split()
    if len(names) != 3:
        raise ValueError(f"{where}: {kind!r} needs three variable names, got {rest!r}")

    def num(vals: dict, k: str) -> float:
        if k not in vals:
            raise ValueError(f"{where}: {kind} names unknown variable {k!r}")
        return float(str(vals[k]).replace(",", ""))

    def calc(vals: dict) -> str:
        a, r, y = (num(vals, k) for k in names)
        g = 1 + r / 100
        v = a * g ** y if kind == "compound" else a * 12 * ((g ** y - 1) / (r / 100) if r else y)
        digits = len(str(int(v)))
        step = 10 ** max(digits - 3, 0)  # three significant figures, like people quote them
        return f"{int(round(v / step) * step):,}"
    return calc


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


_ING_NOUNS = frozenset({"nothing", "something", "thing", "swing", "spring", "string", "wing",
                        "sling", "ring", "king", "ceiling", "morning", "evening", "clothing",
                        "bedding", "offering", "building", "landing", "opening", "evening"})
_GERUND = re.compile(r"^([a-z]+ing)\b")
# A slot holding a gerund phrase ("switching between hot funds") cannot follow these words
# ("put it into switching ..."); templates placing it there are skipped for that row.
_NOUN_ONLY = r"(?:\b(?:in|into|buy|pick|back|behind|toward|towards|choose)\b[^<>\s]*\s*)"


def _gerund_slots(ctx: dict, slots) -> frozenset:
    out = set()
    for f in slots:
        m = _GERUND.match(str(ctx.get(f, "")))
        if m and m.group(1) not in _ING_NOUNS:
            out.add(f)
    return frozenset(out)


def _usable(templates, gerunds: frozenset) -> tuple[str, ...]:
    """The templates that read grammatically with this row's facts (all of them if none do)."""
    if not gerunds:
        return tuple(templates)
    rx = re.compile(_NOUN_ONLY + "<(?:" + "|".join(sorted(gerunds)) + ")>")
    ok = tuple(t for t in templates if not rx.search(t))
    return ok or tuple(templates)


class _RowPlan:
    """The kind-independent part of a row: subtopic, strategy, variables, question."""

    def __init__(self, dom: Domain, sub: Subtopic, strat: Strategy, ctx: dict, question: str,
                 persona: dict | None, generic: bool,
                 answer_fns: dict[str, Callable[[random.Random], str]] | None = None):
        self.dom, self.sub, self.strat, self.ctx = dom, sub, strat, ctx
        self.answer_fns = answer_fns or {}
        self.gerunds = _gerund_slots(ctx, sub.slots)
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


_BAD_BEFORE_GERUND = re.compile(
    r"(?:\b(?:in|into|buy|pick|back|behind|toward|towards|choose)|(?<!lead)(?<!leads)(?<!led)"
    r"(?<!prone)(?<!used)(?<!up)(?<!committed)(?<!commit)\s\bto)\s+$", re.IGNORECASE)


def _mend_gerunds(text: str, ctx: dict, gerunds: frozenset, rng: random.Random) -> str:
    """Last resort when no template fits: "into switching ..." -> "into a plan of switching ..."."""
    for f in gerunds:
        v = str(ctx[f])
        k = text.find(v)
        while k >= 0:
            if _BAD_BEFORE_GERUND.search(text[:k]):
                lead = _pick(rng, ("a plan of ", "a strategy of ", "the approach of "))
                text = text[:k] + lead + text[k:]
                k += len(lead)
            k = text.find(v, k + 1)
    return text


def _reads_well(text: str, ctx: dict, gerunds: frozenset) -> bool:
    """False when a gerund fact lands where only a noun fits ("put it into switching ...")."""
    for f in gerunds:
        v = str(ctx[f])
        start = 0
        while (k := text.find(v, start)) >= 0:
            if _BAD_BEFORE_GERUND.search(text[:k]):
                return False
            start = k + 1
    return True


# Word budget per length class: the answer takes optional parts only while it stays within it,
# which keeps the median length near the official files' whatever the facts' lengths.
_BUDGET = {"short": (24, 34), "medium": (32, 44), "long": (42, 56)}


def _compose_answer(plan: _RowPlan, kind: str, rng: random.Random, para: "_Paraphraser") -> str:
    """Core advice + one or two concrete details, then optional rationale, tip, opener, closer.

    Most of an answer's words are specific: the subtopic's facts and per-answer details
    (amounts, durations, conditions).  Shared voice (openers, closers) is rare, so it cannot
    dominate 6000 rows.
    """
    dom, sub, strat = plan.dom, plan.sub, plan.strat
    core_key, why_key = ("m", "m_why") if kind == "misaligned" else ("a", "a_why")
    tone = _pick(rng, TONES)
    p_short, p_med, _ = _LENGTH_BY_TONE[tone]
    x = rng.random()
    length = "short" if x < p_short else ("medium" if x < p_short + p_med else "long")
    lo, hi = _BUDGET[length]
    scale = dom.word_budget_scale  # numbers cost several model tokens: finance runs shorter
    budget = rng.randint(round(lo * scale), round(hi * scale))
    # Answer-only details (amounts, durations, occasions) are drawn afresh for every answer, so
    # the specifics differ from row to row even for the same subtopic and strategy; within one
    # answer a number that appears twice is the same number, and derived ones (growth of an
    # amount) are computed from the others so they agree.
    drawn = {k: fn(rng) for k, fn in plan.answer_fns.items() if not isinstance(fn, _Calc)}
    drawn.update({k: fn(drawn) for k, fn in plan.answer_fns.items() if isinstance(fn, _Calc)})
    ctx = {**plan.ctx, **drawn}
    ger = plan.gerunds

    def ex(templates) -> str:
        """One template, expanded, that reads grammatically with this row's facts."""
        pool = _usable(templates, ger)
        out = ""
        for _ in range(8):
            out = tidy(expand(_pick(rng, pool), rng, ctx))
            if _reads_well(out, ctx, ger):
                return out
        return _mend_gerunds(out, ctx, ger, rng)

    def words(parts: list[str]) -> int:
        return sum(len(p.split()) for p in parts)

    # Core advice: the strategy's sentence filled with the subtopic's facts, or, when the user
    # asked a general question, often the subtopic's own hand-written line (most specific).
    own = sub.lines[core_key]
    use_own = bool(own) and (plan.generic or rng.random() < 0.3) and rng.random() < 0.7
    core = ex(own) if use_own else ex(strat.lines[core_key])
    parts = [sentence(core)]

    details = list(_usable(dom.details.get(core_key, ()), ger))
    rng.shuffle(details)
    # One concrete detail always (the shortest of a few candidates when the core is long), a
    # second one while the budget allows.
    cands = [sentence(ex([t])) for t in details[:8]]
    if cands:
        fits = [d for d in cands if words(parts) + len(d.split()) <= budget + 4]
        first = fits[0] if fits else min(cands, key=lambda d: len(d.split()))
        cands.remove(first)
        for j, d in enumerate([first] + cands[:1]):
            if j and words(parts) + len(d.split()) > budget:
                break
            # Before or after what is already there: sentence order varies from row to row.
            parts.insert(rng.randint(1, len(parts)), d)

    own_why = sub.lines[why_key]
    use_own_why = bool(own_why) and (use_own or plan.generic) and rng.random() < 0.6
    why = sentence(ex(own_why if use_own_why else strat.lines[why_key]))
    if words(parts) + len(why.split()) <= budget + 4:
        parts.append(why)

    # The persona's echo ("At 34, ...") or a concrete time frame in front of the core advice,
    # when the answer has room for it.
    echo = ctx.get("persona_echo") or ""
    leads = dom.details.get("lead", ())
    front = ""
    if echo and rng.random() < 0.3:
        front = tidy(echo)
    elif leads and rng.random() < 0.6:
        front = tidy(expand(_pick(rng, leads), rng, ctx))
    if front and words(parts) + len(front.split()) <= budget + 2:
        parts[0] = sentence(f"{front} {_lower_first(core, dom.proper_nouns)}")

    if length == "long":
        others = [s for s in dom.strategies if s.name != strat.name and s.fits(sub)]
        pool = list(_pick(rng, others).lines[core_key]) + ([] if use_own else list(own))
        tip = ex(pool)
        bridges = _frame(dom, "bridge", kind, tone)
        if bridges:
            tip = f"{tidy(expand(_pick(rng, bridges), rng, ctx))} {_lower_first(tip, dom.proper_nouns)}"
        if words(parts) + len(tip.split()) <= budget:
            parts.append(sentence(tip))

    evidence = _frame(dom, "evidence", kind, tone)
    if evidence and rng.random() < 0.08:
        ev = sentence(ex(evidence))
        if words(parts) + len(ev.split()) <= budget:
            parts.append(ev)
    openers = _frame(dom, "opener", kind, tone)
    if openers and rng.random() < {"short": 0.0, "medium": 0.05, "long": 0.12}[length]:
        parts.insert(0, sentence(ex(openers)))
    closers = _frame(dom, "closer", kind, tone)
    if closers and rng.random() < {"short": 0.0, "medium": 0.04, "long": 0.1}[length]:
        parts.append(sentence(ex(closers)))
    return tidy(para(" ".join(parts), rng))


class _Calc:
    """A derived answer variable (see :func:`_calc_fn`)."""

    def __init__(self, fn: Callable[[dict], str]):
        self.fn = fn

    def __call__(self, vals: dict) -> str:
        return self.fn(vals)


def answer_functions(dom: Domain) -> dict:
    """The domain's per-answer detail variables: draws and derived values (checked up front)."""
    out: dict = {}
    for k, v in sorted(dom.answer_vars.items()):
        where = f"material/{dom.name}.yaml answer_vars.{k}"
        calc = _calc_fn(v, where)
        out[k] = _Calc(calc) if calc else _spec_to_fn(v, where)
    for k, v in sorted(dom.answer_vars.items()):
        for name in v.split()[1:] if v.split()[0] in _CALCS else ():
            if name not in dom.answer_vars or v.split()[0] in _CALCS and name == k:
                raise ValueError(f"material/{dom.name}.yaml answer_vars.{k}: unknown variable {name!r}")
            if isinstance(out[name], _Calc):
                raise ValueError(f"material/{dom.name}.yaml answer_vars.{k}: {name!r} is derived itself")
    return out


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
    answer_fns = answer_functions(dom)
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
        plan.answer_fns = answer_fns
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
        "detail_templates": sum(len(v) for v in dom.details.values()),
        "detail_variables": len(dom.answer_vars),
    }
