"""Attribution speed against direct captum calls, and batched faithfulness curves.

On the default-trained alexnet (mnist-5k), 100 class-balanced test images, in one
process, each contender run interleaved and repeated, medians reported:

1. Integrated gradients (50 steps): ``explain.attribute`` (internal batch sized by memory)
   against captum's call with default settings (every step of every image in one pass);
   time ratio (target <= 0.6) and peak memory growth of one call, each variant measured in
   a fresh subprocess (CPU: the peak resident set, VmHWM, after the call minus before it;
   CUDA: peak allocated memory above what was allocated before).
2. Occlusion (4x4 window, stride 2): ours (many windows per pass) against captum's
   default of one window per forward pass (target: >= 5x faster).
3. Every other method against the bare captum call with the same options (target <= 1.2x).
4. Deletion curves (20 steps, the map and a random ranking): batched against a per-image,
   per-step loop (target >= 10x), with the largest difference between the two; batched
   with the default (autocast where the device runs it natively) and in float32
   (``amp=False``), with the largest change of an AUC between those two.

Every function runs once before the timed rounds (one-time costs such as lazy kernel
set-up would otherwise land on whichever contender runs first).

Usage:
    python -m benchmarks.explain [--repeat 3] [--n 100] [--device auto]
                                 [--only ig,occlusion,methods,deletion]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from captum.attr import (DeepLift, GuidedBackprop, InputXGradient, IntegratedGradients,
                         LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency)

from benchmarks.common import interleaved, merge_results, trained
from robustkit import data, explain
from robustkit.core.device import pick_device
from robustkit.models.checkpoint import versions

OCCLUSION = {"sliding_window_shapes": (1, 4, 4), "strides": 2}


def balanced(n: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """n class-balanced mnist-5k test images and labels."""
    x, y = data.load_tensors("mnist-5k", "test")
    keep = torch.from_numpy(data.stratified_indices(y.numpy(), n, seed=0))
    return x[keep].to(device), y[keep].to(device)


def setup(n: int, device: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The trained alexnet and :func:`balanced` test images, on ``device``."""
    dev = pick_device(device)
    return (trained("alexnet").to(dev), *balanced(n, dev))


def contenders(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, dict]:
    """Per method: our call and the direct captum call computing the same thing."""
    def grad_x() -> torch.Tensor:
        return x.clone().requires_grad_(True)

    def gradcam() -> torch.Tensor:
        cam = LayerGradCam(model, model.conv5).attribute(grad_x(), target=y)
        return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")

    def smoothgrad() -> torch.Tensor:
        torch.manual_seed(0)
        return NoiseTunnel(Saliency(model)).attribute(grad_x(), nt_type="smoothgrad",
                                                      nt_samples=25, stdevs=0.15, target=y)

    def ours(method: str):
        return lambda: explain.attribute(model, x, y, method=method)

    return {
        "integrated_gradients": {
            "ours": ours("integrated_gradients"),
            "captum": lambda: IntegratedGradients(model).attribute(grad_x(), target=y, n_steps=50)},
        "occlusion": {
            "ours": ours("occlusion"),
            "captum": lambda: Occlusion(model).attribute(x, target=y, baselines=0.0, **OCCLUSION)},
        "saliency": {"ours": ours("saliency"),
                     "captum": lambda: Saliency(model).attribute(grad_x(), target=y)},
        "gradient": {"ours": ours("gradient"),
                     "captum": lambda: Saliency(model).attribute(grad_x(), target=y, abs=False)},
        "input_x_gradient": {"ours": ours("input_x_gradient"),
                             "captum": lambda: InputXGradient(model).attribute(grad_x(), target=y)},
        "smoothgrad": {"ours": ours("smoothgrad"), "captum": smoothgrad},
        "guided_backprop": {"ours": ours("guided_backprop"),
                            "captum": lambda: GuidedBackprop(model).attribute(grad_x(), target=y)},
        "deeplift": {"ours": ours("deeplift"),
                     "captum": lambda: DeepLift(model).attribute(grad_x(), target=y)},
        "gradcam": {"ours": ours("gradcam"), "captum": gradcam},
    }


