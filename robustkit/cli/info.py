"""``robustkit info`` and ``robustkit list``: a checkpoint's metadata, and the registered
names.

Example:
    robustkit info m.pt
    robustkit list
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from robustkit import attacks, data, models
from robustkit.cli import common
from robustkit.explain.methods import names as explainer_names


def add_parsers(sub: Any) -> None:
    """Add ``info`` and ``list`` to an argparse subparsers object."""
    p = sub.add_parser("info", help="print a checkpoint's metadata")
    p.add_argument("path", help="a checkpoint written by robustkit")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("list", help="list registered models, datasets, attacks and explainers")
    p.set_defaults(func=cmd_list)


def cmd_info(args: argparse.Namespace) -> int:
    """The checkpoint's name, shapes, options and metadata as JSON; the history's length."""
    payload = models.read(common.checkpoint_file(args.path, "checkpoint"))
    meta = dict(payload["metadata"])
    history = meta.pop("history", None)
    summary = {k: payload[k] for k in ("name", "in_shape", "num_classes", "options")}
    print(json.dumps({**summary, "metadata": meta}, indent=2, default=str))
    if history:
        print(f"history: {len(history)} epochs recorded")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """The registered models, datasets, attacks and explainers."""
    print("models:     " + ", ".join(models.names()))
    print("datasets:   " + ", ".join(data.names()))
    print("attacks:    " + ", ".join(attacks.names()))
    print("explainers: " + ", ".join(explainer_names()))
    return 0
