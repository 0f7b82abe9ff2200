"""2 processes x 1 thread against 1 process x 2 threads: PGD-20 on the alexnet.

``python -m benchmarks.distributed [--n 1000] [--repeat 3]``

Both settings use the machine's 2 cores. The single process runs
``robust_accuracy(alexnet, x, y, "pgd", eps=0.3, steps=20)`` with 2 torch threads; the
other runs the same call under ``torch.distributed.run --nproc-per-node 2`` (gloo), one
thread each, every rank attacking its shard of the examples and gathering the outcomes.
The seconds are measured inside the processes, from just before the call to just after it
(rank 0, after a barrier), so process start-up and imports are left out; they are
interleaved and repeated, and the medians reported. The results must be equal: the
examples' random starts follow their global indices.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from benchmarks.common import OUT, merge_results, trained

CHILD = textwrap.dedent("""
    import json, sys, time
    import torch
    import torch.distributed as dist
    from robustkit import data, evaluate, models

    threads, ckpt, n, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(threads)
    group = "WORLD_SIZE" in __import__("os").environ
    if group:
        dist.init_process_group("gloo")
    model = models.load(ckpt)
    x, y = data.load_tensors("mnist-5k", "test")
    x, y = x[:n], y[:n]
    evaluate.robust_accuracy(model, x[:64], y[:64], "pgd", eps=0.3, steps=2, progress=False)
    if group:
        dist.barrier()
    start = time.perf_counter()
    acc = evaluate.robust_accuracy(model, x, y, "pgd", eps=0.3, steps=20, batch_size=250,
                                   progress=False)
    if group:
        dist.barrier()
    seconds = time.perf_counter() - start
    if not group or dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"seconds": seconds, "accuracy": float(acc)}, f)
    if group:
        dist.destroy_process_group()
""")


def run(procs: int, ckpt: Path, n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        script = Path(tmp) / "child.py"
        script.write_text(CHILD)
        threads = 2 // procs
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     "--nproc-per-node", str(procs)] if procs > 1 else [sys.executable])
        subprocess.run([*launcher, str(script), str(threads), str(ckpt), str(n), str(out)],
                       env=env, check=True, capture_output=True)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    trained("alexnet")  # benchmarks/out/alexnet.pt, trained on first use
    ckpt = OUT / "alexnet.pt"
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(args.repeat):  # interleaved
        for procs in (1, 2):
            runs[procs].append(run(procs, ckpt, args.n))
    median = {p: statistics.median(r["seconds"] for r in runs[p]) for p in runs}
    accuracy = {p: {r["accuracy"] for r in runs[p]} for p in runs}
    print(f"PGD-20 (eps 0.3) on alexnet, {args.n} images, median of {args.repeat}:")
    for procs, label in ((1, "1 process x 2 threads"), (2, "2 processes x 1 thread")):
        seconds = ", ".join(f"{r['seconds']:.1f}" for r in runs[procs])
        print(f"  {label}: {median[procs]:.1f} s  (runs: {seconds})")
    print(f"  speed-up of 2 processes: {median[1] / median[2]:.2f}x; robust accuracy "
          f"{sorted(accuracy[1])} vs {sorted(accuracy[2])}")
    merge_results("distributed", {"pgd20_alexnet": {
        "n": args.n, "seconds_1x2": median[1], "seconds_2x1": median[2],
        "speedup": median[1] / median[2], "runs": {str(k): v for k, v in runs.items()},
        "accuracy_equal": accuracy[1] == accuracy[2]}})


if __name__ == "__main__":
    main()
