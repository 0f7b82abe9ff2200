"""Attack speed and strength against the bare cost and against torchattacks and Foolbox.

On the default-trained alexnet (mnist-5k, first 1,000 test images), in one process,
each contender run interleaved and repeated, medians reported:

1. FGSM (eps 0.3): max difference to torchattacks.FGSM.
2. PGD-40 (eps 0.3, alpha 0.01, random start): robust accuracy and time against
   torchattacks' PGD and against 40 bare forward+backward passes w.r.t. the input.
3. A 10-point robustness curve (eps 0.03 ... 0.3, PGD-10) against the naive per-eps loop.
4. DeepFool (50 steps, overshoot 0.02, all 10 classes) against Foolbox's L2DeepFoolAttack.
5. C&W L2 (100 steps in all, lr 0.01) with binary search against torchattacks' CW (c=1).

Usage:
    python -m benchmarks.attacks [--repeat 3] [--n 1000] [--only pgd,curve,...]
"""

from __future__ import annotations

import argparse
import warnings

import torch

from benchmarks.common import bare_passes, interleaved, merge_results, test_images, trained
from robustkit import attacks
from robustkit.evaluate import robustness_curve
from robustkit.core import predict


def acc(model, x, y) -> float:
    return (predict(model, x).argmax(1) == y).float().mean().item()


def robust(model, x, x_adv, y) -> float:
    ok = (predict(model, x).argmax(1) == y) & (predict(model, x_adv).argmax(1) == y)
    return ok.float().mean().item()


def median_l2_success(model, x, x_adv, y) -> tuple[float, float]:
    clean_ok = predict(model, x).argmax(1) == y
    hit = clean_ok & (predict(model, x_adv).argmax(1) != y)
    l2 = (x_adv - x).flatten(1).norm(dim=1)
    return (l2[hit].median().item() if hit.any() else float("nan"),
            hit.sum().item() / max(1, clean_ok.sum().item()))


