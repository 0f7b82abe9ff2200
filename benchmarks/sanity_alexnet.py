"""Adebayo et al.'s sanity check and the faithfulness curves on the trained alexnet.

1. Cascading model-parameter randomization (fc3 down to conv1) of every registered
   method on ``--n`` class-balanced mnist-5k test images, explaining the true label:
   Spearman rank correlation of |attribution| and of the signed attribution, and SSIM,
   with the original maps, per step (first seed), and the fully randomized step over all
   ``--seeds`` (mean and spread). Acceptance: saliency and Grad-CAM below 0.5 once every
   layer is random; guided backprop more similar than saliency.
2. Deletion and insertion AUCs of every method on ``--faithfulness-n`` images against
   random rankings. Acceptance: integrated gradients' and saliency's deletion AUC below
   the random rankings'.
3. How often the paper's final ReLU blanks a whole Grad-CAM map (why robustkit's gradcam
   stays signed by default).

Writes benchmarks/out/sanity.json, sanity.png and faithfulness.png.

Usage:
    python -m benchmarks.sanity_alexnet [--n 32] [--seeds 0,1,2] [--faithfulness-n 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks.common import OUT, trained
from benchmarks.explain import balanced
from robustkit import explain
from robustkit.explain.deletion import faithfulness_table
from robustkit.explain.sanity import SIMILARITIES
from robustkit.core import versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--faithfulness-n", type=int, default=100)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    model = trained("alexnet")
    x, y = balanced(args.n)
    methods = explain.names()
    print(f"alexnet, {len(y)} class-balanced mnist-5k test images, true labels explained, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")

    runs = {}
    for seed in seeds:
        start = time.perf_counter()
        runs[seed] = explain.sanity_check(model, x, y, methods, seed=seed)
        print(f"cascading randomization, seed {seed}: {time.perf_counter() - start:.1f}s")
    first = runs[seeds[0]]
    for metric in SIMILARITIES:
        print(f"\n{metric} with the original maps (seed {seeds[0]}, mean over images):\n")
        print(first.table(metric))

    final = {m: {k: [runs[s][m][-1][k] for s in seeds] for k in SIMILARITIES} for m in methods}
    print(f"\nevery layer randomized, mean (spread) over seeds {args.seeds}:\n")
    print("| method | spearman_abs | spearman | ssim |\n|---|---:|---:|---:|")
    for m in methods:
        cells = [f"{statistics.mean(v):.3f} ({statistics.pstdev(v):.3f})"
                 for v in final[m].values()]
        print(f"| {m} | " + " | ".join(cells) + " |")

    xf, yf = balanced(args.faithfulness_n)
    faith = {m: explain.faithfulness(model, xf, yf, m) for m in methods}
    print(f"\nfaithfulness on {len(yf)} images, 20 steps, probability of the true class, "
          f"baseline 0 (deletion: lower is better; insertion: higher is better):\n")
    print(faithfulness_table(faith))

    cam = explain.attribute(model, xf, yf, method="gradcam", relu_attributions=True)
    blank = int((cam.flatten(1).abs().amax(1) == 0).sum())
    print(f"\nGrad-CAM with the paper's final ReLU: {blank} of {len(yf)} maps entirely zero")

    final_abs = {m: statistics.mean(final[m]["spearman_abs"]) for m in methods}
    checks = {
        "saliency decorrelates (< 0.5)": final_abs["saliency"] < 0.5,
        "gradcam decorrelates (< 0.5)": final_abs["gradcam"] < 0.5,
        "guided backprop more similar than saliency":
            final_abs["guided_backprop"] > final_abs["saliency"],
        "integrated gradients' deletion AUC below random":
            faith["integrated_gradients"]["deletion"]["auc"]
            < faith["integrated_gradients"]["random"]["deletion"]["auc"],
        "saliency's deletion AUC below random":
            faith["saliency"]["deletion"]["auc"] < faith["saliency"]["random"]["deletion"]["auc"],
    }
    print("\nacceptance:")
    for name, ok in checks.items():
        print(f"  {'pass' if ok else 'FAIL'}  {name}")

    OUT.mkdir(exist_ok=True)
    explain.plot_sanity(first, path=OUT / "sanity.png")
    explain.plot_faithfulness({m: faith[m] for m in ("saliency", "integrated_gradients",
                                                     "gradcam")}, path=OUT / "faithfulness.png")
    payload = {"n": len(y), "seeds": seeds, "faithfulness_n": len(yf), "versions": versions(),
               "torch_threads": torch.get_num_threads(),
               "sanity": {s: r.to_dict() for s, r in runs.items()},
               "final_over_seeds": final,
               "faithfulness": faith,
               "gradcam_relu_blank_maps": blank, "acceptance": checks}
    (OUT / "sanity.json").write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nwrote {OUT / 'sanity.json'}, {OUT / 'sanity.png'}, {OUT / 'faithfulness.png'}")


if __name__ == "__main__":
    main()
