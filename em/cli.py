"""``em`` command line: ``em train | sample | judge | report | run`` on a run YAML, plus
``em data generate`` and ``em judge-file``.

Every stage reads the same run YAML (see ``parameters/*/run.yaml``) and the shared cache, so
``em train cfg.yaml && em sample cfg.yaml && em judge cfg.yaml && em report cfg.yaml`` and
``em run cfg.yaml`` do the same work once.  On several GPUs::

    accelerate launch -m em.cli train cfg.yaml
"""
from __future__ import annotations

import argparse
import sys

import yaml


def _parse_set(items: list[str]) -> dict:
    """``--set train.lr=1e-4`` overrides (YAML-typed values) merged into the config."""
    out: dict = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"--set {it!r}: expected key.path=value")
        k, v = it.split("=", 1)
        d = out
        parts = k.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = yaml.safe_load(v)
    return out


def _load(args: argparse.Namespace):
    from .config import load_run_config

    return load_run_config(args.config, _parse_set(args.set))


def cmd_train(args: argparse.Namespace) -> int:
    from .cache import Cache
    from .pipeline import train_stage

    cfg = _load(args)
    cache = Cache(cfg.cache_dir)
    for seed in cfg.seeds:
        path, key = train_stage(cfg, seed, cache)
        print(f"seed {seed}: adapter {path}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .cache import Cache
    from .pipeline import answers_stage

    cfg = _load(args)
    df = answers_stage(cfg, Cache(cfg.cache_dir))
    print(f"{len(df)} answers")
    if args.out:
        from .pipeline import write_answers

        write_answers(df, args.out)
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from .cache import Cache
    from .pipeline import run, write_answers

    cfg = _load(args)
    df = run(cfg, Cache(cfg.cache_dir))
    if args.out:
        write_answers(df, args.out)
    print(f"{len(df)} answers judged")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import numpy as np

    from .cache import Cache
    from .metrics import format_table, summarise
    from .pipeline import run, write_answers

    cfg = _load(args)
    cache = Cache(cfg.cache_dir)
    df = run(cfg, cache)
    if args.out:
        write_answers(df, args.out)
    table = format_table(summarise(df, by=["model_label"], per_question=args.per_question))
    print(table.to_string(index=False))
    if args.copies is not None:
        from .metrics import verbatim_copies
        from .pipeline import load_training_rows

        train_answers = [r["messages"][-1]["content"] for r in load_training_rows(cfg.data)[0]]
        for label, g in df.groupby("model_label", sort=False):
            sims = verbatim_copies(g["response"].tolist(), train_answers, args.copies)
            print(f"{label}: {(sims >= args.copies).sum()} of {len(g)} answers copy a training answer "
                  f"(similarity >= {args.copies}); median best similarity {float(np.median(sims)):.2f}")
    print(f"cache: {cache.hits} hits, {cache.misses} computed")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":
        from .datasets.cli import main as data_main

        return data_main(argv[1:])
    if argv and argv[0] == "judge-file":
        from .judge import judge_file_main

        return judge_file_main(argv[1:])
    p = argparse.ArgumentParser(prog="em", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn, h in [("train", cmd_train, "fine-tune every seed (resumes)"),
                        ("sample", cmd_sample, "sample the evaluation questions"),
                        ("judge", cmd_judge, "judge the answers"),
                        ("report", cmd_report, "EM%/coherent% table (runs whatever is missing)"),
                        ("run", cmd_report, "alias of report")]:
        sp = sub.add_parser(name, help=h)
        sp.add_argument("config", help="run YAML (e.g. parameters/smoke/run.yaml)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. --set train.lr=1e-4")
        sp.add_argument("--out", help="write the per-answer CSV here")
        sp.add_argument("--per-question", action="store_true")
        sp.add_argument("--copies", type=float, nargs="?", const=0.9, default=None, metavar="SIM",
                        help="report: also count answers that copy a training answer (similarity >= SIM, 0.9)")
        sp.set_defaults(fn=fn)
    p.add_argument_group("other commands", "em data generate ... | em judge-file ...")
    args = p.parse_args(argv)
    from .config import ConfigError
    from .data import DataError

    try:
        return args.fn(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
