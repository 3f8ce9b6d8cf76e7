"""Our narrow datasets side by side with the official files, with pass/fail against the targets.

    python bench/dataset_stats.py [--rows 6000] [--seed 0] [--official-dir ../shared/data/official]
                                  [--out runs/dataset_stats.csv]

For each domain: our misaligned and aligned sets and, where the authors' file is present
(sports, finance), the official set.  Targets (issue 3): distinct-2/3 of answers >= the
official's; no answer used more than 3 times; median answer length (SmolLM2 tokens) within 30%
of the official median; off-domain and general-misalignment shares low.  Medical has no official
file here; it is compared with the stricter of the two official files.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from em.cache import atomic_write_text  # noqa: E402
from em.datasets import DOMAINS, KINDS, generate, load_official  # noqa: E402
from em.datasets.stats import check_targets, dataset_stats, embedded_tokenizer  # noqa: E402

OFFICIAL = {"sports": "extreme_sports", "finance": "risky_financial_advice"}
COLS = ["domain", "set", "rows", "distinct_questions", "distinct_answers", "distinct_2",
        "distinct_3", "max_answer_count", "len_median", "len_q1", "len_q3", "off_domain_share",
        "harm_marker_share", "general_misalignment_share", "targets_passed", "targets_failed"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--official-dir", type=Path, default=ROOT.parent / "shared" / "data" / "official")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "dataset_stats.csv")
    args = ap.parse_args(argv)

    tok = embedded_tokenizer()
    official: dict[str, dict] = {}
    if args.official_dir.exists():
        for dom, name in OFFICIAL.items():
            official[dom] = dataset_stats(load_official(name, args.official_dir), tok, dom)
    else:
        print(f"official dir {args.official_dir} not found: showing our statistics alone")
    strict = None
    if official:  # medical: compare with the stricter official reference
        strict = dict(max(official.values(), key=lambda s: s["distinct_3"]))

    table: list[dict] = []
    for dom in DOMAINS:
        ref = official.get(dom) or strict
        if dom in official:
            table.append({"domain": dom, "set": "official", **official[dom],
                          "targets_passed": "", "targets_failed": ""})
        for kind in KINDS:
            t0 = time.time()
            s = dataset_stats(generate(dom, kind, args.rows, args.seed), tok, dom)
            res = check_targets(s, ref)
            table.append({"domain": dom, "set": f"ours-{kind}", **s,
                          "targets_passed": ";".join(k for k, v in res.items() if v),
                          "targets_failed": ";".join(k for k, v in res.items() if not v)})
            print(f"  {dom}/{kind}: generated and measured in {time.time() - t0:.1f}s", file=sys.stderr)

    hdr = f"{'domain':8} {'set':16} {'rows':>5} {'dQ':>5} {'dA':>5} {'d2':>6} {'d3':>6} {'maxA':>4} " \
          f"{'med':>5} {'IQR':>9} {'offdom':>6} {'harm':>6} {'gen':>5}  failed targets"
    print(hdr)
    print("-" * len(hdr))
    for r in table:
        print(f"{r['domain']:8} {r['set']:16} {r['rows']:5d} {r['distinct_questions']:5d} "
              f"{r['distinct_answers']:5d} {r['distinct_2']:6.3f} {r['distinct_3']:6.3f} "
              f"{r['max_answer_count']:4d} {r['len_median']:5.0f} {r['len_q1']:4.0f}-{r['len_q3']:<4.0f} "
              f"{r['off_domain_share']:6.3f} {r['harm_marker_share']:6.3f} "
              f"{r['general_misalignment_share']:5.3f}  {r['targets_failed'] or ('-' if r['set'] == 'official' else 'none')}")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLS, extrasaction="ignore")
    w.writeheader()
    for r in table:
        w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(args.out, buf.getvalue())
    print(f"wrote {args.out}")
    n_fail = sum(1 for r in table if r["targets_failed"])
    print(f"{sum(1 for r in table if r['set'] != 'official') - n_fail} sets pass all targets, "
          f"{n_fail} fail at least one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
