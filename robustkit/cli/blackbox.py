"""``robustkit blackbox``: Papernot et al.'s black-box attack on a checkpoint reached only
through a label oracle; thin over :func:`robustkit.blackbox.substitute` and
:func:`robustkit.blackbox.transfer_success`.

The first ``--seed-n`` test images are the attacker's seeds (labelled by the attacker, as in
CleverHans' tutorial, unless ``--oracle-labels-seeds``); the next ``--n`` (default: all the
rest) score the substitute on their true labels and carry the transferred attack. It prints
the substitute's accuracy per round with the queries spent, then the oracle's accuracy on
the transferred examples per eps; ``--out`` writes all of it as JSON.

Example:
    robustkit blackbox --oracle mlp.pt --seed-n 150 --rounds 6 --eps 0.3 --out bb.json
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from robustkit import data, models
from robustkit.attacks.binding import check_options
from robustkit.blackbox import Oracle, planned_queries, substitute, transfer_success
from robustkit.cli import common
from robustkit.errors import RobustkitError


def add_parsers(sub: Any) -> None:
    """Add ``blackbox`` to an argparse subparsers object."""
    p = sub.add_parser("blackbox", help="black-box attack through a label oracle: a substitute "
                                        "trained with Jacobian augmentation (Papernot et al. "
                                        "2017), its adversarial examples transferred")
    p.add_argument("--oracle", required=True, metavar="CKPT",
                   help="the target's checkpoint, reached only through a label oracle")
    p.add_argument("--budget", type=common.positive_int,
                   help="the oracle's query budget (default: none); checked before any query")
    p.add_argument("--seed-n", type=common.positive_int, default=150,
                   help="seed images, the first of the test split (default 150)")
    p.add_argument("--oracle-labels-seeds", action="store_true",
                   help="let the oracle label the seeds (seed-n more queries) instead of "
                        "the attacker's true labels")
    p.add_argument("--rounds", type=common.positive_int, default=6,
                   help="substitute training rounds (default 6)")
    p.add_argument("--lam", type=common.positive_float, default=0.1,
                   help="Jacobian augmentation step (default 0.1)")
    p.add_argument("--flip-every", type=common.positive_int, default=3,
                   help="the step changes sign every this many rounds (default 3)")
    p.add_argument("--arch", default="mlp", metavar="SPEC",
                   help="the substitute's model spec (default mlp)")
    p.add_argument("--arch-options", type=common.model_options, metavar="KEY=VALUE,...",
                   help="the substitute's options (default for mlp: hidden=[200,200],dropout=0, "
                        "CleverHans' substitute; other archs: their own defaults)")
    p.add_argument("--epochs", type=common.positive_int, default=10,
                   help="training epochs per round (default 10)")
    p.add_argument("--train-batch-size", type=common.positive_int, default=128,
                   help="the substitute's training batch size (default 128)")
    p.add_argument("--lr", type=common.positive_float, default=0.001,
                   help="the substitute's learning rate, Adam (default 0.001)")
    p.add_argument("--eps", type=common.eps_list, default=[common.DEFAULT_EPS],
                   help=f"comma-separated radii of the transferred attack (default "
                        f"{common.DEFAULT_EPS})")
    p.add_argument("--attack", default="fgsm",
                   help="the attack crafted on the substitute: a registered name or "
                        "package.module:function (default fgsm)")
    p.add_argument("--steps", type=common.positive_int, help="the attack's iterations")
    p.add_argument("--alpha", type=common.nonneg_float, help="the attack's step size")
    p.add_argument("--norm", help="threat model, linf or l2 (the attack's default if omitted)")
    p.add_argument("--restarts", type=common.positive_int, help="random restarts (pgd)")
    p.add_argument("--option", type=common.option_pair, action="append", default=[],
                   metavar="KEY=VALUE", help="any other option of the attack, repeatable")
    p.add_argument("--n", "--images", dest="n", type=common.positive_int,
                   help="test images after the seeds, for the substitute's accuracy and the "
                        "transfer (default: all the rest)")
    p.add_argument("--batch-size", type=common.positive_int, default=500,
                   help="images per attack call (default 500)")
    p.add_argument("--dataset", help="default: the checkpoint's dataset")
    p.add_argument("--root", help="folder of torchvision datasets")
    p.add_argument("--seed", type=common.seed_int, default=0,
                   help="seeds the substitute and the attack's randomness (default 0)")
    common.add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", help="JSON file for the rounds and the transfer results")
    p.set_defaults(func=cmd_blackbox)


def cmd_blackbox(args: argparse.Namespace) -> int:
    """Train the substitute through the oracle, transfer the attack, print and write."""
    options = common.user_options(args)
    spec = check_options(args.attack, options, grid=True, what="blackbox")
    if spec.params is None or "seed" in spec.params:
        options["seed"] = args.seed
    models.check_spec(args.arch)
    models.check_options(args.arch, args.arch_options or {})
    out = common.out_file(args.out, inputs=[args.oracle])
    common.check_dataset(args.dataset)
    target = common.load_model(args.oracle, args.device, flag="--oracle")
    meta: dict[str, Any] = getattr(target, "robustkit_metadata", None) or {}
    dataset = args.dataset or meta.get("dataset") or "mnist-5k"
    x, y = data.load_tensors(dataset, "test", root=args.root)
    rest = len(x) - args.seed_n
    if rest < 1 or (args.n is not None and args.n > rest):
        raise RobustkitError(f"--seed-n {args.seed_n} and --n {args.n}: {dataset}'s test split "
                             f"has {len(x)} images, {max(rest, 0)} after the seeds")
    n = rest if args.n is None else args.n
    seeds = slice(0, args.seed_n)
    xs, ys = x[args.seed_n:args.seed_n + n], y[args.seed_n:args.seed_n + n]
    need = (planned_queries(args.seed_n, args.rounds, args.oracle_labels_seeds)
            + n * (len(args.eps) + 1))
    if args.budget is not None and need > args.budget:
        raise RobustkitError(f"--budget {args.budget:,}: the run needs {need:,} queries "
                             f"(substitute and transfer)")
    oracle = Oracle(target, budget=args.budget)
    start = time.perf_counter()
    sub = substitute(oracle, x[seeds], seed_y=None if args.oracle_labels_seeds else y[seeds],
                     arch=args.arch, arch_options=args.arch_options, rounds=args.rounds,
                     lam=args.lam, flip_every=args.flip_every, epochs=args.epochs,
                     batch_size=args.train_batch_size, lr=args.lr, seed=args.seed,
                     device=args.device, test=(xs, ys), progress=not args.quiet)
    result = transfer_success(oracle, sub.model, xs, ys, attack=args.attack,
                              eps=list(args.eps), batch_size=args.batch_size, **options)
    seconds = time.perf_counter() - start
    print(f"substitute {args.arch} from {args.seed_n} {dataset} seeds, scored on {n} test "
          f"images ({seconds:.1f}s)")
    print("round  points  queries     lam  accuracy")
    for h in sub.history:
        lam = "-" if h["lam"] is None else f"{h['lam']:+.3g}"
        print(f"{h['round']:>5d}  {h['size']:>6,d}  {h['queries']:>7,d}  {lam:>6s}  "
              f"{100 * h['accuracy']:7.2f}%")
    print(f"oracle: clean accuracy {100 * result['clean_accuracy']:.2f}% on {n} images")
    for eps, acc, rate in zip(result["eps"], result["adversarial_accuracy"],
                              result["transfer_success"], strict=True):
        success = "n/a" if rate is None else f"{100 * rate:.2f}%"
        print(f"{result['attack']} eps {eps:g}: oracle accuracy {100 * acc:.2f}%, transfer "
              f"success {success}")
    print(f"queries: {sub.queries:,} for the substitute, {result['queries']:,} for the "
          f"transfer, {oracle.queries:,} in all")
    common.write_out(out, {
        "command": "blackbox", "oracle": str(args.oracle), "dataset": dataset,
        "seeds": args.seed_n, "n": n, "seconds": seconds, "substitute": sub.options,
        "rounds": sub.history, "substitute_queries": sub.queries, "transfer": result,
        "queries": oracle.queries})
    return 0
