"""robustkit's standard AutoAttack against torchattacks' AutoAttack, on alexnet models.

torchattacks' AutoAttack runs APGD, APGD-T and FAB with 10 steps by default; here their
``steps`` are set to 100, as the reference (Croce and Hein 2020) and robustkit use, so the
two run the same ensemble: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5,000
queries), each on the examples still robust. On the first ``--n`` mnist-5k test images,
in one process, interleaved (the order alternates between repeats), medians reported:

- robust accuracy of each (robustkit's must be at most torchattacks' + 0.2 points);
- seconds of each and their ratio (robustkit's at most 0.8x torchattacks');
- robustkit's split of the examples broken and of the cost (forward/backward passes,
  queries, PGD-40 equivalents, seconds) over the four attacks;
- the test images only one of the two broke, and how far beyond eps torchattacks' farthest
  adversarial image lies (float32 rounding).

Each model's results are written as soon as it is done.

Models: ``default`` is the default-trained alexnet (``benchmarks/out/alexnet.pt``,
trained on first use); ``pgd`` is the PGD-trained alexnet
(``robustkit train --model alexnet --adversarial pgd --eps 0.3``), given with ``--pgd``
or trained on first use into ``benchmarks/out/alexnet_adversarialpgd.pt``.

Usage:
    python -m benchmarks.autoattack [--n 1000] [--repeat 1] [--models default,pgd]
        [--pgd PATH] [--eps 0.3]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch

from benchmarks.common import merge_results, test_images, trained
from robustkit import evaluate, models
from robustkit.core import predict


def theirs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float
           ) -> tuple[torch.Tensor, float]:
    """torchattacks' standard AutoAttack with 100 steps: which examples stay robust (N,)
    bool, and the largest Linf distance of its adversarial images (float32 rounding can
    put it a few 1e-8 beyond eps)."""
    import torchattacks

    target = copy.deepcopy(model)  # torchattacks' FAB leaves .grad on the parameters
    aa = torchattacks.AutoAttack(target, norm="Linf", eps=eps, version="standard",
                                 n_classes=10, seed=0)
    for attack in aa._autoattack.attacks:
        if hasattr(attack, "steps"):
            attack.steps = 100
    x_adv = aa(x, y)
    ok = (predict(model, x).argmax(1) == y) & (predict(model, x_adv).argmax(1) == y)
    return ok, float((x_adv - x).abs().amax())


def ours(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float):
    return evaluate.autoattack(model, (x, y), eps=eps, version="standard", seed=0,
                               compare_pgd=False, batch_size=500)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--models", default="default,pgd")
    p.add_argument("--pgd", help="the PGD-trained alexnet checkpoint")
    args = p.parse_args()
    x, y = test_images(args.n)
    zoo = {}
    for name in args.models.split(","):
        if name == "default":
            zoo[name] = trained("alexnet")
        elif name == "pgd":
            zoo[name] = (models.load(args.pgd) if args.pgd else
                         trained("alexnet", ("--adversarial", "pgd", "--eps", "0.3")))
        else:
            raise SystemExit(f"unknown model {name!r}: default or pgd")
    results = {}
    for name, model in zoo.items():
        times: dict[str, list[float]] = {"robustkit": [], "torchattacks": []}
        acc: dict[str, float] = {}
        robust: dict[str, torch.Tensor] = {}
        split = None
        overshoot = 0.0
        for r in range(args.repeat):
            order = ["robustkit", "torchattacks"] if r % 2 == 0 else ["torchattacks",
                                                                      "robustkit"]
            for who in order:
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if who == "robustkit":
                        result = ours(model, x, y, args.eps)
                        robust[who] = result.records["robust"].bool()
                        acc[who] = float(result.robust_accuracy)
                        split = result.split()
                        cost = result.cost()
                    else:
                        robust[who], farthest = theirs(model, x, y, args.eps)
                        acc[who] = robust[who].float().mean().item()
                        overshoot = max(overshoot, farthest - args.eps)
                times[who].append(time.perf_counter() - start)
                print(f"{name} {who}: robust {100 * acc[who]:.2f}% in {times[who][-1]:.1f}s",
                      flush=True)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}

        def only(stays: str, breaks: str) -> list[int]:
            return (robust[stays] & ~robust[breaks]).nonzero().flatten().tolist()

        results[name] = {"n": args.n, "eps": args.eps, "repeat": args.repeat,
                         "robust_accuracy": acc, "seconds": med,
                         "time_ratio": med["robustkit"] / med["torchattacks"],
                         "accuracy_gap_points": 100 * (acc["robustkit"] - acc["torchattacks"]),
                         "split": split, "cost": cost,
                         # the images on which the two disagree (test-set indices)
                         "only_robustkit_broke": only("torchattacks", "robustkit"),
                         "only_torchattacks_broke": only("robustkit", "torchattacks"),
                         "torchattacks_beyond_eps": overshoot}
        print(f"{name}: robustkit {100 * acc['robustkit']:.2f}% vs torchattacks "
              f"{100 * acc['torchattacks']:.2f}%; time {results[name]['time_ratio']:.2f}x; "
              f"only robustkit broke {results[name]['only_robustkit_broke']}, only "
              f"torchattacks broke {results[name]['only_torchattacks_broke']}")
        for attack, row in (split or {}).items():
            print(f"  {attack:8s} broke {row['broken']:4d}  {row['pgd40']:.2f} PGD-40/example "
                  f"{row['seconds']:.1f}s")
        merge_results("autoattack", {f"{name}-n{args.n}": results[name]})


if __name__ == "__main__":
    main()
