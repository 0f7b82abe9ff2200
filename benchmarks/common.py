"""Shared helpers for the benchmarks: a trained checkpoint, test data, interleaved timing."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from robustkit import data, models

OUT = Path(__file__).resolve().parent / "out"


def trained(name: str = "alexnet", extra: tuple[str, ...] = ()) -> torch.nn.Module:
    """The default-trained checkpoint ``benchmarks/out/<name>.pt``, trained on first use."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}{''.join(extra).replace('-', '_').replace(' ', '')}.pt"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "robustkit", "train", "--model", name,
                        "--quiet", "--out", str(path), *extra], check=True)
    return models.load(path)


def merge_results(name: str, results: dict) -> Path:
    """Merge ``results`` into ``benchmarks/out/<name>.json`` (parts run with ``--only`` keep
    the others' figures) and return the path."""
    import json

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**previous, **results}, indent=2, default=str))
    print(f"\nwrote {path}")
    return path


def test_images(n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.load_tensors("mnist-5k", "test")
    return x[:n], y[:n]


def interleaved(fns: dict[str, Callable[[], object]], repeat: int = 3
                ) -> tuple[dict[str, float], dict[str, object]]:
    """Run each function ``repeat`` times, interleaved; median seconds and the last result."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    results: dict[str, object] = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}, results


def bare_passes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """``steps`` forward+backward passes with respect to the input only: an attack's floor."""
    for _ in range(steps):
        xv = x.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xv), y)
        torch.autograd.grad(loss, xv)
