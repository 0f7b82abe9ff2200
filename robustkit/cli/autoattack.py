"""``robustkit autoattack``: a checkpoint's robust accuracy under AutoAttack, thin over
:func:`robustkit.evaluate.autoattack`.

It prints the number with the clean accuracy and PGD-40's beside it, which attack broke how
many examples at what cost (in PGD-40 equivalents), and every flag; ``--out`` writes all of
it with each example's record as JSON, keeping finished blocks in ``OUT.parts/`` so that a
killed run goes on where it was.

Example:
    robustkit autoattack --checkpoint m.pt --eps 0.3 --n 1000 --out aa.json
    robustkit autoattack --checkpoint m.pt --eps 1.5 --norm l2 --version fast
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from robustkit.attacks.base import threat_model
from robustkit.autoattack import VERSIONS, autoattack
from robustkit.cli import common
from robustkit.core import distributed


def add_parsers(sub: Any) -> None:
    """Add ``autoattack`` to an argparse subparsers object."""
    p = sub.add_parser("autoattack", help="robust accuracy under AutoAttack (Croce and Hein "
                                          "2020), with which attack broke each example")
    common.add_model_args(p)  # --checkpoint or --model SPEC
    p.add_argument("--eps", type=common.nonneg_float, default=common.DEFAULT_EPS,
                   help=f"radius of the threat model (default {common.DEFAULT_EPS})")
    p.add_argument("--norm", default="linf", help="linf (default) or l2")
    p.add_argument("--version", default="standard", choices=VERSIONS,
                   help="standard (APGD-CE, APGD-T, FAB-T, Square; default), rand (EoT, for "
                        "randomized models) or fast (APGD-CE, APGD-T: a quick check)")
    p.add_argument("--no-pgd", action="store_true",
                   help="skip the PGD-40 comparison (and its gap flag)")
    # Blocks of 250: a finished block is kept under OUT.parts/, and on a CPU a block of a
    # robust model takes many minutes, so a killed run loses at most one such block.
    common.add_images(p, n=1000, batch_size=250)
    p.add_argument("--seed", type=common.seed_int, default=0)
    common.add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", help="JSON file for the results and each example's record")
    p.add_argument("--fresh", action="store_true",
                   help="discard OUT.parts/ (the finished blocks of an interrupted run) and "
                        "start over")
    p.set_defaults(func=cmd_autoattack)


def cmd_autoattack(args: argparse.Namespace) -> int:
    """Run AutoAttack on ``--n`` test images; print the summary, write the records."""
    threat_model(args.norm, "--norm")
    out = common.out_file(args.out, inputs=common.model_inputs(args))
    model, dataset, x, y = common.load_for_attack(args)
    n = common.count(x, y)
    parts = common.resume_store(out, args, {"command": "autoattack", "dataset": dataset,
                                            "n": n, "eps": args.eps, "norm": args.norm,
                                            "version": args.version,
                                            "pgd": not args.no_pgd})
    start = time.perf_counter()
    result = autoattack(model, common.data_of(x, y), eps=args.eps, norm=args.norm,
                        version=args.version, seed=args.seed, batch_size=args.batch_size,
                        compare_pgd=not args.no_pgd, progress=not args.quiet, resume=parts)
    seconds = time.perf_counter() - start
    print(f"{n} {dataset} test images ({seconds:.1f}s)")
    print(result.summary())
    common.write_out(out, {**common.model_record(args), "dataset": dataset,
                           "seconds": seconds, **result.to_dict()})
    if parts is not None and distributed.is_main():
        parts.clear()
    return 0
