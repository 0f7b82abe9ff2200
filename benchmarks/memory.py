"""Peak memory of ``robust_accuracy`` against the number of images: it must not grow with N.

``python -m benchmarks.memory [--sizes 5000,40000] [--repeat 3]``

Each measurement runs in a fresh Python process: it builds the images (mnist-5k digits
repeated to N, float32 (N, 1, 28, 28)) and the default ``mlp``, runs one warm-up call on
a few images (so imports, kernels and allocator pools are paid before), resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``), then runs
``robust_accuracy(mlp, x, y, "fgsm", eps=0.1, batch_size=500)`` and reads ``VmHWM``. The
figure is the peak growth during the call: ``VmHWM - VmRSS`` just before it. The input
tensor itself exists before the call, so it is not counted; what is counted is what the
evaluation allocates. Before the streaming change it held every adversarial example, so
the growth was about 3x the input and grew with N; the target is growth(40,000) <= 1.3x
growth(5,000). Linux only (``/proc``).

Two allocator settings are measured, interleaved: glibc's default, whose dynamic mmap
threshold serves the per-batch tensors from a heap that fragments (so the growth is a few
tens of MiB and noisy from run to run, whatever robustkit holds), and a fixed threshold
(``MALLOC_MMAP_THRESHOLD_=131072``), where every large tensor is returned to the kernel
when freed, so the figure is what the evaluation itself holds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

from benchmarks.common import merge_results

CHILD = textwrap.dedent("""
    import json, sys, torch
    from robustkit import data, evaluate, models

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    n, attack, model_name, form = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x0, y0 = data.load_tensors("mnist-5k", "train")
    reps = -(-n // len(y0))
    x = x0.repeat(reps, 1, 1, 1)[:n].contiguous()
    y = y0.repeat(reps)[:n].contiguous()
    model = models.create(model_name).eval()
    kw = {"eps": 0.1} if attack == "fgsm" else {"eps": 0.1, "steps": 10, "seed": 0}
    evaluate.robust_accuracy(model, x[:600], y[:600], attack, batch_size=500,
                             progress=False, **kw)
    if form == "loader":  # a DataLoader over a Dataset: the evaluation streams it
        from torch.utils.data import DataLoader, TensorDataset
        data = {"x": DataLoader(TensorDataset(x, y), batch_size=250), "y": None}
    else:
        data = {"x": x, "y": y}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS:")
    acc = evaluate.robust_accuracy(model, data["x"], data["y"], attack=attack, batch_size=500,
                                   progress=False, **kw)
    peak = status("VmHWM:")
    print(json.dumps({"n": n, "input_bytes": x.numel() * 4, "growth_bytes": peak - before,
                      "accuracy": acc}))
""")


ALLOCATORS = {"glibc default": {}, "fixed mmap threshold": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def measure(n: int, attack: str, model: str, allocator: str, form: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), attack, model, form],
                         capture_output=True, text=True, check=True,
                         env={**env, **ALLOCATORS[allocator]})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,40000",
                        help="image counts (issue 13's loader target: 5000,50000)")
    parser.add_argument("--attack", default="fgsm", choices=["fgsm", "pgd"])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loader", action="store_true",
                        help="feed a DataLoader (batch 250) instead of tensors")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    runs: dict[tuple[str, int], list[dict]] = {(a, n): [] for a in ALLOCATORS for n in sizes}
    for _ in range(args.repeat):  # interleaved
        for allocator, n in runs:
            runs[allocator, n].append(measure(n, args.attack, args.model, allocator,
                                              "loader" if args.loader else "tensors"))
    mib = 2 ** 20
    results = {}
    for allocator in ALLOCATORS:
        rows = {}
        print(f"{args.attack} on {args.model}, {'DataLoader' if args.loader else 'tensors'}, "
              f"allocator: {allocator}")
        for n in sizes:
            done = runs[allocator, n]
            rows[n] = {"input_mib": done[0]["input_bytes"] / mib,
                       "growth_mib": statistics.median(r["growth_bytes"] for r in done) / mib,
                       "all_growth_mib": [r["growth_bytes"] / mib for r in done]}
            print(f"  N={n:>7,d}: input {rows[n]['input_mib']:7.1f} MiB, peak growth during "
                  f"robust_accuracy {rows[n]['growth_mib']:6.1f} MiB (median of "
                  f"{args.repeat}: {', '.join(f'{g:.1f}' for g in rows[n]['all_growth_mib'])})")
        ratio = rows[sizes[-1]]["growth_mib"] / max(rows[sizes[0]]["growth_mib"], 1e-9)
        print(f"  growth({sizes[-1]:,}) / growth({sizes[0]:,}) = {ratio:.2f} "
              f"(target <= {1.2 if args.loader else 1.3})")
        results[allocator] = {"sizes": rows, "ratio": ratio}
    form = "_loader" if args.loader else ""
    merge_results("memory", {f"{args.attack}_{args.model}{form}": {
        "target": 1.2 if args.loader else 1.3, **results}})


if __name__ == "__main__":
    main()
