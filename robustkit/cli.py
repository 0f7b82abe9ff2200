"""The ``robustkit`` command line, thin over the API.

Every user mistake (unknown name, bad value, missing or corrupt file) prints one line,
``robustkit: error: ...``, and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from collections.abc import Sequence

from robustkit.errors import RobustkitError

LOSS_ALIASES = {"ce": "cross_entropy", "cross_entropy": "cross_entropy", "mse": "mse"}


def _number(kind: type, ok, rule: str):
    """An argparse type: parse ``kind`` and require ``ok(value)``, else say ``rule``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {value}")
        return value

    return parse


_positive_int = _number(int, lambda v: v > 0, "must be positive")
_positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "must be positive")
_nonneg_float = _number(float, lambda v: v >= 0 and math.isfinite(v), "must be finite and >= 0")


def _eps_list(text: str) -> list[float]:
    return [_nonneg_float(t) for t in text.split(",") if t.strip()]


def _attack_args(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    if checkpoint:
        p.add_argument("--checkpoint", required=True)
    p.add_argument("--attack", default="pgd",
                   help="registered name (fgsm, bim, pgd, mifgsm, deepfool, cw_l2) or module:function")
    p.add_argument("--steps", type=_positive_int, help="iterations (attack's default if omitted)")
    p.add_argument("--alpha", type=_nonneg_float, help="step size (default 2.5 * eps / steps)")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--restarts", type=_positive_int)
    p.add_argument("--n", type=_positive_int, default=1000, help="test images (default 1000)")
    p.add_argument("--batch-size", type=_positive_int, default=500)
    p.add_argument("--dataset", help="default: the checkpoint's dataset")
    p.add_argument("--root")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--quiet", action="store_true")


def _load_for_attack(args: argparse.Namespace):
    """The checkpoint's model on the chosen device and n test images, class-balanced."""
    from robustkit import models
    from robustkit.device import pick_device

    model = models.load(args.checkpoint, device=pick_device(args.device))
    dataset, x, y = _test_images(args, model)
    return model, dataset, x, y


def _test_images(args: argparse.Namespace, model):
    """``args.n`` test images of ``args.dataset`` (default: the model's), class-balanced."""
    import torch

    from robustkit import data

    dataset = args.dataset or model.robustkit_metadata.get("dataset") or "mnist-5k"
    x, y = data.load_tensors(dataset, "test", root=args.root)
    if args.n > len(y):
        raise RobustkitError(f"--n {args.n} is larger than {dataset}'s test split ({len(y)})")
    if args.n < len(y):  # a fixed, class-balanced subset (the split itself is ordered by class)
        keep = torch.from_numpy(data.stratified_indices(y.numpy(), args.n, seed=0))
        x, y = x[keep], y[keep]
    return dataset, x, y


def _attack_kwargs(args: argparse.Namespace, eps: float | None) -> dict:
    from robustkit.attacks import BOUNDED

    name = args.attack
    kw: dict = {}
    if name in BOUNDED and eps is not None:
        kw["eps"] = eps
    for key in ("steps", "alpha", "restarts"):
        if getattr(args, key, None) is not None:
            kw[key] = getattr(args, key)
    if name in ("pgd", "bim"):
        kw["norm"] = args.norm
    if name in ("pgd", "mifgsm"):
        kw["seed"] = args.seed
    return kw


def _write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    import os

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    os.replace(tmp, dest)
    print(f"wrote {dest}")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the hint to --help included), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"robustkit: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="robustkit",
        description="Adversarial robustness and interpretability for PyTorch models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a registered model on a dataset and save a checkpoint")
    p.add_argument("--model", required=True, help="registered model name (logistic, mlp, alexnet)")
    p.add_argument("--dataset", default="mnist-5k", help="registered dataset name (default mnist-5k)")
    p.add_argument("--epochs", type=_positive_int, help="default: the model's tuned setting")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=_positive_float, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-size", type=_positive_int,
                   help="train on a stratified, seeded subset of this many examples")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--loss", choices=sorted(LOSS_ALIASES), help="ce (cross-entropy) or mse")
    p.add_argument("--root", help="folder of torchvision datasets")
    p.add_argument("--download", action="store_true", help="let torchvision download a dataset")
    p.add_argument("--amp", default="auto", choices=["auto", "on", "off"],
                   help="mixed precision: auto = float16 on CUDA, bfloat16 on a CPU with native "
                        "bfloat16, else off")
    p.add_argument("--eval-every", type=int, default=0, metavar="N",
                   help="score the test split every N epochs (default: after the last only)")
    p.add_argument("--adversarial", choices=["fgsm-rs", "pgd", "trades"],
                   help="adversarial training: fgsm-rs (Wong et al. 2020), pgd (Madry et al. "
                        "2017) or trades (Zhang et al. 2019); uses the model's adversarial "
                        "training defaults")
    p.add_argument("--eps", type=float, help="with --adversarial: the threat model's radius "
                                             "(default 0.3)")
    p.add_argument("--adv-norm", choices=["linf", "l2"], help="with --adversarial (default linf)")
    p.add_argument("--adv-steps", type=int, help="with --adversarial: inner attack steps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--fresh", action="store_true",
                   help="ignore OUT.resume (the training state an interrupted run left) and "
                        "start over")
    p.add_argument("--out", required=True, help="checkpoint path to write")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("attack", help="attack a checkpoint on test images and measure the result")
    _attack_args(p)
    p.add_argument("--eps", type=_nonneg_float, default=0.3, help="radius (default 0.3)")
    p.add_argument("--out", help="JSON file for the results")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("curve", help="robust accuracy against eps (incremental, early-stopping)")
    _attack_args(p)
    p.add_argument("--eps", type=_eps_list, default=[0.05, 0.1, 0.2, 0.3],
                   help="comma-separated radii (default 0.05,0.1,0.2,0.3)")
    p.add_argument("--out", help="JSON file for the curve")
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("minimal", help="median smallest perturbation turning each class into each other")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", help="default: the checkpoint's dataset")
    p.add_argument("--n", type=_positive_int, default=100, help="test images (default 100)")
    p.add_argument("--steps", type=_positive_int, default=200,
                   help="gradient steps per search (default 200)")
    p.add_argument("--norms", default="l2,linf", help="l2, linf or both (default l2,linf)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--root")
    p.add_argument("--out", help="JSON file for the tables")
    p.set_defaults(func=cmd_minimal)

    p = sub.add_parser("validity", help="Carlini et al. 2019's checks that an evaluation is sound")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--eps", type=_nonneg_float, default=0.3)
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--steps", type=_positive_int, default=20)
    p.add_argument("--n", type=_positive_int, default=1000)
    p.add_argument("--transfer-from", help="a second checkpoint to craft transferred examples on")
    p.add_argument("--dataset")
    p.add_argument("--root")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", help="JSON file for the checks")
    p.set_defaults(func=cmd_validity)

    p = sub.add_parser("transfer", help="accuracy of every target on every source's adversarial "
                                        "examples (the transfer matrix) and its heatmap")
    p.add_argument("--sources", nargs="+", required=True, metavar="CKPT",
                   help="checkpoints to craft adversarial examples on")
    p.add_argument("--targets", nargs="+", required=True, metavar="CKPT",
                   help="checkpoints to score them on (a source listed here gives white-box cells)")
    _attack_args(p, checkpoint=False)
    p.add_argument("--eps", type=_eps_list, default=[0.1, 0.2],
                   help="comma-separated radii (default 0.1,0.2)")
    p.add_argument("--out", help="JSON file for the matrices; the heatmap goes beside it (.png)")
    p.set_defaults(func=cmd_transfer)

    from robustkit.explain.cli import add_parsers as add_explain_parsers

    add_explain_parsers(sub)  # explain, sanity

    p = sub.add_parser("run", help="run (or resume) an experiment config and write its report")
    p.add_argument("config", help="TOML config, e.g. experiments/quickstart.toml")
    p.add_argument("--out", help="run folder (default reports/<name>)")
    p.add_argument("--fresh", action="store_true", help="discard an earlier run's state first")
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

    p = sub.add_parser("info", help="print a checkpoint's metadata")
    p.add_argument("path")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("list", help="list registered models and datasets")
    p.set_defaults(func=cmd_list)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from robustkit import data, models
    from robustkit.train import fit

    start = time.perf_counter()
    from robustkit.adversarial import adversarial_training, as_config, checkpoint_metadata

    ds = data.spec(args.dataset)  # unknown names fail here, before any work
    models.MODELS.get(args.model)
    adv_flags = {"eps": args.eps, "norm": args.adv_norm, "steps": args.adv_steps}
    if args.adversarial is None and any(v is not None for v in adv_flags.values()):
        raise RobustkitError("--eps, --adv-norm and --adv-steps only apply with --adversarial")
    adversarial = as_config({"method": args.adversarial,
                             **{k: v for k, v in adv_flags.items() if v is not None}}
                            ) if args.adversarial else None
    cfg = (adversarial_training(args.model) if adversarial
           else models.default_training(args.model))
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                 "loss": LOSS_ALIASES.get(args.loss) if args.loss else None}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    train = data.load_tensors(args.dataset, "train", root=args.root, download=args.download,
                              train_size=args.train_size, seed=args.seed)
    test = data.load_tensors(args.dataset, "test", root=args.root, download=args.download)
    torch.manual_seed(args.seed)
    model = models.create(args.model, ds.in_shape, ds.num_classes, ds.mean, ds.std)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {args.model} ({n_params:,} parameters) on {args.dataset} "
          f"({len(train[1])} train / {len(test[1])} test), seed {args.seed}: "
          f"{json.dumps(dataclasses.asdict(cfg))}", flush=True)
    if adversarial is not None:
        from robustkit.adversarial import describe

        print(f"adversarial training: {json.dumps(describe(adversarial))}", flush=True)
    if args.eval_every < 0:
        raise RobustkitError(f"--eval-every must be >= 0, got {args.eval_every}")
    # The training state after each epoch: a killed run started again goes on from it.
    resume = Path(f"{args.out}.resume")
    if args.fresh:
        resume.unlink(missing_ok=True)
    history = fit(model, train, test, config=cfg, device=args.device, seed=args.seed,
                  amp={"auto": None, "on": True, "off": False}[args.amp],
                  eval_every=args.eval_every, quiet=args.quiet, adversarial=adversarial,
                  resume=resume)
    acc = history.final_test_accuracy
    models.save(
        model, args.out,
        dataset=args.dataset, train_size=len(train[1]), seed=args.seed,
        epochs=cfg.epochs, training=dataclasses.asdict(cfg), test_accuracy=acc,
        device=history.device, amp=history.amp, train_seconds=history.seconds,
        history=history.epochs, **checkpoint_metadata(history),
    )
    resume.unlink(missing_ok=True)
    if args.quiet:
        for e in history.epochs:
            test_txt = (f"  test acc {e['test_accuracy']:.4f}"
                        if e["test_accuracy"] is not None else "")
            if e.get("guard_accuracy") is not None:
                test_txt += f"  held-out pgd acc {e['guard_accuracy']:.4f}"
                if e.get("guard_single_step_accuracy") is not None:
                    test_txt += f" (single step {e['guard_single_step_accuracy']:.4f})"
            print(f"epoch {e['epoch']:3d}/{cfg.epochs}  loss {e['loss']:.4f}  "
                  f"train acc {e['train_accuracy']:.4f}{test_txt}  {e['seconds']:.1f}s")
    print(f"test accuracy {acc:.4f} ({acc * 100:.2f}%) after {cfg.epochs} epochs; "
          f"trained in {history.seconds:.1f}s on {history.device}, "
          f"{time.perf_counter() - start:.1f}s in all; saved {args.out}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    import torch

    from robustkit import metrics
    from robustkit.evaluate import adversarial_examples
    from robustkit.train import predict

    model, dataset, x, y = _load_for_attack(args)
    kw = _attack_kwargs(args, args.eps)
    start = time.perf_counter()
    x_adv = adversarial_examples(model, x, y, args.attack, args.batch_size,
                                 progress=not args.quiet, **kw)
    seconds = time.perf_counter() - start
    clean_pred = predict(model, x).argmax(1)
    adv_pred = predict(model, x_adv).argmax(1)
    clean_ok, adv_ok = clean_pred == y, adv_pred == y
    fooled = clean_ok & ~adv_ok  # the examples the attack broke
    norms = metrics.perturbation_norms(x, x_adv)
    psnr, ssim = metrics.psnr(x, x_adv), metrics.ssim(x, x_adv)

    def median(t: torch.Tensor) -> float | None:
        return float(t[fooled].median()) if fooled.any() else None

    result = {
        "checkpoint": args.checkpoint, "dataset": dataset, "n": len(y), "attack": args.attack,
        "options": kw, "seconds": seconds,
        "clean_accuracy": clean_ok.float().mean().item(),
        "robust_accuracy": (clean_ok & adv_ok).float().mean().item(),
        "success_rate": fooled.sum().item() / max(1, clean_ok.sum().item()),
        "median_over_fooled": {"l0": median(norms["l0"]), "l2": median(norms["l2"]),
                               "linf": median(norms["linf"]), "psnr": median(psnr),
                               "ssim": median(ssim)},
    }
    med = result["median_over_fooled"]
    print(f"{args.attack} {json.dumps(kw)} on {len(y)} {dataset} test images ({seconds:.1f}s)")
    print(f"clean accuracy   {result['clean_accuracy'] * 100:6.2f}%")
    print(f"robust accuracy  {result['robust_accuracy'] * 100:6.2f}%")
    print(f"success rate     {result['success_rate'] * 100:6.2f}% of correctly classified images")
    if med["l2"] is not None:
        print(f"median over fooled: L0 {med['l0']:.0f}  L2 {med['l2']:.3f}  Linf {med['linf']:.3f}  "
              f"PSNR {med['psnr']:.1f} dB  SSIM {med['ssim']:.3f}")
    _write_json(args.out, result)
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    from robustkit.evaluate import robustness_curve

    model, dataset, x, y = _load_for_attack(args)
    kw = _attack_kwargs(args, None)
    kw.pop("seed", None)
    start = time.perf_counter()
    curve = robustness_curve(model, x, y, attack=args.attack, eps=args.eps,
                             batch_size=args.batch_size, progress=not args.quiet,
                             seed=args.seed, **kw)
    seconds = time.perf_counter() - start
    print(f"{args.attack} {json.dumps(kw)} on {len(y)} {dataset} test images ({seconds:.1f}s)")
    print(f"{'eps':>8s} {'accuracy':>9s} {'attacked':>9s}")
    for r in curve:
        print(f"{r['eps']:8.3f} {r['accuracy'] * 100:8.2f}% {r['attacked']:9d}")
    _write_json(args.out, {"checkpoint": args.checkpoint, "dataset": dataset, "n": len(y),
                           "attack": args.attack, "options": kw, "seconds": seconds,
                           "curve": curve})
    return 0


def cmd_minimal(args: argparse.Namespace) -> int:
    from robustkit.evaluate import minimal_table

    model, dataset, x, y = _load_for_attack(args)
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    for n in norms:
        if n not in ("l2", "linf"):
            raise RobustkitError(f"--norms takes l2 and/or linf, got {n!r}")
    start = time.perf_counter()
    tables = {n: minimal_table(model, x, y, norm=n, steps=args.steps) for n in norms}
    seconds = time.perf_counter() - start
    classes = sorted(set(y.tolist()))
    for n, table in tables.items():
        print(f"\nmedian {n} perturbation to turn class (row) into class (column), "
              f"{len(y)} {dataset} test images:")
        print("      " + "".join(f"{c:>7d}" for c in classes))
        for r in classes:
            cells = "".join("      -" if r == t else
                            (f"{table['median'][r][t]:7.3f}" if table['median'][r][t] is not None
                             else "    n/a") for t in classes)
            print(f"{r:5d} {cells}")
        print(f"reached the target in {table['success_rate'] * 100:.1f}% of "
              f"{table['pairs']} (image, target) pairs")
    print(f"({seconds:.1f}s)")
    _write_json(args.out, {"checkpoint": args.checkpoint, "dataset": dataset, "n": len(y),
                           "steps": args.steps, "seconds": seconds, "tables": tables})
    return 0


def cmd_validity(args: argparse.Namespace) -> int:
    from robustkit import models
    from robustkit.evaluate import validity_checks

    model, dataset, x, y = _load_for_attack(args)
    source = None
    if args.transfer_from:
        source = models.load(args.transfer_from, device=next(model.parameters()).device)
    start = time.perf_counter()
    report = validity_checks(model, x, y, eps=args.eps, norm=args.norm, steps=args.steps,
                             transfer_from=source, seed=args.seed, progress=not args.quiet)
    seconds = time.perf_counter() - start
    print(f"validity checks, {args.norm} eps {args.eps}, PGD-{args.steps}, {len(y)} {dataset} "
          f"test images, clean accuracy {report['clean_accuracy'] * 100:.2f}% ({seconds:.1f}s)")
    for c in report["checks"]:
        verdict = {True: "pass", False: "FAIL", None: "skip"}[c["passed"]]
        print(f"  {verdict:4s}  {c['name']:28s} {c['detail']}")
    print("all checks passed" if report["passed"] else "some checks FAILED: suspect the evaluation")
    _write_json(args.out, {"checkpoint": args.checkpoint, "dataset": dataset, "n": len(y),
                           "seconds": seconds, **report})
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from robustkit import models
    from robustkit.device import pick_device
    from robustkit.transfer import transfer_matrix

    device = pick_device(args.device)
    names = _checkpoint_names([*args.sources, *args.targets])
    loaded = {names[p]: models.load(p, device=device) for p in dict.fromkeys(names)}
    sources = {names[p]: loaded[names[p]] for p in args.sources}
    targets = {names[p]: loaded[names[p]] for p in args.targets}
    if not args.eps:
        raise RobustkitError("--eps needs at least one radius")
    dataset, x, y = _test_images(args, next(iter(sources.values())))
    kw = _attack_kwargs(args, None)
    start = time.perf_counter()
    results = transfer_matrix(sources, targets, x, y, attack=args.attack, eps=list(args.eps),
                              batch_size=args.batch_size, progress=not args.quiet, **kw)
    seconds = time.perf_counter() - start
    print(f"{args.attack} {json.dumps(kw)} on {len(y)} {dataset} test images ({seconds:.1f}s)")
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
        "dataset": dataset, "n": len(y), "attack": args.attack, "options": kw,
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
    if args.out:
        _write_json(args.out, payload)
        from robustkit.report.figures import transfer_heatmaps

        png = Path(args.out).with_suffix(".png")
        transfer_heatmaps({eps: dict(m) for eps, m in results.items()}, png,
                          title=f"{args.attack} transfer on {dataset}: target accuracy")
        print(f"wrote {png}")
    return 0


def _checkpoint_names(paths: Sequence[str]) -> dict[str, str]:
    """A short, unique display name per distinct checkpoint: its stem, or as many trailing
    folders as it takes to tell checkpoints with the same stem apart (``a/mlp``, ``b/mlp``)."""
    from pathlib import Path

    distinct = list(dict.fromkeys(Path(p).resolve() for p in paths))
    names = {}
    for path in distinct:
        for depth in range(1, len(path.parts) + 1):
            name = "/".join([*path.parts[-depth:-1], path.stem])
            clash = [o for o in distinct if o != path
                     and "/".join([*o.parts[-depth:-1], o.stem]) == name]
            if not clash:
                break
        names[path] = name
    return {p: names[Path(p).resolve()] for p in paths}


def cmd_run(args: argparse.Namespace) -> int:
    from robustkit.experiment import run

    start = time.perf_counter()
    root = run(args.config, args.out, progress=not args.quiet, fresh=args.fresh)
    print(f"finished in {time.perf_counter() - start:.1f}s")
    print(f"report: {(root / 'index.html').resolve()}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robustkit.report import check_page, render

    page = render(args.run_dir)
    print(f"report: {page.resolve()}")
    if args.check:
        check = check_page(page, screenshot=Path(args.run_dir) / "screenshot.png")
        print(f"browser check: {len(check.images)} images, "
              + ("all loaded, no console errors" if check.ok else "PROBLEMS:"))
        for problem in check.problems:
            print(f"  {problem}")
        return 0 if check.ok else 1
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from robustkit.report.compare import compare

    print(f"report: {compare(args.run_dirs, args.out).resolve()}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from robustkit.models import read

    payload = read(args.path)
    meta = dict(payload["metadata"])
    history = meta.pop("history", None)
    summary = {k: payload[k] for k in ("name", "in_shape", "num_classes", "options")}
    print(json.dumps({**summary, "metadata": meta}, indent=2, default=str))
    if history:
        print(f"history: {len(history)} epochs recorded")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from robustkit import data, models

    print("models:   " + ", ".join(models.names()))
    print("datasets: " + ", ".join(data.names()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 on bad flags
    try:
        return args.func(args)
    except RobustkitError as err:
        print(f"robustkit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
