"""Cost of recording LoRA A/B every step (phase analysis) vs not recording, side by side.

Issue target: recording adds <= 5% to training time.  Same rank-1 run twice (middle-layer
``down_proj``, the phase-transition organism), alternating order to cancel drift of the machine.

    python bench/record_overhead.py --steps 30
"""
from __future__ import annotations

import argparse
import tempfile

from em.config import LoraSpec, TrainConfig
from em.data import read_chat_jsonl, resolve_dataset, subsample
from em.train import read_log, train


def one(rows, steps: int, record: int) -> float:
    cfg = TrainConfig(lr=5e-4, batch_size=4, grad_accum=1, max_steps=steps + 1, warmup_steps=1, save_every=10_000,
                      record_adapters_every=record,
                      lora=LoraSpec(r=1, alpha=64, target_modules=["down_proj"], layers_spec="middle"))
    with tempfile.TemporaryDirectory() as d:
        train("embedded:smollm2-135m", rows, cfg, d, max_length=256, progress=False)
        log = read_log(d)
    return log[-1]["elapsed_s"] - log[0]["elapsed_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    rows = subsample(read_chat_jsonl(resolve_dataset("generated:finance:misaligned:2000:0")), 400, seed=0)
    t = {0: [], 1: []}
    for r in range(args.repeats):
        for rec in ((0, 1) if r % 2 == 0 else (1, 0)):
            t[rec].append(one(rows, args.steps, rec))
    base, rec = sum(t[0]) / len(t[0]), sum(t[1]) / len(t[1])
    print(f"{'':22s} {'s per step':>10s}")
    print(f"{'no recording':22s} {base / args.steps:10.3f}")
    print(f"{'record A/B every step':22s} {rec / args.steps:10.3f}")
    print(f"overhead: {100 * (rec / base - 1):+.1f}% (target <= 5%)")


if __name__ == "__main__":
    main()
