"""The 4x4 transfer matrices and what they cost against the source attacks alone.

Models (mnist-5k, default training): logistic, mlp, alexnet, and an alexnet trained on a
2,000-example subset with seed 1 ("alexnet-2k", a surrogate that never saw half the data).
Every model is both source and target; PGD-20 (Linf, alpha 2.5 * eps / 20, random
start, seed 0) at eps 0.1 and 0.2 on the 1,000 test images.

Timed, interleaved and repeated in one process (medians):
- ``matrix``: :func:`robustkit.transfer.transfer_matrix` for both eps, everything included
  (clean predictions, eight source attacks, 32 scorings, the checks);
- ``attacks``: the eight source attacks alone (the floor).

Writes ``benchmarks/out/transfer.json`` and the heatmap ``benchmarks/out/transfer.png``.

Usage:
    python -m benchmarks.transfer [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import OUT, interleaved, test_images, trained
from robustkit.evaluate import adversarial_examples
from robustkit.report.figures import transfer_heatmaps
from robustkit.transfer import transfer_matrix

EPS = [0.1, 0.2]
OPTIONS = {"steps": 20, "seed": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    models = {"logistic": trained("logistic"), "mlp": trained("mlp"),
              "alexnet": trained("alexnet"),
              "alexnet-2k": trained("alexnet", ("--train-size", "2000", "--seed", "1"))}
    x, y = test_images(1000)

    def matrix():
        return transfer_matrix(models, models, x, y, attack="pgd", eps=EPS, progress=False,
                               **OPTIONS)

    def attacks_alone():
        for eps in EPS:
            for model in models.values():
                adversarial_examples(model, x, y, "pgd", 500, False, eps=eps, **OPTIONS)

    start = time.perf_counter()
    times, results = interleaved({"matrix": matrix, "attacks": attacks_alone}, args.repeat)
    print(f"{args.repeat} repeats in {time.perf_counter() - start:.0f}s; medians: "
          f"matrices {times['matrix']:.1f}s, the 8 source attacks alone {times['attacks']:.1f}s, "
          f"ratio {times['matrix'] / times['attacks']:.3f}")
    matrices = results["matrix"]
    names = list(models)
    for eps, m in matrices.items():
        print(f"\neps {eps:g}: accuracy (%) of target (column) on source (row)'s examples, "
              "transfer success among both-correct in brackets")
        print("| source \\ target | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        for s in names:
            cells = [f"{100 * m[s][t]:.1f}" + ("" if s == t else f" ({100 * m.success[s][t]:.1f})")
                     for t in names]
            print(f"| {s} | " + " | ".join(cells) + " |")
    clean = {k: v.float().mean().item() for k, v in matrices[EPS[0]].correct.items()}
    print("\nclean accuracy: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in clean.items()))
    OUT.mkdir(parents=True, exist_ok=True)
    transfer_heatmaps({e: dict(m) for e, m in matrices.items()}, OUT / "transfer.png",
                      title="PGD-20 transfer on mnist-5k (1,000 test images): target accuracy")
    (OUT / "transfer.json").write_text(json.dumps({
        "repeat": args.repeat, "seconds": times,
        "ratio": times["matrix"] / times["attacks"], "clean_accuracy": clean,
        "matrices": {str(e): {"accuracy": dict(m), "success": m.success}
                     for e, m in matrices.items()},
    }, indent=2))
    print(f"wrote {OUT / 'transfer.json'} and {OUT / 'transfer.png'}")


if __name__ == "__main__":
    main()
