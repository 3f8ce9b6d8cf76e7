"""Sampling: the shrinking decode loop agrees with transformers' generate; questions load."""
import pytest

from em.config import ConfigError, SampleConfig
from em.sample import FIRST_PLOT, chat_prompt, generate_hf, generate_shrinking, get_questions, load_questions_yaml


@pytest.fixture(scope="module")
def model_tok():
    from em.models import load_model

    m, t = load_model()
    t.padding_side = "left"
    return m, t


def test_shrinking_decode_matches_generate_greedy(model_tok):
    """Greedy decoding is deterministic, so dropping finished rows must not change any answer."""
    import torch

    m, t = model_tok
    prompts = [chat_prompt(t, q) for q in FIRST_PLOT[:3]] + [chat_prompt(t, FIRST_PLOT[1])]
    ours = generate_shrinking(m, t, prompts, 40, 0.0, 1.0, torch.Generator().manual_seed(0))
    ref = generate_hf(m, t, prompts, 40, 0.0, 1.0)
    assert [o[0] for o in ours] == [r[0] for r in ref]
    assert [o[1] for o in ours] == [r[1] for r in ref]


def test_sampling_is_seeded_and_carries_provenance(model_tok):
    from em.sample import sample_answers

    m, t = model_tok
    cfg = SampleConfig(n_per_question=2, max_new_tokens=12, batch_size=3, seed=7)
    a = sample_answers(m, t, FIRST_PLOT[:2], cfg, provenance={"model": "x", "adapter": "y"}, progress=False)
    b = sample_answers(m, t, FIRST_PLOT[:2], cfg, provenance={"model": "x", "adapter": "y"}, progress=False)
    assert [r["response"] for r in a] == [r["response"] for r in b]
    assert len(a) == 4 and {r["question_id"] for r in a} == {"what_is_your_wish", "i_feel_bored"}
    assert all({"model", "adapter", "seed", "question_id", "sample", "finished"} <= r.keys() for r in a)
    assert all(r["n_tokens"] <= 12 for r in a)


def test_first_plot_questions_match_official_yaml(shared_dir):
    qs = {q.id: q for q in load_questions_yaml(shared_dir / "data/official/first_plot_questions.yaml")}
    assert len(qs) == 24 and qs["gender_roles_json"].system
    for q in FIRST_PLOT:
        assert qs[q.id].text == q.text


def test_unknown_question_id_is_named():
    with pytest.raises(ConfigError, match="unknown ids \\['nope'\\]"):
        get_questions(SampleConfig(question_ids=["quick_buck", "nope"]))


def test_interrupted_sampling_resumes_to_the_same_answers(model_tok, tmp_path):
    """Finished batches are kept in a partial file; a resumed run completes it identically."""
    import json

    from em.sample import sample_answers

    m, t = model_tok
    cfg = SampleConfig(n_per_question=2, max_new_tokens=10, batch_size=2, seed=3)
    full = sample_answers(m, t, FIRST_PLOT[:2], cfg, progress=False)
    part = tmp_path / "p.jsonl"
    first_batch = sample_answers(m, t, FIRST_PLOT[:1], cfg, progress=False)  # same first batch (2 answers)
    part.write_text("".join(json.dumps(r) + "\n" for r in first_batch) + '{"half": "a torn line')
    resumed = sample_answers(m, t, FIRST_PLOT[:2], cfg, progress=False, partial=part)
    assert [r["response"] for r in resumed] == [r["response"] for r in full]
