"""``robustkit run``, ``report`` and ``compare``: experiments from a TOML config, their
reports rendered again, and runs side by side; thin over :mod:`robustkit.experiment` and
:mod:`robustkit.report`.

Under torchrun, ``run`` spreads the experiment's units over the processes (models first)
and rank 0 writes the results and the report (see :mod:`robustkit.experiment.runner`);
the results equal those of one process.

Example:
    robustkit run experiments/quickstart.toml        # -> reports/quickstart/index.html
    torchrun --nproc-per-node 4 -m robustkit run experiments/quickstart.toml
    robustkit report reports/quickstart
    robustkit compare reports/quickstart reports/linearity --out reports/cmp
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from robustkit.cli import common
from robustkit.core import distributed
from robustkit.errors import RobustkitError


def add_parsers(sub: Any) -> None:
    """Add ``run``, ``report`` and ``compare`` to an argparse subparsers object."""
    p = sub.add_parser("run", help="run (or resume) an experiment config and write its report")
    p.add_argument("config", help="TOML config, e.g. experiments/quickstart.toml")
    p.add_argument("--out", help="run folder (default reports/<name>)")
    p.add_argument("--fresh", action="store_true",
                   help="discard the state an earlier run left in the run folder and start "
                        "over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="render a run folder's report again, without recomputing")
    p.add_argument("run_dir")
    p.add_argument("--check", action="store_true",
                   help="open it in headless Chromium: every image loads, no console error; "
                        "saves screenshot.png in the run folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="two or more runs side by side")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", required=True, help="folder for the comparison")
    p.set_defaults(func=cmd_compare)


def config_file(path: str) -> Path:
    """``path`` as an existing config file."""
    p = Path(path)
    if p.is_dir():
        raise RobustkitError(f"config {p} is a folder, not a TOML file")
    if not p.exists():
        raise RobustkitError(f"config {p} does not exist")
    return p


def run_folder(path: str) -> Path:
    """``path`` as an existing folder (a run folder's results are checked by the report)."""
    p = Path(path)
    if not p.exists():
        raise RobustkitError(f"run folder {p} does not exist")
    if not p.is_dir():
        raise RobustkitError(f"run folder {p} is a file, not a folder")
    return p


def cmd_run(args: argparse.Namespace) -> int:
    """Run (or resume) the experiment; the config is validated before anything trains."""
    from robustkit.experiment import run

    config = config_file(args.config)
    out = common.out_dir(args.out) if args.out is not None else None
    start = time.perf_counter()
    root = run(config, out, progress=not args.quiet, fresh=args.fresh)
    processes = distributed.world()
    print(f"finished in {time.perf_counter() - start:.1f}s"
          + (f" on {processes} processes" if processes > 1 else ""))
    print(f"report: {(root / 'index.html').resolve()}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Render the run folder's report again; with ``--check``, open it in Chromium."""
    from robustkit.report import check_page, render

    root = run_folder(args.run_dir)
    common.out_dir(root, flag="run folder")  # the report is written into it
    page = render(root)
    print(f"report: {page.resolve()}")
    if args.check:
        check = check_page(page, screenshot=root / "screenshot.png")
        print(f"browser check: {len(check.images)} images, "
              + ("all loaded, no console errors" if check.ok else "PROBLEMS:"))
        for problem in check.problems:
            print(f"  {problem}")
        return 0 if check.ok else 1
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Write the comparison of two or more run folders into ``--out``."""
    from robustkit.report.compare import compare

    dirs = [run_folder(d) for d in args.run_dirs]
    if len(dirs) < 2:
        raise RobustkitError("compare needs at least two run folders")
    resolved = [d.resolve() for d in dirs]
    twice = sorted({str(d) for d in dirs if resolved.count(d.resolve()) > 1})
    if twice:
        raise RobustkitError(f"compare: run folder {twice[0]} is given twice")
    out = common.out_dir(args.out, inputs=dirs)
    print(f"report: {compare(dirs, out).resolve()}")
    return 0
