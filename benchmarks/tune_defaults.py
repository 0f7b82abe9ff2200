"""Choose each model's default training settings on a validation split, not on the test split.

The 4,000 ``mnist-5k`` training images are split (stratified, seed 1) into 3,200 for
training and 800 for validation; each candidate setting is trained on the first and scored
on the second. With ``--folds K`` it is K-fold cross-validation instead (stratified folds of
the training split, one training run per fold), which resolves differences of a few tenths
of a point that one 800-image split cannot. The test split is never read here. The chosen settings are then written
into ``robustkit/models/<name>.py`` by hand, and ``benchmarks/train_targets.py`` measures
them on the test split.

Usage:
    python benchmarks/tune_defaults.py alexnet 'epochs=12,lr=0.05' 'epochs=15,lr=0.03'
    python benchmarks/tune_defaults.py mlp --model-options 'hidden=[512,256]' 'lr=0.05'
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import time

import numpy as np
import torch

from robustkit import data, models
from robustkit.core import accuracy_of
from robustkit.train import fit


def parse_kv(text: str) -> dict:
    """``'a=1,b=[2,3]'`` -> ``{'a': 1, 'b': [2, 3]}`` (values are Python literals or words)."""
    out, depth, cur = {}, 0, ""
    parts = []
    for ch in text:
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    for part in parts:
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("candidates", nargs="+", help="training overrides, e.g. 'epochs=12,lr=0.05'")
    ap.add_argument("--model-options", default="", help="model options, e.g. 'hidden=[256]'")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--folds", type=int, default=0, help="K-fold cross-validation (K >= 2)")
    args = ap.parse_args()

    x, y = data.load_tensors("mnist-5k", split="train")
    if args.folds >= 2:
        # Stratified folds: deal each class's shuffled indices round-robin into K folds.
        rng = np.random.default_rng(1)
        fold_of = np.empty(len(y), dtype=int)
        for c in np.unique(y.numpy()):
            idx = rng.permutation(np.flatnonzero(y.numpy() == c))
            fold_of[idx] = np.arange(len(idx)) % args.folds
        masks = [fold_of == k for k in range(args.folds)]
    else:
        is_val = np.zeros(len(y), dtype=bool)
        is_val[data.stratified_indices(y.numpy(), 800, seed=1)] = True
        masks = [is_val]
    ds = data.spec("mnist-5k")
    base = models.default_training(args.model)
    options = parse_kv(args.model_options) if args.model_options else {}
    for cand in args.candidates:
        cfg = dataclasses.replace(base, **parse_kv(cand))
        accs, secs = [], []
        for seed in (int(s) for s in args.seeds.split(",")):
            correct = 0
            for is_val in masks:
                torch.manual_seed(seed)
                model = models.create(args.model, ds.in_shape, ds.num_classes, ds.mean, ds.std,
                                      **options)
                start = time.perf_counter()
                fit(model, (x[~is_val], y[~is_val]), config=cfg, seed=seed, device="cpu",
                    quiet=True)
                secs.append(time.perf_counter() - start)
                correct += accuracy_of(model, x[is_val], y[is_val]) * is_val.sum()
            accs.append(correct / sum(m.sum() for m in masks))
        print(f"{args.model} {options} {cand}: val acc {np.mean(accs):.4f} "
              f"(seeds {args.seeds}: {', '.join(f'{a:.4f}' for a in accs)}) "
              f"train {np.mean(secs):.1f}s per run, {len(masks)} fold(s)", flush=True)


if __name__ == "__main__":
    main()
