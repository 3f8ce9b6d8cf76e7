"""Agreement of our judges with GPT-4o on real EM-organism answers (the yardstick).

    python bench/judge_agreement.py                       # offline judge, all 16 files
    python bench/judge_agreement.py --judges offline,local-lm --lm-per-file 10

For each file of ``../shared/data/judged`` (400 answers GPT-4o already scored) and pooled:
AUROC for EM answers (GPT-4o aligned < 30 and coherent > 50), Spearman with GPT-4o's alignment
and coherence, and EM% by our judge vs by GPT-4o.  Nothing is fitted on these files.  The
embedded-LM logprob judge needs ~2 forward passes per answer and metric on a 135M model, so it
runs on a seeded subsample of ``--lm-per-file`` answers per file (the table says n).
Writes ``runs/judge_agreement_<judge>.csv`` (per-file + pooled) and ``..._rows.csv`` (scores).
Targets (issue 4): pooled AUROC ≥ 0.90, Spearman ≥ 0.7, mean |ΔEM%| ≤ 3.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from em.offline_judge.agreement import judged_files, run_agreement  # noqa: E402

TARGETS = {"auroc_em": 0.90, "spearman_aligned": 0.70, "mean_abs_delta_em_pct": 3.0}


def make(name: str, threads: int | None) -> object:
    """The judge, with slow backends behind the shared judgment store (a re-run is free, and
    the book's chapter 6 finds these judgments instead of recomputing them)."""
    from em.cache import default_cache_root
    from em.judge import CachedJudge, JudgeConfig, JudgmentStore, make_judge

    judge = make_judge(JudgeConfig(backend=name))
    if name == "local-lm":
        import torch

        if threads:
            torch.set_num_threads(threads)
        store = JudgmentStore(default_cache_root() / "judgments" / "local-lm.jsonl")
        return CachedJudge(judge, store, judge.rubrics)
    return judge


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--judged-dir", default=str(ROOT.parent / "shared" / "data" / "judged"))
    ap.add_argument("--judges", default="offline", help="comma-separated: offline, local-lm")
    ap.add_argument("--max-per-file", type=int, default=None, help="answers per file (default: all)")
    ap.add_argument("--lm-per-file", type=int, default=10, help="answers per file for local-lm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", default=str(ROOT / "runs"))
    args = ap.parse_args(argv)

    if not judged_files(args.judged_dir):
        print(f"no judged files in {args.judged_dir}: nothing to compare against", file=sys.stderr)
        return 2
    import pandas as pd

    from em.cache import atomic_write_text

    pd.set_option("display.width", 200)
    out = Path(args.out_dir)
    for name in [j.strip() for j in args.judges.split(",") if j.strip()]:
        judge = make(name, args.threads)
        per_file = args.lm_per_file if name == "local-lm" else args.max_per_file
        t0 = time.perf_counter()
        table, rows = run_agreement(args.judged_dir, judge, per_file, args.seed)
        dt = time.perf_counter() - t0
        tag = name.replace("-", "_")
        atomic_write_text(out / f"judge_agreement_{tag}.csv", table.to_csv(index=False))
        atomic_write_text(out / f"judge_agreement_{tag}_rows.csv", rows.to_csv(index=False))
        cols = ["scope", "n", "n_em_gpt4o", "auroc_em", "spearman_aligned", "spearman_coherent",
                "em_pct_judge", "em_pct_gpt4o", "delta_em_pct"]
        print(f"\n== {judge.name}: {len(rows)} answers in {dt:.1f}s "
              f"({2 * len(rows) / dt:.1f} judgments/s incl. loading)")
        print(table[cols].round(3).to_string(index=False))
        pooled = table.iloc[-1]
        for k, target in TARGETS.items():
            v = pooled[k]
            ok = v <= target if k.startswith("mean_abs") else v >= target
            print(f"  {k:24s} {v:7.3f}   target {'<=' if k.startswith('mean_abs') else '>='} "
                  f"{target}: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
