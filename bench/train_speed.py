"""Training throughput: ``em.train`` vs TRL's ``SFTTrainer``, side by side in one run.

Same model (the embedded SmolLM2-135M), same rows, same rsLoRA config, same batch geometry, loss on
assistant tokens only in both (TRL: prompt–completion rows with ``completion_only_loss``).  Each
side trains ``--steps`` optimizer steps after one warm-up step; we report trained (non-pad) tokens
per second, the ratio, and achieved FLOP/s against a measured fp32 matmul peak of this machine.

    python bench/train_speed.py --rows ../shared/data/official/risky_financial_advice.jsonl
    python bench/train_speed.py            # uses a generated finance set (no ../shared needed)

FLOPs are the usual estimate for a decoder: 2·N per token forward and 2·N per token for the
backward pass through activations (LoRA trains so few weights that their gradients are
negligible), with N the parameter count — so 4·N·tokens for LoRA.  The peak is measured in the
precision of the run (``--precision``): fp32, or bf16 where the CPU has AVX512-BF16/AMX.  The LM head is counted for every
position on both sides, so our positions-only head shows up as higher *effective* FLOP/s.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def matmul_peak(n: int = 1024, seconds: float = 3.0, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a square matmul in ``dtype``, the best of several repeats (a practical peak)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def load_rows(path: str | None, n: int) -> list[dict]:
    from em.data import read_chat_jsonl, resolve_dataset, subsample

    src = path or "generated:finance:misaligned:2000:0"
    return subsample(read_chat_jsonl(resolve_dataset(src)), n, seed=0)


def run_em(rows, args) -> dict:
    from em.config import LoraSpec, TrainConfig
    from em.train import read_log, train

    cfg = TrainConfig(lr=1e-4, batch_size=args.batch, grad_accum=args.accum, max_steps=args.steps + 1,
                      warmup_steps=1, save_every=10_000, lora=LoraSpec(r=args.rank, alpha=2 * args.rank),
                      precision=args.precision)
    with tempfile.TemporaryDirectory() as d:
        train("embedded:smollm2-135m", rows, cfg, d, max_length=args.max_length, progress=False)
        log = read_log(d)
    # exclude the first (warm-up) step; elapsed_s is cumulative from the first step
    secs = log[-1]["elapsed_s"] - log[0]["elapsed_s"]
    return {"seconds": secs, "steps": len(log) - 1}


def run_trl(rows, args, tokens_box: list) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from em.models import load_model

    model, tok = load_model()
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as d:
        cfg = SFTConfig(output_dir=d, per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.accum,
                        max_steps=args.steps + 1, learning_rate=1e-4, warmup_steps=1, lr_scheduler_type="linear",
                        weight_decay=0.01, max_length=args.max_length, completion_only_loss=True, packing=False,
                        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                        dataloader_num_workers=0, disable_tqdm=True, bf16=args.precision == "bf16")
        lcfg = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, use_rslora=True, bias="none",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                          task_type="CAUSAL_LM")
        tr = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lcfg,
                        callbacks=[Timer()])
        tr.train()
    return {"seconds": times[-1] - times[0], "steps": len(times) - 1}


def trained_tokens(rows, args) -> tuple[int, int]:
    """(non-pad tokens, assistant tokens) the steps after the first see — same plan for both sides.

    Both trainers see ``batch*accum`` examples per step; we count tokens of the examples of steps
    2..N of em's plan (TRL shuffles differently, so its token count is estimated by the mean).
    """
    from em.config import TrainConfig
    from em.data import tokenise_rows
    from em.models import load_tokenizer
    from em.train import plan_batches

    data = tokenise_rows(rows, load_tokenizer(), args.max_length)
    cfg = TrainConfig(batch_size=args.batch, grad_accum=args.accum, max_steps=args.steps + 1)
    plan = plan_batches([len(t.input_ids) for t in data], cfg)
    idx = [i for step in plan[1:] for mb in step for i in mb]
    mean_len = sum(len(t.input_ids) for t in data) / len(data)
    return sum(len(data[i].input_ids) for i in idx), int(mean_len * len(idx))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", help="chat JSONL (default: a generated finance set)")
    p.add_argument("--n-rows", type=int, default=400)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="both sides: fp32, or bf16 autocast (em: precision=bf16; TRL: bf16=True)")
    p.add_argument("--out", default="runs/bench_train_speed.json")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = load_rows(args.rows, args.n_rows)
    tok_em, tok_trl = trained_tokens(rows, args)
    peak = matmul_peak(dtype=torch.bfloat16 if args.precision == "bf16" else torch.float32)
    print(f"matmul peak ({args.precision}, 1024^3): {peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} "
          f"threads; precision of both runs: {args.precision}")
    trl = run_trl(rows, args, [])
    em = run_em(rows, args)
    from em.models import load_model

    n_params = sum(p.numel() for p in load_model()[0].parameters())
    res = {}
    for name, r, toks in [("trl SFTTrainer", trl, tok_trl), ("em.train", em, tok_em)]:
        tps = toks / r["seconds"]
        flops = 4 * n_params * tps
        res[name] = {"tokens_per_s": tps, "seconds": r["seconds"], "steps": r["steps"], "tokens": toks,
                     "gflops": flops / 1e9, "fraction_of_peak": flops / peak}
    print(f"{'':16s} {'steps':>5s} {'tokens':>7s} {'s':>7s} {'tokens/s':>9s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for name, r in res.items():
        print(f"{name:16s} {r['steps']:5d} {r['tokens']:7d} {r['seconds']:7.1f} {r['tokens_per_s']:9.1f} "
              f"{r['gflops']:8.1f} {100 * r['fraction_of_peak']:7.1f}%")
    ratio = res["em.train"]["tokens_per_s"] / res["trl SFTTrainer"]["tokens_per_s"]
    print(f"ratio em/trl tokens/s: {ratio:.2f}x (target >= 1.5x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"peak_gflops": peak / 1e9, "ratio": ratio, **res}, indent=2))


if __name__ == "__main__":
    main()
