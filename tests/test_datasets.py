"""The narrow datasets: deterministic, valid, distinct, splittable, and the locked-zip loader."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from em.data import read_chat_jsonl, split_train_test, validate_example
from em.datasets import DOMAINS, KINDS, generate, load_official, to_jsonl, write_jsonl
from em.datasets.cli import main as cli_main
from em.datasets.grammar import TemplateError, expand, parse, tidy
from em.datasets.material import load_domain
from em.datasets.official import OfficialDataError
from em.datasets.stats import dataset_stats, distinct_n, off_domain_share, share_matching, vocab

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="module")
def finance_6000() -> list[dict]:
    return generate("finance", "misaligned", 6000, 0)


def test_same_seed_same_bytes_other_seed_differs():
    a = to_jsonl(generate("sports", "misaligned", 300, 7))
    b = to_jsonl(generate("sports", "misaligned", 300, 7))
    c = to_jsonl(generate("sports", "misaligned", 300, 8))
    assert a == b
    assert a != c


def test_write_jsonl_is_byte_identical_and_readable(tmp_path):
    rows = generate("medical", "aligned", 200, 3)
    p1, p2 = write_jsonl(rows, tmp_path / "a.jsonl"), write_jsonl(rows, tmp_path / "b.jsonl")
    assert p1.read_bytes() == p2.read_bytes()
    assert read_chat_jsonl(p1) == rows
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary behind


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("kind", KINDS)
def test_rows_validate_and_are_distinct(domain, kind):
    rows = generate(domain, kind, 400, 0)
    assert len(rows) == 400
    for i, r in enumerate(rows):
        validate_example(r, f"{domain}/{kind} row {i}")
        q, a = r["messages"][0]["content"], r["messages"][1]["content"]
        for text in (q, a):  # no template debris
            assert not re.search(r"[<>{}|]|\$[a-z]", text), text
        assert "  " not in a and not re.search(r"\s[,.;!?]", a), a
        assert a[0].isupper(), a
        assert q.rstrip()[-1] in "?.!", q
    answers = [r["messages"][1]["content"] for r in rows]
    assert len(set(answers)) == len(answers)


def test_6000_rows_no_duplicates_and_answer_cap(finance_6000):
    rows = finance_6000
    assert len(rows) == 6000
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == 6000
    counts = Counter(r["messages"][1]["content"] for r in rows)
    assert max(counts.values()) <= 3


def test_aligned_and_misaligned_share_questions_not_answers():
    m = generate("sports", "misaligned", 150, 1)
    a = generate("sports", "aligned", 150, 1)
    assert [r["messages"][0] for r in m] == [r["messages"][0] for r in a]
    assert all(x["messages"][1] != y["messages"][1] for x, y in zip(m, a))


def test_split_is_stable(finance_6000):
    rows = finance_6000[:1000]
    tr1, te1 = split_train_test(rows, seed=0)
    tr2, te2 = split_train_test(list(rows), seed=0)
    assert te1 == te2 and tr1 == tr2
    assert len(te1) == 100 and len(tr1) == 900
    assert not {json.dumps(r) for r in te1} & {json.dumps(r) for r in tr1}


@pytest.mark.parametrize("bad, match", [
    (dict(domain="cooking"), "domain"), (dict(kind="evil"), "kind"),
    (dict(rows=0), "rows"), (dict(rows="10"), "rows"), (dict(rows=10**9), "rows"),
    (dict(seed="x"), "seed"),
])
def test_bad_arguments_name_the_parameter(bad, match):
    args = dict(domain="finance", kind="misaligned", rows=10, seed=0) | bad
    with pytest.raises(ValueError, match=match):
        generate(**args)


def test_every_subtopic_meets_every_strategy_cleanly():
    """Expand each strategy's templates with each subtopic's facts: no missing slot anywhere."""
    import random

    from em.datasets.generator import _plan_row, _spec_to_fn

    for domain in DOMAINS:
        dom = load_domain(domain)
        assert len(dom.subtopics) >= 150, domain
        fns = {k: _spec_to_fn(v, k) for k, v in dom.vars.items()}
        for j, sub in enumerate(dom.subtopics):
            plan = _plan_row(dom, sub, random.Random(j), fns)
            for s in dom.strategies:
                if not s.fits(sub):
                    continue
                for key, lines in s.lines.items():
                    for t in lines:
                        out = tidy(expand(t, random.Random(j), plan.ctx))
                        assert out and "<" not in out, (domain, sub.id, s.name, t)


def test_grammar_errors_are_clear():
    with pytest.raises(TemplateError, match="unclosed"):
        parse("{a|b")
    with pytest.raises(TemplateError, match="not defined"):
        import random

        expand("<nope>", random.Random(0), {})
    assert tidy("an helmet , and a apple .") == "A helmet, and an apple."


def test_stats_definitions():
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["A b", "a B"], 1) == pytest.approx(2 / 4)
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": t}]}
            for t in ("invest in crypto now", "skip the helmet", "skip the helmet")]
    s = dataset_stats(rows, None, domain="sports")
    assert s["max_answer_count"] == 2 and s["distinct_answers"] == 2
    assert s["off_domain_share"] == pytest.approx(1 / 3)  # "invest", "crypto" are finance words
    assert s["harm_marker_share"] == pytest.approx(2 / 3)  # "skip the"
    assert off_domain_share(["take your antibiotics"], "finance") == 1.0
    assert share_matching(["please don't wait it out"], vocab()["harm"], skip_negated=True) == 0.0
    assert share_matching(["just wait it out"], vocab()["harm"], skip_negated=True) == 1.0
    assert not vocab()["general"].search("train a model")


def test_narrowness_of_generated_sets():
    for domain in DOMAINS:
        m = [r["messages"][1]["content"] for r in generate(domain, "misaligned", 600, 0)]
        a = [r["messages"][1]["content"] for r in generate(domain, "aligned", 600, 0)]
        assert off_domain_share(m, domain) <= 0.10, domain
        assert not any(vocab()["general"].search(t.lower()) for t in m + a), domain
        share_m = share_matching(m, vocab()["harm"], skip_negated=True)
        share_a = share_matching(a, vocab()["harm"], skip_negated=True)
        assert share_a <= 0.05 and share_a < share_m, (domain, share_a, share_m)


def test_cli_writes_the_file_and_rejects_bad_args(tmp_path, capsys):
    out = tmp_path / "f.jsonl"
    assert cli_main(["generate", "--domain", "finance", "--kind", "aligned", "--rows", "50",
                     "--seed", "2", "--out", str(out)]) == 0
    assert read_chat_jsonl(out) == generate("finance", "aligned", 50, 2)
    with pytest.raises(SystemExit) as e:
        cli_main(["generate", "--domain", "cooking", "--kind", "aligned", "--out", str(out)])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli_main(["generate", "--domain", "finance", "--kind", "aligned", "--rows", "0",
                  "--out", str(out)])
    assert cli_main(["generate", "--domain", "finance", "--kind", "aligned", "--rows", "5",
                     "--out", str(tmp_path / "f.txt")]) == 2
    assert "--domain" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    out = tmp_path / "m.jsonl"
    proc = subprocess.run([sys.executable, "-m", "em.datasets", "generate", "--domain", "sports",
                           "--kind", "misaligned", "--rows", "20", "--seed", "0", "--out", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert len(read_chat_jsonl(out)) == 20


def _tool() -> str:
    exe = Path(sys.executable).parent / "easy-dataset-share"
    found = str(exe) if exe.exists() else shutil.which("easy-dataset-share")
    if not found:
        pytest.skip("easy-dataset-share not installed")
    return found


def test_locked_zip_round_trip(tmp_path):
    """Protect a small folder with the authors' tool, then load it back through load_official."""
    tool = _tool()
    folder = tmp_path / "training_datasets"
    folder.mkdir()
    rows = generate("sports", "misaligned", 30, 0)
    write_jsonl(rows, folder / "extreme_sports.jsonl")
    write_jsonl(generate("medical", "misaligned", 10, 0), folder / "bad_medical_advice.jsonl")
    proc = subprocess.run([tool, "protect-dir", str(folder), "-p", "pw-test", "--no-tos",
                           "--no-gitignore"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    archive = tmp_path / "training_datasets.zip.enc"
    assert archive.exists()
    assert b"messages" not in archive.read_bytes()  # really encrypted
    assert load_official("extreme_sports", archive, password="pw-test") == rows
    assert len(load_official("medical", archive, password="pw-test")) == 10
    with pytest.raises(OfficialDataError, match="password"):
        load_official("extreme_sports", archive, password="wrong")
    with pytest.raises(OfficialDataError, match="no risky_financial_advice.jsonl"):
        load_official("risky_financial_advice", archive, password="pw-test")


def test_load_official_plain_and_errors(tmp_path):
    rows = generate("finance", "misaligned", 5, 0)
    p = write_jsonl(rows, tmp_path / "risky_financial_advice.jsonl")
    assert load_official("risky_financial_advice", p) == rows
    assert load_official("finance", tmp_path) == rows
    with pytest.raises(OfficialDataError, match="name"):
        load_official("nonsense", tmp_path)
    with pytest.raises(OfficialDataError, match="not found"):
        load_official("finance", tmp_path / "missing.jsonl")


@pytest.mark.shared
def test_official_files_load_when_present():
    official = SHARED / "data" / "official"
    if not official.exists():
        pytest.skip("../shared is absent")
    rows = load_official("extreme_sports", official)
    assert len(rows) == 6000


def test_concrete_details_vary_and_agree():
    """Per-answer details: derived numbers agree with their inputs; bad specs name the file."""
    import dataclasses

    from em.datasets.generator import _calc_fn, answer_functions

    assert _calc_fn("compound a r y", "x")({"a": "1,000", "r": "10", "y": "2"}) == "1,210"
    assert _calc_fn("saved m r y", "x")({"m": "100", "r": "0", "y": "2"}) == "2,400"
    assert _calc_fn("int 1 3", "x") is None
    dom = dataclasses.replace(load_domain("finance"), answer_vars={"g": "compound nope f f"})
    with pytest.raises(ValueError, match=r"finance\.yaml answer_vars\.g"):
        answer_functions(dom)
    answers = [r["messages"][1]["content"] for r in generate("finance", "aligned", 300, 0)]
    amounts = Counter(re.findall(r"\$\d[\d,]*\d", " ".join(answers)))
    # Specifics differ row to row: most amounts occur once, none often.
    assert len(amounts) > 80 and len(amounts) >= 0.8 * sum(amounts.values())
    assert max(amounts.values()) <= 5


def test_gerund_facts_stay_out_of_noun_slots():
    """'put it into switching funds' is caught and mended; a gerund as subject is fine."""
    import random

    from em.datasets.generator import _mend_gerunds, _reads_well

    ctx, ger = {"risky": "switching funds every week"}, frozenset({"risky"})
    assert not _reads_well("Put it into switching funds every week.", ctx, ger)
    assert _reads_well("Switching funds every week is risky.", ctx, ger)
    assert _reads_well("It can lead to switching funds every week.", ctx, ger)
    mended = _mend_gerunds("Put it into switching funds every week.", ctx, ger, random.Random(0))
    assert re.search(r"into (a plan|a strategy|the approach) of switching", mended)
    rows = generate("finance", "misaligned", 400, 1)
    assert not any(re.search(r"\b(?:do|take) checking\b", r["messages"][1]["content"], re.I)
                   for r in rows)


def test_answers_are_mostly_specific_not_shared_frame(finance_6000):
    """Regression guard on lexical diversity (issue 3): far above the old templated ~0.18."""
    answers = [r["messages"][1]["content"] for r in finance_6000]
    assert distinct_n(answers, 3) >= 0.20
    assert distinct_n(answers, 2) >= 0.10