def main() -> None:
    import torchattacks

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--only", default="fgsm,pgd,curve,deepfool,cw")
    args = ap.parse_args()
    only = set(args.only.split(","))
    warnings.simplefilter("ignore")
    model = trained("alexnet")
    x, y = test_images(args.n)
    print(f"alexnet clean accuracy on {len(y)} test images: {acc(model, x, y) * 100:.2f}%  "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    out: dict[str, dict] = {}

    if "fgsm" in only:
        ours = attacks.fgsm(model, x, y, eps=0.3)
        theirs = torchattacks.FGSM(model, eps=0.3)(x, y)
        diff = (ours - theirs).abs().max().item()
        out["fgsm"] = {"max_abs_diff_vs_torchattacks": diff}
        print(f"\nFGSM eps 0.3: max |ours - torchattacks| = {diff:.2e}")

    if "pgd" in only:
        ta = torchattacks.PGD(model, eps=0.3, alpha=0.01, steps=40, random_start=True)
        torch.manual_seed(0)
        t, r = interleaved({
            "bare": lambda: bare_passes(model, x, y, 40),
            "robustkit": lambda: attacks.pgd(model, x, y, eps=0.3, alpha=0.01, steps=40, seed=0),
            "torchattacks": lambda: ta(x, y),
        }, args.repeat)
        ours_acc, ta_acc = robust(model, x, r["robustkit"], y), robust(model, x, r["torchattacks"], y)
        out["pgd"] = {"seconds": t, "robust_accuracy": {"robustkit": ours_acc, "torchattacks": ta_acc},
                      "ratio_vs_torchattacks": t["robustkit"] / t["torchattacks"],
                      "ratio_vs_bare": t["robustkit"] / t["bare"]}
        print(f"\nPGD-40 eps 0.3 alpha 0.01 (median of {args.repeat}):")
        print(f"  bare 40 fwd+bwd {t['bare']:.2f}s | robustkit {t['robustkit']:.2f}s "
              f"| torchattacks {t['torchattacks']:.2f}s")
        print(f"  robustkit / torchattacks = {t['robustkit'] / t['torchattacks']:.3f}  "
              f"(target <= 1.0);  robustkit / bare = {t['robustkit'] / t['bare']:.3f} (target <= 1.10)")
        print(f"  robust accuracy: robustkit {ours_acc * 100:.2f}% | torchattacks {ta_acc * 100:.2f}% "
              f"(target: ours <= theirs + 0.5)")

    if "curve" in only:
        grid = [round(0.03 * k, 2) for k in range(1, 11)]

        def naive():
            return [robust(model, x, attacks.pgd(model, x, y, eps=e, steps=10, seed=0), y)
                    for e in grid]

        def fast():
            return [r["accuracy"] for r in robustness_curve(
                model, x, y, attack="pgd", eps=grid, steps=10, seed=0, progress=False)]

        t, r = interleaved({"naive": naive, "curve": fast}, args.repeat)
        worst = max(abs(a - b) for a, b in zip(r["naive"], r["curve"]))
        out["curve"] = {"eps": grid, "naive": r["naive"], "curve": r["curve"], "seconds": t,
                        "ratio": t["curve"] / t["naive"], "max_abs_diff": worst}
        print(f"\n10-point curve, PGD-10 (median of {args.repeat}): naive {t['naive']:.2f}s | "
              f"curve {t['curve']:.2f}s | ratio {t['curve'] / t['naive']:.3f} (target <= 0.30)")
        print("  eps    " + " ".join(f"{e:6.2f}" for e in grid))
        print("  naive  " + " ".join(f"{a * 100:6.1f}" for a in r["naive"]))
        print("  curve  " + " ".join(f"{a * 100:6.1f}" for a in r["curve"]))
        print(f"  largest difference {worst * 100:.2f} points (target <= 1)")

    if "deepfool" in only:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        fb_attack = fb.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)

        def foolbox_df():
            _, clipped, _ = fb_attack(fmodel, x, y, epsilons=None)
            return clipped

        t, r = interleaved({
            "robustkit": lambda: attacks.deepfool(model, x, y, steps=50, overshoot=0.02),
            "foolbox": foolbox_df,
        }, args.repeat)
        ours = median_l2_success(model, x, r["robustkit"], y)
        theirs = median_l2_success(model, x, r["foolbox"], y)
        out["deepfool"] = {"seconds": t, "median_l2": {"robustkit": ours[0], "foolbox": theirs[0]},
                           "success": {"robustkit": ours[1], "foolbox": theirs[1]}}
        print(f"\nDeepFool (50 steps, overshoot 0.02, 10 candidates), median of {args.repeat}:")
        print(f"  robustkit: median L2 {ours[0]:.3f}, success {ours[1] * 100:.1f}%, {t['robustkit']:.2f}s")
        print(f"  foolbox:   median L2 {theirs[0]:.3f}, success {theirs[1] * 100:.1f}%, {t['foolbox']:.2f}s")

    if "cw" in only:
        ta_cw = torchattacks.CW(model, c=1, kappa=0, steps=100, lr=0.01)
        t, r = interleaved({
            "robustkit": lambda: attacks.cw_l2(model, x, y, c=1.0, steps=100, lr=0.01,
                                               binary_search_steps=5),
            "torchattacks": lambda: ta_cw(x, y),
        }, args.repeat)
        ours = median_l2_success(model, x, r["robustkit"], y)
        theirs = median_l2_success(model, x, r["torchattacks"], y)
        # The two medians above are over different sets (each attack's own successes).
        # Fair views: over the examples both broke, and over every correctly classified
        # example with a failure counted as an infinite distance (the usual convention).
        clean_ok = predict(model, x).argmax(1) == y
        hit = {k: clean_ok & (predict(model, v).argmax(1) != y) for k, v in r.items()}
        dist = {k: torch.where(hit[k], (v - x).flatten(1).norm(dim=1),
                               torch.tensor(float("inf"))) for k, v in r.items()}
        both = hit["robustkit"] & hit["torchattacks"]
        on_both = {k: dist[k][both].median().item() for k in dist}
        with_inf = {k: dist[k][clean_ok].median().item() for k in dist}
        out["cw"] = {"seconds": t, "median_l2": {"robustkit": ours[0], "torchattacks": theirs[0]},
                     "success": {"robustkit": ours[1], "torchattacks": theirs[1]},
                     "median_l2_on_both": on_both, "median_l2_failures_infinite": with_inf}
        print(f"\nC&W L2, 100 steps in all (median of {args.repeat}):")
        print(f"  robustkit (5 binary-search stages): median L2 {ours[0]:.3f}, "
              f"success {ours[1] * 100:.1f}%, {t['robustkit']:.2f}s")
        print(f"  torchattacks (c=1):                 median L2 {theirs[0]:.3f}, "
              f"success {theirs[1] * 100:.1f}%, {t['torchattacks']:.2f}s")
        print(f"  median L2 on the {int(both.sum())} examples both broke: robustkit "
              f"{on_both['robustkit']:.3f} | torchattacks {on_both['torchattacks']:.3f}")
        print(f"  median L2 over all correctly classified, failure = inf: robustkit "
              f"{with_inf['robustkit']:.3f} | torchattacks {with_inf['torchattacks']:.3f}")

    merge_results("attacks", out)


if __name__ == "__main__":
    main()
