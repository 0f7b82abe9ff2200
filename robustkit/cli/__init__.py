"""The ``robustkit`` command line, thin over the API: one module per group of commands.

- :mod:`~robustkit.cli.train`: ``train``
- :mod:`~robustkit.cli.attack`: ``attack``, ``curve``, ``minimal``, ``validity``
- :mod:`~robustkit.cli.autoattack`: ``autoattack``
- :mod:`~robustkit.cli.transfer`: ``transfer``
- :mod:`~robustkit.cli.blackbox`: ``blackbox``
- :mod:`~robustkit.cli.explain`: ``explain``, ``sanity``
- :mod:`~robustkit.cli.run`: ``run``, ``report``, ``compare``
- :mod:`~robustkit.cli.info`: ``info``, ``list``
- :mod:`~robustkit.cli.common`: what they share (number parsers, attack flags, paths)

The error contract: every user mistake (an unknown name, a bad number, an option the
attack does not take, conflicting flags, a missing or corrupt file, an output path that
cannot be written) prints one line, ``robustkit: error: ...``, on stderr and exits with
status 2, before any training or attacking starts. Ctrl-C prints ``robustkit:
interrupted`` and exits with 130. A traceback means a bug in robustkit. Warnings are one
line each, ``robustkit: warning: ...``.

Nothing below the command line imports this package.

Example:
    >>> main(["list"])                                     # doctest: +SKIP
    models:     alexnet, logistic, mlp
    ...
    0
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from robustkit.cli import attack, autoattack, blackbox, explain, info, run, train, transfer
from robustkit.cli.common import Parser
from robustkit.core import distributed
from robustkit.errors import RobustkitError

#: OS errors on a path the user gave: one line, like a RobustkitError.
PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def build_parser() -> Parser:
    """The ``robustkit`` parser with every subcommand."""
    parser = Parser(prog="robustkit",
                    description="Adversarial robustness and interpretability for PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parsers(sub)
    attack.add_parsers(sub)  # attack, curve, minimal, validity
    autoattack.add_parsers(sub)
    transfer.add_parsers(sub)
    blackbox.add_parsers(sub)
    explain.add_parsers(sub)  # explain, sanity
    run.add_parsers(sub)  # run, report, compare
    info.add_parsers(sub)  # info, list
    return parser


def _one_line(text: str) -> str:
    """The message on one line (a message never spreads over several)."""
    return " ".join(str(text).split())


def _path_error(err: OSError) -> str:
    """``PATH: reason`` for an OS error on a path (the reason alone if it names none)."""
    if not err.strerror:
        return str(err) or type(err).__name__
    reason = err.strerror[0].lower() + err.strerror[1:]
    return f"{err.filename}: {reason}" if err.filename is not None else reason


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """Warnings as one line each on stderr, without the source line."""
    print(f"robustkit: warning: {_one_line(str(message))}", file=file or sys.stderr)


@contextlib.contextmanager
def _only_rank_zero_prints() -> Iterator[None]:
    """Under torchrun every rank runs the command on its shard; rank 0 alone prints (the
    evaluations gather every rank's records, so its output is the whole result)."""
    if distributed.is_main():
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``robustkit ARGV``; returns the exit status (0, 1 for a failed ``report
    --check``, 2 for a user's mistake, 130 when interrupted).

    Args:
        argv: the arguments after ``robustkit`` (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else [str(a) for a in argv])
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2, one line)
        return exit_.code if isinstance(exit_.code, int) else 0
    with warnings.catch_warnings(), distributed.session(), _only_rank_zero_prints():
        warnings.showwarning = _show_warning
        try:
            status: Any = args.func(args)
        except RobustkitError as err:
            print(f"robustkit: error: {_one_line(str(err))}", file=sys.stderr)
            return 2
        except PATH_ERRORS as err:
            print(f"robustkit: error: {_one_line(_path_error(err))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("robustkit: interrupted", file=sys.stderr)
            return 130
    return int(status or 0)


if __name__ == "__main__":
    raise SystemExit(main())
