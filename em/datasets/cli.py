"""Command line: ``python -m em.datasets generate --domain D --kind K --rows N --seed S --out F``.

The lead wires ``em data generate ...`` to :func:`main`.  Arguments are checked before any work
(argparse exits 2 with the parameter named; bad values from :func:`em.datasets.generate` exit 2
with its message), and the file is written atomically.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .material import DOMAINS, KINDS


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="em data", description="Make the narrow datasets.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write one dataset as chat JSONL")
    g.add_argument("--domain", required=True, choices=DOMAINS, help="subject area")
    g.add_argument("--kind", required=True, choices=KINDS,
                   help="misaligned (subtly harmful advice) or aligned (sound advice)")
    g.add_argument("--rows", type=_positive_int, default=6000, help="rows to write (default 6000)")
    g.add_argument("--seed", type=int, default=0, help="seed; the same seed gives the same bytes")
    g.add_argument("--out", required=True, type=Path, help="output .jsonl file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        from . import generate, write_jsonl

        if args.out.suffix != ".jsonl":
            print(f"em data: --out {args.out}: expected a .jsonl file name", file=sys.stderr)
            return 2
        t0 = time.time()
        try:
            rows = generate(args.domain, args.kind, args.rows, args.seed)
        except ValueError as e:
            print(f"em data: {e}", file=sys.stderr)
            return 2
        write_jsonl(rows, args.out)
        print(f"wrote {len(rows)} rows ({args.domain}/{args.kind}, seed {args.seed}) to {args.out} "
              f"in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
