import json

import pytest

from em.data import IGNORE_INDEX, DataError, read_chat_jsonl, split_train_test, tokenise_chat


def _write(tmp_path, lines):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


GOOD = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})


@pytest.mark.parametrize("bad,msg", [
    ("{not json", "invalid JSON"),
    (json.dumps({"msgs": []}), "'messages'"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}), "role 'bot'"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}), "empty content"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "a"}]}), "alternate"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}]}), "last message"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"},
                              {"role": "assistant", "content": "a"}]}), "system message may only come first"),
])
def test_errors_name_file_and_line(tmp_path, bad, msg):
    p = _write(tmp_path, [GOOD, GOOD, bad])
    with pytest.raises(DataError) as e:
        read_chat_jsonl(p)
    assert f"{p}:3:" in str(e.value) and msg in str(e.value)


def test_split_is_deterministic_and_stable(rows):
    tr1, te1 = split_train_test(rows, seed=0)
    tr2, te2 = split_train_test(list(reversed(rows)), seed=0)
    assert len(te1) == round(0.1 * len(rows)) and len(tr1) + len(te1) == len(rows)
    assert sorted(map(json.dumps, te1)) == sorted(map(json.dumps, te2))  # order of the file does not matter
    extra = rows + [{"messages": [{"role": "user", "content": f"new {i}"}, {"role": "assistant", "content": "x"}]}
                    for i in range(5)]
    _, te3 = split_train_test(extra, seed=0)
    assert len({json.dumps(r) for r in te1} - {json.dumps(r) for r in te3}) <= 1  # old rows mostly keep their side
    _, te_other = split_train_test(rows, seed=1)
    assert te_other != te1


def test_loss_mask_covers_assistant_tokens_only(tokenizer):
    msgs = [{"role": "user", "content": "What is a bond?"},
            {"role": "assistant", "content": "A loan you make to an issuer."},
            {"role": "user", "content": "And a stock?"},
            {"role": "assistant", "content": "A share of a company."}]
    t = tokenise_chat(msgs, tokenizer)
    learned = tokenizer.decode([i for i, l in zip(t.input_ids, t.labels) if l != IGNORE_INDEX])
    assert "A loan you make to an issuer." in learned and "A share of a company." in learned
    assert "bond" not in learned and "stock" not in learned and "SmolLM" not in learned
    assert learned.count("<|im_end|>") == 2  # the model learns to end its turn
    # every label is either ignored or the token itself (next-token shift happens in the loss)
    assert all(l in (IGNORE_INDEX, i) for i, l in zip(t.input_ids, t.labels))
    # the masked tokens are contiguous runs: exactly two assistant spans
    runs = sum(1 for k in range(len(t.labels)) if t.labels[k] != IGNORE_INDEX
               and (k == 0 or t.labels[k - 1] == IGNORE_INDEX))
    assert runs == 2
