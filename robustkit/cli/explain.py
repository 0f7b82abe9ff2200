"""``robustkit explain`` and ``robustkit sanity``: attribution maps of test images, their
faithfulness and alignment, and the model-randomization sanity check; thin over
:mod:`robustkit.explain`.

Example:
    robustkit explain --checkpoint m.pt --methods saliency,gradcam --n 16 --out DIR
    robustkit sanity --checkpoint m.pt --methods saliency,guided_backprop,gradcam --out DIR
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustkit.cli import common
from robustkit.core import distributed, predict, versions
from robustkit.core.stream import as_tensors
from robustkit.errors import RobustkitError
from robustkit.explain.alignment import alignment
from robustkit.explain.attribution import attribute
from robustkit.explain.deletion import faithfulness, faithfulness_table
from robustkit.explain.methods import EXPLAINERS, names, options_of
from robustkit.explain.sanity import sanity_check

DEFAULT_EXPLAIN = "saliency,integrated_gradients,gradcam"


def add_parsers(sub: Any) -> None:
    """Add the ``explain`` and ``sanity`` subcommands to an argparse subparsers object."""
    p = sub.add_parser("explain", help="attribution maps of test images, with faithfulness metrics")
    _common(p, DEFAULT_EXPLAIN, n=16)
    p.add_argument("--steps", type=common.positive_int, default=20,
                   help="deletion/insertion steps (default 20: 5%% of the pixels each)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("sanity", help="model-randomization sanity check of attribution methods")
    _common(p, "all registered methods", n=16)
    p.add_argument("--mode", choices=["cascading", "independent"], default="cascading")
    p.set_defaults(func=cmd_sanity)


def _common(p: argparse.ArgumentParser, methods: str, n: int) -> None:
    common.add_model_args(p)  # --checkpoint or --model SPEC
    p.add_argument("--methods", help=f"comma-separated method names (default: {methods})")
    p.add_argument("--target", choices=["label", "prediction"], default="label",
                   help="the class to explain (default: the true label)")
    common.add_images(p, n=n, batch_size=None)
    p.add_argument("--seed", type=common.seed_int, default=0)
    common.add_device(p)
    p.add_argument("--out", required=True, help="folder for the figures and the JSON")


def _methods(text: str | None, default: list[str]) -> list[str]:
    chosen = [m.strip() for m in text.split(",") if m.strip()] if text else default
    if not chosen:
        raise RobustkitError("--methods names no method")
    if len(set(chosen)) != len(chosen):
        raise RobustkitError(f"--methods names a method twice: {text!r}")
    for m in chosen:
        EXPLAINERS.get(m)  # an unknown name lists the valid ones
    return chosen


@dataclass
class _Job:
    """What a command works on: methods, model, images, labels, predictions, the class to
    explain, the output folder and the record of what produced the results."""

    methods: list[str]
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    out: Path
    record: dict[str, Any]


def _setup(args: argparse.Namespace, default: list[str]) -> _Job:
    """The job, with every user mistake caught before any work."""
    methods = _methods(args.methods, default)
    out = common.out_dir(args.out)
    model, dataset, images, labels = common.load_for_attack(args)
    # A few images: as tensors, also from an image folder
    x, y = as_tensors(images if labels is None else (images, labels), "explain")
    pred = predict(model, x).argmax(1)
    record = {**common.model_record(args), "dataset": dataset, "n": len(y),
              "target": args.target, "seed": args.seed, "methods": methods}
    return _Job(methods, model, x, y, pred, y if args.target == "label" else pred, out, record)


def _finish(out: Path, name: str, record: dict[str, Any]) -> None:
    common.write_out(out / name, {**record, "versions": versions(),
                                  "torch_threads": torch.get_num_threads()})


def cmd_explain(args: argparse.Namespace) -> int:
    """Maps of ``--n`` test images by each method (``explanations.png``), their deletion and
    insertion curves against random rankings (``faithfulness.png``), their alignment with
    the image, and ``explain.json``."""
    from robustkit.explain.plotting import plot, plot_faithfulness  # matplotlib: when drawing

    job = _setup(args, DEFAULT_EXPLAIN.split(","))
    maps, results, seconds = {}, {}, {}
    for m in job.methods:
        start = time.perf_counter()
        # Under torchrun each rank explains its shard of the images; all get every map.

        def explain_block(xs: torch.Tensor, ts: torch.Tensor, m: str = m) -> torch.Tensor:
            return attribute(job.model, xs, ts, method=m, batch_size=args.batch_size)

        maps[m] = distributed.shard_map(explain_block, job.x, job.target,
                                        block=args.batch_size or 32)
        seconds[m] = time.perf_counter() - start
        results[m] = faithfulness(job.model, job.x, job.target, maps[m], steps=args.steps,
                                  seed=args.seed, batch_size=args.batch_size)
    print(f"{len(job.y)} {job.record['dataset']} test images, explaining the {args.target}")
    print(faithfulness_table(results, seconds))
    aligned = {m: alignment(maps[m], job.x) for m in job.methods}
    print("alignment with the image (Spearman of |map| with the pixels; Tsipras et al. "
          "2019): " + ", ".join(f"{m} {a.means()['spearman']:.3f}" for m, a in aligned.items()))
    labels = [f"label {a}, pred {b}" for a, b in zip(job.y.tolist(), job.pred.tolist())]
    if distributed.is_main():  # rank 0 alone writes
        job.out.mkdir(parents=True, exist_ok=True)
        plot(job.x, maps, labels=labels, path=job.out / "explanations.png")
        plot_faithfulness(results, path=job.out / "faithfulness.png")
        print(f"wrote {job.out / 'explanations.png'} and {job.out / 'faithfulness.png'}")
    job.record["steps"] = args.steps
    job.record["results"] = {m: {"seconds": seconds[m], "options": options_of(m), **results[m],
                                 "alignment": aligned[m].to_dict(per_example=True)}
                             for m in job.methods}
    _finish(job.out, "explain.json", job.record)
    return 0


def cmd_sanity(args: argparse.Namespace) -> int:
    """Model-randomization sanity check: ``sanity.json`` and the curves in ``sanity.png``."""
    from robustkit.explain.plotting import plot_sanity  # matplotlib: when drawing

    job = _setup(args, names())
    start = time.perf_counter()
    result = sanity_check(job.model, job.x, job.target, job.methods, mode=args.mode,
                          seed=args.seed, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    print(f"{args.mode} randomization, {len(job.y)} {job.record['dataset']} test images "
          f"({seconds:.1f}s); Spearman rank correlation of |attribution| with the original:")
    print(result.table("spearman_abs"))
    if distributed.is_main():  # rank 0 alone writes
        job.out.mkdir(parents=True, exist_ok=True)
        plot_sanity(result, path=job.out / "sanity.png")
        print(f"wrote {job.out / 'sanity.png'}")
    job.record.update(mode=args.mode, seconds=seconds, sanity=result.to_dict())
    _finish(job.out, "sanity.json", job.record)
    return 0
