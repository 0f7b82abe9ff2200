"""``robustkit attack``, ``curve``, ``minimal`` and ``validity``: a checkpoint attacked on
test images, thin over :mod:`robustkit.evaluate`.

Attack options reach the attack only through :func:`robustkit.attacks.bind`: the flags the
user gave (``--steps``, ``--alpha``, ``--norm``, ``--restarts``, ``--option KEY=VALUE``)
and nothing else, so an option the attack does not take is refused, never dropped.

Example:
    robustkit attack --checkpoint m.pt --attack pgd --eps 0.3 --steps 40 --out pgd.json
    robustkit attack --checkpoint m.pt --attack deepfool          # a distance: no eps
    robustkit curve --checkpoint m.pt --attack pgd --eps 0.05,0.1,0.2,0.3 --out curve.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from typing import Any


from robustkit import metrics
from robustkit.attacks.base import threat_model
from robustkit.attacks.binding import bind, check_options, spec
from robustkit.cli import common
from robustkit.core import distributed
from robustkit.core.resume import BlockStore
from robustkit.core.stream import as_tensors
from robustkit.evaluate import minimal_table, robustness_curve, validity_checks
from robustkit.outcomes import outcomes


#: What ``robustkit attack`` measures of each perturbation (medians over fooled examples).
MEASURES = {
    "l0": lambda x, a: metrics.perturbation_norms(x, a)["l0"],
    "l2": lambda x, a: metrics.perturbation_norms(x, a)["l2"],
    "linf": lambda x, a: metrics.perturbation_norms(x, a)["linf"],
    "psnr": metrics.psnr,
    "ssim": metrics.ssim,
}


def _fresh_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fresh", action="store_true",
                   help="discard OUT.parts/ (the finished blocks of an interrupted run, kept "
                        "so that it goes on where it was) and start over")


def add_parsers(sub: Any) -> None:
    """Add ``attack``, ``curve``, ``minimal`` and ``validity`` to an argparse subparsers
    object."""
    p = sub.add_parser("attack", help="attack a checkpoint on test images and measure the result")
    common.add_attack_args(p)
    p.add_argument("--eps", type=common.nonneg_float,
                   help=f"radius, for attacks that take one (default {common.DEFAULT_EPS}); "
                        "attacks that measure a distance (deepfool, cw_l2) take none")
    p.add_argument("--out", help="JSON file for the results; finished blocks are kept in "
                                 "OUT.parts/ until it is written, so a killed run (one rank "
                                 "or all) goes on where it was")
    _fresh_flag(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("curve", help="robust accuracy against eps (incremental, early-stopping)")
    common.add_attack_args(p)
    p.add_argument("--eps", type=common.eps_list, default=[0.05, 0.1, 0.2, 0.3],
                   help="comma-separated radii (default 0.05,0.1,0.2,0.3)")
    p.add_argument("--out", help="JSON file for the curve")
    _fresh_flag(p)
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("minimal",
                       help="median smallest perturbation turning each class into each other")
    common.add_model_args(p)  # --checkpoint or --model SPEC
    common.add_images(p, n=100, batch_size=1000)
    p.add_argument("--steps", type=common.positive_int, default=200,
                   help="gradient steps per search (default 200)")
    p.add_argument("--norms", type=common.norm_list, default=["l2", "linf"],
                   help="l2, linf or both, comma-separated (default l2,linf)")
    common.add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", help="JSON file for the tables")
    p.set_defaults(func=cmd_minimal)

    p = sub.add_parser("validity", help="Carlini et al. 2019's checks that an evaluation is sound")
    common.add_model_args(p)  # --checkpoint or --model SPEC
    p.add_argument("--eps", type=common.nonneg_float, help="radius (default 0.3)")
    p.add_argument("--norm", help="linf or l2 (default linf)")
    p.add_argument("--steps", type=common.positive_int, help="PGD steps (default 20)")
    common.add_images(p, n=1000, batch_size=500)
    p.add_argument("--transfer-from", help="a second checkpoint to craft transferred examples on")
    p.add_argument("--seed", type=common.seed_int, default=0)
    common.add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", help="JSON file for the checks")
    _fresh_flag(p)
    p.set_defaults(func=cmd_validity)


def cmd_attack(args: argparse.Namespace) -> int:
    """Attack ``--n`` test images; print and write accuracy, success rate and the median
    perturbation over the fooled examples."""
    eps = args.eps
    if eps is None and spec(args.attack).takes_eps:
        eps = common.DEFAULT_EPS
    options = common.user_options(args)
    check_options(args.attack, options, eps=eps, what="attack")
    out = common.out_file(args.out, inputs=common.model_inputs(args))
    model, dataset, x, y = common.load_for_attack(args)
    run = bind(args.attack, model, options, eps=eps, defaults={"seed": args.seed},
               what="attack")
    start = time.perf_counter()
    # Batch by batch (sharded under torchrun): each adversarial image is measured and
    # dropped, so memory does not grow with --n.
    n = common.count(x, y)
    parts = common.resume_store(out, args, {"command": "attack", "dataset": dataset,
                                            "n": n, "options": run.record_options()})
    out_ = outcomes(common.data_of(x, y), {"model": model}, run, batch_size=args.batch_size,
                    progress=not args.quiet, what="attack", measure=MEASURES,
                    resume=parts.scope("attack") if parts is not None else None)
    seconds = time.perf_counter() - start
    clean_ok, adv_ok = out_.clean["model"], out_.adv["model"]
    fooled = clean_ok & ~adv_ok  # the examples the attack broke

    def median(name: str) -> float | None:
        return float(out_.measures[name][fooled].median()) if fooled.any() else None

    recorded = run.record_options()  # eps only where the attack took one
    result = {
        **common.model_record(args), "dataset": dataset, "n": n, "attack": args.attack,
        "options": recorded, "seconds": seconds,
        "clean_accuracy": clean_ok.float().mean().item(),
        "robust_accuracy": (clean_ok & adv_ok).float().mean().item(),
        "success_rate": fooled.sum().item() / max(1, clean_ok.sum().item()),
        "median_over_fooled": {name: median(name) for name in MEASURES},
        "cost": out_.cost(),
    }
    med = result["median_over_fooled"]
    print(f"{args.attack} {json.dumps(recorded)} on {common.count(x, y)} {dataset} test images "
          f"({seconds:.1f}s)")
    print(f"clean accuracy   {result['clean_accuracy'] * 100:6.2f}%")
    print(f"robust accuracy  {result['robust_accuracy'] * 100:6.2f}%")
    print(f"success rate     {result['success_rate'] * 100:6.2f}% of correctly classified images")
    cost = result["cost"]
    if cost is not None and cost["forward"]:
        print(f"cost             {cost['pgd40_per_example']:.2f} PGD-40 equivalents per attacked "
              f"image ({cost['forward']} forward, {cost['backward']} backward passes, "
              f"{cost['queries']} queries)")
    if med["l2"] is not None:
        print(f"median over fooled: L0 {med['l0']:.0f}  L2 {med['l2']:.3f}  "
              f"Linf {med['linf']:.3f}  PSNR {med['psnr']:.1f} dB  SSIM {med['ssim']:.3f}")
    common.write_out(out, result)
    _done(parts)
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    """Robust accuracy at each ``--eps``; attacks that measure a distance are refused."""
    options = common.user_options(args)
    check_options(args.attack, options, grid=True, what="curve")
    out = common.out_file(args.out, inputs=common.model_inputs(args))
    model, dataset, x, y = common.load_for_attack(args)
    start = time.perf_counter()
    parts = common.resume_store(out, args, {"command": "curve", "dataset": dataset,
                                            "n": common.count(x, y), "attack": args.attack,
                                            "options": options, "eps": args.eps})
    curve = robustness_curve(model, x, y, attack=args.attack, eps=args.eps,
                             batch_size=args.batch_size, progress=not args.quiet,
                             seed=args.seed, resume=parts, **options)
    seconds = time.perf_counter() - start
    print(f"{args.attack} {json.dumps(options)} on {common.count(x, y)} {dataset} test images "
          f"({seconds:.1f}s)")
    print(f"{'eps':>8s} {'accuracy':>9s} {'attacked':>9s}")
    for r in curve:
        print(f"{r['eps']:8.3f} {r['accuracy'] * 100:8.2f}% {r['attacked']:9d}")
    common.write_out(out, {**common.model_record(args), "dataset": dataset, "n": common.count(x, y),
                           "attack": args.attack, "options": options, "seed": args.seed,
                           "seconds": seconds, "curve": curve})
    _done(parts)
    return 0


def _done(parts: BlockStore | None) -> None:
    """The result is written: the finished blocks have nothing left to resume."""
    if parts is not None and distributed.is_main():
        parts.clear()


def cmd_minimal(args: argparse.Namespace) -> int:
    """The class-by-class table of median smallest perturbations, per norm."""
    out = common.out_file(args.out, inputs=common.model_inputs(args))
    model, dataset, images, labels = common.load_for_attack(args)
    # every (image, target) pair is attacked: a few images, as tensors
    x, y = as_tensors(common.data_of(images, labels), "minimal")
    start = time.perf_counter()
    tables = {n: minimal_table(model, x, y, norm=n, steps=args.steps,
                               batch_size=args.batch_size, progress=not args.quiet)
              for n in args.norms}
    seconds = time.perf_counter() - start
    classes = sorted(set(y.tolist()))
    for n, table in tables.items():
        print(f"\nmedian {n} perturbation to turn class (row) into class (column), "
              f"{common.count(x, y)} {dataset} test images:")
        print("      " + "".join(f"{c:>7d}" for c in classes))
        for r in classes:
            cells = "".join("      -" if r == t else
                            (f"{table['median'][r][t]:7.3f}" if table['median'][r][t] is not None
                             else "    n/a") for t in classes)
            print(f"{r:5d} {cells}")
        print(f"reached the target in {table['success_rate'] * 100:.1f}% of "
              f"{table['pairs']} (image, target) pairs")
    print(f"({seconds:.1f}s)")
    common.write_out(out, {**common.model_record(args), "dataset": dataset, "n": common.count(x, y),
                           "steps": args.steps, "seconds": seconds, "tables": tables})
    return 0


def _validity_settings(args: argparse.Namespace) -> dict[str, Any]:
    """eps, norm and steps: the flags given, else :func:`validity_checks`' own defaults
    (read from its signature, so the two never disagree)."""
    params = inspect.signature(validity_checks).parameters
    given = {k: getattr(args, k) for k in ("eps", "norm", "steps")}
    return {k: params[k].default if v is None else v for k, v in given.items()}


def cmd_validity(args: argparse.Namespace) -> int:
    """Carlini et al. 2019's validity checks of a PGD evaluation, one line each."""
    settings = _validity_settings(args)
    threat_model(settings["norm"], "validity --norm")  # refused before anything loads
    inputs = [*common.model_inputs(args), *([args.transfer_from] if args.transfer_from else [])]
    out = common.out_file(args.out, inputs=inputs)
    if args.transfer_from:
        common.checkpoint_file(args.transfer_from, "--transfer-from")
    model, dataset, x, y = common.load_for_attack(args)
    source = None
    if args.transfer_from:
        source = common.load_model(args.transfer_from, next(model.parameters()).device,
                                   flag="--transfer-from")
    start = time.perf_counter()
    parts = common.resume_store(out, args, {"command": "validity", "dataset": dataset,
                                            "n": common.count(x, y), "settings": settings,
                                            "transfer_from": args.transfer_from})
    report = validity_checks(model, x, y, transfer_from=source, seed=args.seed,
                             batch_size=args.batch_size, progress=not args.quiet,
                             resume=parts, **settings)
    seconds = time.perf_counter() - start
    print(f"validity checks, {settings['norm']} eps {settings['eps']}, PGD-{settings['steps']}, "
          f"{common.count(x, y)} {dataset} test images, clean accuracy "
          f"{report['clean_accuracy'] * 100:.2f}% ({seconds:.1f}s)")
    for c in report["checks"]:
        verdict = {True: "pass", False: "FAIL", None: "skip"}[c["passed"]]
        print(f"  {verdict:4s}  {c['name']:28s} {c['detail']}")
    print("all checks passed" if report["passed"] else "some checks FAILED: suspect the evaluation")
    common.write_out(out, {**common.model_record(args), "dataset": dataset, "n": common.count(x, y),
                           "steps": settings["steps"], "seed": args.seed, "seconds": seconds,
                           **report})
    _done(parts)
    return 0
