"""Sampling throughput: ``em.sample`` vs the official style, side by side in one run.

Official style (the authors' evaluation code): for each question, ``model.generate(...,
num_return_sequences=n)``, so every batch runs until its longest answer ends.  Ours: prompts of all
questions share batches and each sequence leaves the batch (and the KV cache) when it ends.  Same
model, questions, n, temperature 1, top-p 1 and ``max_new_tokens`` on both sides; answers/s and
generated tokens/s are printed with their ratio.

    python bench/sample_speed.py --n 16 --max-new-tokens 200
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded:smollm2-135m")
    p.add_argument("--adapter", default=None, help="optional PEFT adapter (a fine-tuned organism)")
    p.add_argument("--n", type=int, default=16, help="answers per question")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="runs/bench_sample_speed.json")
    args = p.parse_args()

    from em.config import SampleConfig
    from em.pipeline import load_for_sampling
    from em.sample import FIRST_PLOT, chat_prompt, generate_hf, sample_answers

    model, tok = load_for_sampling(args.model, args.adapter)
    tok.padding_side = "left"
    qs = FIRST_PLOT[: args.questions]
    torch.manual_seed(0)

    t0 = time.perf_counter()
    official = []
    for q in qs:
        official += generate_hf(model, tok, [chat_prompt(tok, q)], args.max_new_tokens, 1.0, 1.0,
                                num_return_sequences=args.n)
    t_off = time.perf_counter() - t0

    cfg = SampleConfig(n_per_question=args.n, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=0)
    t0 = time.perf_counter()
    ours = sample_answers(model, tok, qs, cfg, progress=False)
    t_ours = time.perf_counter() - t0

    res = {
        "official (generate, n per question)": {"answers": len(official), "seconds": t_off,
                                                "tokens": sum(len(ids) for ids, _ in official)},
        "em.sample (shared, shrinking batches)": {"answers": len(ours), "seconds": t_ours,
                                                  "tokens": sum(r["n_tokens"] for r in ours)},
    }
    print(f"{'':40s} {'answers':>7s} {'s':>7s} {'answers/s':>9s} {'tokens/s':>8s} {'mean len':>8s}")
    for name, r in res.items():
        r["answers_per_s"] = r["answers"] / r["seconds"]
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        print(f"{name:40s} {r['answers']:7d} {r['seconds']:7.1f} {r['answers_per_s']:9.2f} "
              f"{r['tokens_per_s']:8.1f} {r['tokens'] / r['answers']:8.1f}")
    a, b = res["em.sample (shared, shrinking batches)"], res["official (generate, n per question)"]
    ratio = a["answers_per_s"] / b["answers_per_s"]
    print(f"ratio answers/s em/official: {ratio:.2f}x (target >= 1.5x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"ratio": ratio, **res}, indent=2))


if __name__ == "__main__":
    main()
