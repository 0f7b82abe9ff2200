"""``robustkit transfer``: the transfer matrix of checkpoints as a table, JSON with
per-example records, and a heatmap beside the JSON; thin over
:func:`robustkit.transfer.transfer_matrix`.

Example:
    robustkit transfer --sources mlp.pt m.pt --targets mlp.pt m.pt --eps 0.1,0.2 --out t.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from robustkit.attacks.binding import check_options
from robustkit.cli import common
from robustkit.core import distributed, pick_device, sha256
from robustkit.errors import RobustkitError
from robustkit.transfer import transfer_matrix


def add_parsers(sub: Any) -> None:
    """Add ``transfer`` to an argparse subparsers object."""
    p = sub.add_parser("transfer", help="accuracy of every target on every source's adversarial "
                                        "examples (the transfer matrix) and its heatmap")
    p.add_argument("--sources", nargs="+", required=True, metavar="CKPT",
                   help="checkpoints to craft adversarial examples on")
    p.add_argument("--targets", nargs="+", required=True, metavar="CKPT",
                   help="checkpoints to score them on (a source listed here gives white-box cells)")
    common.add_attack_args(p, checkpoint=False)
    p.add_argument("--eps", type=common.eps_list, default=[0.1, 0.2],
                   help="comma-separated radii (default 0.1,0.2)")
    p.add_argument("--out", help="JSON file for the matrices; the heatmap goes beside it (.png)")
    p.add_argument("--fresh", action="store_true",
                   help="discard OUT.parts/ (the finished blocks of an interrupted run) and "
                        "start over")
    p.set_defaults(func=cmd_transfer)


def _outputs(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """The JSON file and the heatmap beside it, both checked before any work."""
    inputs = [*args.sources, *args.targets]
    out = common.out_file(args.out, inputs=inputs)
    if out is None:
        return None, None
    png = out.with_suffix(".png")
    if png == out:
        raise RobustkitError(f"--out {out}: the heatmap goes beside the JSON as {png}; give "
                             "the JSON file another suffix (e.g. .json)")
    return out, common.out_file(png, inputs=inputs, flag="--out (its heatmap)")


def cmd_transfer(args: argparse.Namespace) -> int:
    """Attack each source once per eps, score every target on its examples, print the
    matrices (``*`` marks white-box cells) and write the JSON and the heatmap."""
    options = common.user_options(args)
    attack = check_options(args.attack, options, grid=True, what="transfer")
    out, png = _outputs(args)
    for path in dict.fromkeys([*args.sources, *args.targets]):
        common.checkpoint_file(path, "--sources/--targets")
    common.check_dataset(args.dataset)
    device = pick_device(args.device)
    names = common.checkpoint_names([*args.sources, *args.targets])
    loaded = {names[p]: common.load_model(p, device) for p in dict.fromkeys(names)}
    sources = {names[p]: loaded[names[p]] for p in args.sources}
    targets = {names[p]: loaded[names[p]] for p in args.targets}
    dataset, x, y = common.images_for(args, next(iter(sources.values())))
    start = time.perf_counter()
    parts = common.resume_store(out, args, {
        "command": "transfer", "dataset": dataset, "n": common.count(x, y), "attack": args.attack,
        "options": options, "eps": list(args.eps), "sources": args.sources,
        "targets": args.targets,
        "files": {p: sha256(Path(p).read_bytes()) for p in dict.fromkeys(names)}})
    results = transfer_matrix(sources, targets, x, y, attack=args.attack, eps=list(args.eps),
                              batch_size=args.batch_size, progress=not args.quiet,
                              seed=args.seed, resume=parts, **options)
    seconds = time.perf_counter() - start
    options = next(iter(results.values())).options  # what the attack received
    print(f"{attack.name} {json.dumps(options)} on {common.count(x, y)} {dataset} test images "
          f"({seconds:.1f}s)")
    width = max(8, *(len(t) for t in targets))
    for eps, m in results.items():
        print(f"\neps {eps:g}: accuracy (%) of target (column) on source (row)'s examples; "
              f"* = white-box")
        print(" " * width + "".join(f" {t:>{width}s}" for t in targets))
        for s_name, row in m.items():
            cells = "".join(f" {100 * v:>{width - 1}.1f}{'*' if s_name == t else ' '}"
                            for t, v in row.items())
            print(f"{s_name:>{width}s}{cells}")
    payload = {
        "dataset": dataset, "n": common.count(x, y), "attack": args.attack, "options": options,
        "seconds": seconds, "checkpoints": {name: str(p) for p, name in names.items()},
        "clean_accuracy": {k: v.float().mean().item()
                           for k, v in next(iter(results.values())).correct.items()},
        "matrices": [{
            "eps": eps, "accuracy": dict(m), "success_among_both_correct": m.success,
            # Per-example records: which test images (by position) each pair fooled.
            "fooled_indices": {s: {t: f.nonzero().flatten().tolist() for t, f in row.items()}
                               for s, row in m.fooled.items()},
        } for eps, m in results.items()],
    }
    if out is not None and png is not None and distributed.is_main():
        from robustkit.report.figures import transfer_heatmaps

        common.write_out(out, payload)
        transfer_heatmaps({eps: dict(m) for eps, m in results.items()}, png,
                          title=f"{args.attack} transfer on {dataset}: target accuracy")
        print(f"wrote {png}")
        if parts is not None:
            parts.clear()  # the result is written: nothing left to resume
    return 0
