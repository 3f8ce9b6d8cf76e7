"""Judge throughput on this machine: offline judge answers/s; local-LM judge passes and answers/s.

    python bench/judge_speed.py [--n 2000] [--lm-n 16] [--threads 2]

The offline judge is timed on ``--n`` answers (the judged files' answers when ``../shared`` is
there, else the authored reference answers, repeated) for both metrics, after a warm-up call
that builds/loads its tables.  The local-LM logprob judge (embedded SmolLM2-135M) is timed on
``--lm-n`` answers for one metric; its forward-pass counter gives passes per answer.  Target
(issue 4): offline ≥ 200 answers/s on 2 cores.  The load average is printed because the number
depends on what else the machine is doing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sample_answers(n: int) -> tuple[list[str], list[str]]:
    from em.offline_judge import load_reference
    from em.offline_judge.agreement import judged_files, read_judged

    files = judged_files(ROOT.parent / "shared" / "data" / "judged")
    if files:
        import pandas as pd

        df = pd.concat([read_judged(f) for f in files], ignore_index=True)
        qs, ans = df["question"].tolist(), df["response"].tolist()
    else:
        ref = load_reference()
        qs, ans = [r.question for r in ref], [r.answer for r in ref]
    reps = n // len(ans) + 1
    return (qs * reps)[:n], (ans * reps)[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--lm-n", type=int, default=16, help="answers for the local-LM judge (0 = skip)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from em.offline_judge import OfflineJudge

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; torch threads {args.threads}")
    qs, ans = sample_answers(args.n)
    judge = OfflineJudge()
    judge.score(qs[:8], ans[:8], "aligned")  # warm-up: fit + tables
    t0 = time.perf_counter()
    for m in ("aligned", "coherent"):
        judge.score(qs, ans, m)
    dt = time.perf_counter() - t0
    rate = len(ans) / dt
    print(f"offline judge ({judge.name}): {len(ans)} answers x 2 metrics in {dt:.2f}s = "
          f"{rate:.0f} answers/s (target >= 200: {'met' if rate >= 200 else 'NOT met'})")

    if args.lm_n > 0:
        from em.judge import JudgeConfig, LocalLMJudge

        lm = LocalLMJudge(cfg=JudgeConfig(backend="local-lm", batch_size=8))
        lm.score(qs[:2], ans[:2], "aligned")  # warm-up
        lm.forward_passes = 0
        t0 = time.perf_counter()
        lm.score(qs[2:2 + args.lm_n], ans[2:2 + args.lm_n], "aligned")
        dt = time.perf_counter() - t0
        print(f"local-LM judge ({lm.name}): {args.lm_n} answers, 1 metric in {dt:.1f}s = "
              f"{args.lm_n / dt:.2f} answers/s per metric; forward passes per answer and metric: "
              f"{lm.forward_passes / args.lm_n:.1f} (1 over the prompt + 1 cached 2-token step "
              f"over 9 digit continuations)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
