"""The demo ``make demo`` runs: train the three models on the embedded MNIST digits.

Trains logistic, mlp and alexnet with their default settings on ``mnist-5k``, saves the
checkpoints under ``reports/demo/`` and writes a Markdown summary there with the test
accuracies and where each run's record lives. Checkpoints already present are reused,
so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from robustkit import data, models
from robustkit.train import accuracy_of, fit

OUT = Path("reports/demo")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    ds = data.spec("mnist-5k")
    train = data.load_tensors("mnist-5k", "train")
    xt, yt = data.load_tensors("mnist-5k", "test")
    rows = []
    for name in ("logistic", "mlp", "alexnet"):
        path = OUT / f"{name}.pt"
        if path.exists():
            model = models.load(path)
            secs = model.robustkit_metadata.get("train_seconds", float("nan"))
            print(f"{name}: reusing {path}")
        else:
            print(f"{name}: training on {len(train[1])} digits ...", flush=True)
            torch.manual_seed(0)
            model = models.create(name, ds.in_shape, ds.num_classes, ds.mean, ds.std)
            cfg = models.default_training(name)
            start = time.perf_counter()
            history = fit(model, train, (xt, yt), config=cfg, seed=0)
            secs = time.perf_counter() - start
            models.save(model, path, dataset="mnist-5k", seed=0, epochs=cfg.epochs,
                        training=dataclasses.asdict(cfg), train_seconds=secs,
                        test_accuracy=history.final_test_accuracy, history=history.epochs)
        acc = accuracy_of(model.cpu(), xt, yt)
        n_params = sum(p.numel() for p in model.parameters())
        rows.append({"model": name, "parameters": n_params, "test_accuracy": acc,
                     "train_seconds": secs, "checkpoint": str(path)})
        print(f"{name}: test accuracy {acc * 100:.2f}% ({n_params:,} parameters)")
    (OUT / "results.json").write_text(json.dumps(rows, indent=2))
    lines = ["# robustkit demo: three models on mnist-5k", "",
             "| model | parameters | test accuracy | training s |", "|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['parameters']:,} | {r['test_accuracy'] * 100:.2f}% | "
              f"{r['train_seconds']:.1f} |" for r in rows]
    (OUT / "README.md").write_text("\n".join(lines) + "\n")
    print(f"report: {(OUT / 'README.md').resolve()}")


if __name__ == "__main__":
    main()