def memory_growth(method: str, variant: str, n: int, device: str) -> float:
    """Peak memory growth (MB) of one call, measured in a fresh process."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.explain", "--memory-of",
                          f"{method}:{variant}", "--n", str(n), "--device", device],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["growth_mb"]


def _measure_memory(spec: str, n: int, device: str) -> None:
    method, variant = spec.split(":")
    model, x, y = setup(n, device)
    fn = contenders(model, x, y)[method][variant]
    explain.attribute(model, x[:2], y[:2], method="saliency")  # load lazy modules first
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        growth = torch.cuda.max_memory_allocated() - before
    else:
        before = peak_rss()
        fn()
        growth = peak_rss() - before
    print(json.dumps({"growth_mb": growth / 2**20}))


def peak_rss() -> int:
    """This process's peak resident memory in bytes.

    Linux's VmHWM belongs to the process image: ``ru_maxrss`` would instead start from the
    parent's peak, inherited at fork, and hide any growth below it.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def deletion_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  rankings: list[torch.Tensor], steps: int) -> list[torch.Tensor]:
    """Deletion curves the plain way: one forward pass per image and step, per ranking."""
    n, _, h, w = x.shape
    curves = []
    with torch.no_grad():
        for relevance in rankings:  # (N, H*W)
            curve = torch.zeros(n, steps + 1)
            for i in range(n):
                order = relevance[i].argsort(descending=True, stable=True)
                for s in range(steps + 1):
                    gone = torch.zeros(h * w, dtype=torch.bool, device=x.device)
                    gone[order[:round(s / steps * h * w)]] = True
                    img = torch.where(gone.view(1, h, w), torch.zeros_like(x[i]), x[i])
                    curve[i, s] = model(img[None]).softmax(1)[0, y[i]]
            curves.append(curve.mean(0))
    return curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--only", default="ig,occlusion,methods,deletion")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: one measurement
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.memory_of:
        return _measure_memory(args.memory_of, args.n, args.device)
    only = set(args.only.split(","))
    model, x, y = setup(args.n, args.device)
    runs = contenders(model, x, y)
    device = (torch.cuda.get_device_name(x.device) if x.device.type == "cuda"
              else f"cpu, {torch.get_num_threads()} threads")
    out: dict[str, object] = {"n": len(y), "repeat": args.repeat, "device": device,
                              "versions": versions()}
    print(f"alexnet, {len(y)} class-balanced mnist-5k test images (torch {torch.__version__}, "
          f"{device}), median of {args.repeat}\n")
    rows = []

    def timed(fns: dict) -> tuple[dict, dict]:
        for fn in fns.values():  # warm-up round, not timed
            fn()
        if x.device.type != "cuda":
            return interleaved(fns, args.repeat)

        def synced(fn):
            return lambda: (fn(), torch.cuda.synchronize())[0]
        return interleaved({k: synced(fn) for k, fn in fns.items()}, args.repeat)

    def compare(method: str, target: str) -> dict:
        t, r = timed(runs[method])
        diff = (r["ours"] - r["captum"].expand_as(r["ours"])).abs().max().item()
        result = {"seconds": t, "ratio": t["ours"] / t["captum"], "max_abs_diff": diff}
        rows.append((method, t["ours"], t["captum"], result["ratio"], target, diff))
        return result

    if "ig" in only:
        out["integrated_gradients"] = compare("integrated_gradients", "<= 0.6")
        out["integrated_gradients"]["memory_growth_mb"] = {
            v: memory_growth("integrated_gradients", v, args.n, args.device)
            for v in ("ours", "captum")}
    if "occlusion" in only:
        out["occlusion"] = compare("occlusion", "<= 0.2")
        # captum's default call as its tutorials make it: one image per call, one occluded
        # copy per forward pass (the setting of the 24.7 s reference).
        runs["occlusion, captum per image"] = {
            "ours": runs["occlusion"]["ours"],
            "captum": lambda: torch.cat([
                Occlusion(model).attribute(x[i:i + 1], target=y[i:i + 1], baselines=0.0,
                                           **OCCLUSION) for i in range(len(x))])}
        out["occlusion_per_image"] = compare("occlusion, captum per image", "<= 0.2")
    if "methods" in only:
        for method in ("saliency", "gradient", "input_x_gradient", "smoothgrad",
                       "guided_backprop", "deeplift", "gradcam"):
            out[method] = compare(method, "<= 1.2")

    print("| method | ours (s) | captum (s) | ours / captum | target | max abs diff |")
    print("|---|---:|---:|---:|---|---:|")
    for method, ours, theirs, ratio, target, diff in rows:
        print(f"| {method} | {ours:.3f} | {theirs:.3f} | {ratio:.2f} | {target} | {diff:.1e} |")
    if "ig" in only:
        mem = out["integrated_gradients"]["memory_growth_mb"]
        print(f"\nintegrated gradients, peak memory growth of one call: ours {mem['ours']:.0f} MB, "
              f"captum default {mem['captum']:.0f} MB")

    if "deletion" in only:
        steps = 20
        a = explain.attribute(model, x, y, method="saliency")
        relevance = a.sum(1).flatten(1)  # the ranking faithfulness uses, and its random one
        noise = torch.rand(relevance.shape, generator=torch.Generator().manual_seed(0))
        t, r = timed({
            "batched": lambda: explain.faithfulness(model, x, y, a, steps=steps, mode="deletion"),
            "batched, float32": lambda: explain.faithfulness(model, x, y, a, steps=steps,
                                                             mode="deletion", amp=False),
            "loop": lambda: deletion_loop(model, x, y, [relevance, noise.to(x.device)], steps),
        })

        def gap(variant: str) -> float:  # largest curve difference from the float32 loop
            return max((torch.tensor(curve) - by_hand).abs().max().item() for curve, by_hand in [
                (r[variant]["deletion"]["curve"], r["loop"][0]),
                (r[variant]["random"]["deletion"]["curve"], r["loop"][1])])

        def aucs(res: dict) -> tuple[float, float]:  # the map's and the random ranking's
            return res["deletion"]["auc"], res["random"]["deletion"]["auc"]
        auc_diff = max(abs(p - q) for p, q in zip(aucs(r["batched"]), aucs(r["batched, float32"])))
        out["deletion"] = {"steps": steps, "seconds": t, "speedup": t["loop"] / t["batched"],
                           "speedup_float32": t["loop"] / t["batched, float32"],
                           "max_abs_diff": gap("batched"),
                           "max_abs_diff_float32": gap("batched, float32"),
                           "auc_diff_default_vs_float32": auc_diff}
        print(f"\ndeletion curves, {steps} steps, map + random ranking, per-image loop "
              f"{t['loop']:.2f}s (target: batched >= 10x faster)")
        for variant in ("batched", "batched, float32"):
            print(f"  {variant}: {t[variant]:.2f}s | speed-up {t['loop'] / t[variant]:.1f}x | "
                  f"max curve difference from the loop {gap(variant):.1e}")
        print(f"  largest AUC change, default (autocast where native) vs float32: {auc_diff:.1e}")

    merge_results("explain", out)


if __name__ == "__main__":
    main()
