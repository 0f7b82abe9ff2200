"""Adversarial training of alexnet on mnist-5k: the issue's acceptance figures, and tuning.

``measure`` (the default) trains alexnet on the 4,000 mnist-5k training images, standard and
with each adversarial method (``pgd``, ``fgsm-rs``, ``trades``) at Linf eps 0.3, each with
:func:`robustkit.adversarial.adversarial_training`'s settings, times the training (wall
clock of ``fit``; the CPU's default threads), and scores each model on the 1,000-image test
split: clean accuracy and PGD-40 with 5 restarts (step 0.01 = 2.5 * eps / 40, per example
the worst of the restarts). The robust models also get
:func:`robustkit.evaluate.validity_checks`. ``fgsm-rs`` is run twice, with its guard and
without, to show whether the guard prevents catastrophic overfitting. Results go to
``benchmarks/out/robust_training.json`` (config, seed, versions, device beside the figures);
each run replaces its own entry there, so the runs can be measured one at a time
(``--methods pgd``) and interleaved with other timing runs on a shared machine.

Acceptance (issue 7): pgd >= 97% clean and >= 80% under PGD-40x5, trained in <= 10 minutes
on the 2-core CPU; the standard model below 5% under the same attack.

``tune`` chooses the training settings on a validation split of the *training* data
(3,200 train / 800 validation, stratified, seed 1, as ``benchmarks/tune_defaults.py``);
the test split is never read. Each candidate is a comma-separated list of TrainConfig and
AdversarialConfig fields.

Measured here (2-core CPU with native bfloat16, seed 0, 1,000 test images; the machine was
shared, so wall times of runs slowed by other jobs are given with their uncontended
per-epoch median):

    run                clean   PGD-40x5  training                       validity checks
    standard (24 ep)   98.7%     0.2%    1.7 s/epoch                    -
    pgd                97.2%    88.4%    317 s (`robustkit train` CLI)  all pass
    trades             96.9%    85.9%    371 s                          all pass
    fgsm-rs            98.5%     1.2%    4.1 s/epoch (40 epochs)        more steps help: FAIL
    fgsm-rs, no guard  98.4%     0.4%    3.5 s/epoch                    -

These rows are the PGD-5 recipe. Since issue 14 the pgd and trades inner attack takes 10
steps (PGD-5 masked gradients: see ``AdversarialConfig.steps``): pgd then trained in
429 s alone with `robustkit train` (97.7% clean), still within issue 7's 10 minutes.

fgsm-rs overfits catastrophically from the start here (FGSM accuracy 94%, PGD 1%): its
held-out PGD-10 accuracy creeps up to 0.42 and never falls, so the guard has no robust
weights to give back and never restores. Its single-step probe (``guard_gap``) warns
instead: in a 10-epoch run, after epoch 7, single step 0.65 against PGD 0.06.

Usage:
    python benchmarks/robust_training.py measure [--methods standard,pgd,fgsm-rs,trades]
    python benchmarks/robust_training.py tune 'method=pgd,steps=5,epochs=30,lr=0.002' ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tune_defaults import parse_kv
from robustkit import data, models
from robustkit.adversarial import adversarial_training, checkpoint_metadata
from robustkit.attacks import pgd
from robustkit.config import AdversarialConfig, TrainConfig
from robustkit.models.checkpoint import versions
from robustkit.core import accuracy_of, predict
from robustkit.train import fit

OUT = Path(__file__).resolve().parent / "out"
EPS = 0.3
ADV_FIELDS = {f.name for f in dataclasses.fields(AdversarialConfig)}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def pgd_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                 steps: int, restarts: int, batch_size: int = 500, seed: int = 0) -> float:
    """Accuracy under PGD (worst of ``restarts``), counting only examples right when clean."""
    robust = []
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        x_adv = pgd(model, xb, yb, eps=eps, steps=steps, restarts=restarts, seed=seed + i)
        clean_ok = predict(model, xb).argmax(1) == yb
        adv_ok = predict(model, x_adv).argmax(1) == yb
        robust.append(clean_ok & adv_ok)
    return torch.cat(robust).float().mean().item()


def split_candidate(text: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``'method=pgd,epochs=30,dropout=0.3'`` -> (train overrides, adversarial, model options)."""
    kv = parse_kv(text)
    train = {k: v for k, v in kv.items() if k in TRAIN_FIELDS}
    adv = {k: v for k, v in kv.items() if k in ADV_FIELDS}
    options = {k: v for k, v in kv.items() if k not in TRAIN_FIELDS | ADV_FIELDS}
    return train, adv, options


def tune(args: argparse.Namespace) -> None:
    x, y = data.load_tensors("mnist-5k", split="train")
    is_val = np.zeros(len(y), dtype=bool)
    is_val[data.stratified_indices(y.numpy(), 800, seed=1)] = True
    x_tr, y_tr = x[~is_val], y[~is_val]
    x_val, y_val = x[is_val], y[is_val]
    ds = data.spec("mnist-5k")
    out = Path(args.out) if args.out else None
    for cand in args.candidates:
        train_kw, adv_kw, options = split_candidate(cand)
        base = adversarial_training(args.model) if adv_kw.get("method") else \
            models.default_training(args.model)
        cfg = dataclasses.replace(base, **train_kw)
        adv = {"eps": EPS, **adv_kw} if adv_kw.get("method") else None
        for seed in (int(s) for s in args.seeds.split(",")):
            torch.manual_seed(seed)
            model = models.create(args.model, ds.in_shape, ds.num_classes, ds.mean, ds.std,
                                  **options)
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                history = fit(model, (x_tr, y_tr), config=cfg, seed=seed, device=args.device,
                              quiet=True, adversarial=adv)
            seconds = time.perf_counter() - start
            model = model.float()
            record = {
                "model": args.model, "candidate": cand, "seed": seed,
                "training": dataclasses.asdict(cfg), "options": options,
                **checkpoint_metadata(history), "seconds": seconds, "device": history.device,
                "amp": history.amp, "epochs_run": len(history.epochs),
                "guard_curve": [e.get("guard_accuracy") for e in history.epochs],
                "warnings": [str(w.message) for w in caught
                             if "adversarial training" in str(w.message)],
                "val_clean": accuracy_of(model, x_val, y_val),
                "val_pgd20": pgd_accuracy(model, x_val, y_val, eps=EPS, steps=20, restarts=1,
                                          seed=seed),
            }
            print(f"{cand} seed {seed}: val clean {record['val_clean']:.4f}  "
                  f"val PGD-20 {record['val_pgd20']:.4f}  {seconds:.1f}s  "
                  f"guard {record['guard_curve']}", flush=True)
            if out:
                with out.open("a") as f:
                    f.write(json.dumps(record) + "\n")


def measure(args: argparse.Namespace) -> None:
    from robustkit.evaluate import validity_checks

    x, y = data.load_tensors("mnist-5k", split="train")
    xt, yt = data.load_tensors("mnist-5k", split="test")
    ds = data.spec("mnist-5k")
    runs: dict[str, dict[str, Any] | None] = {
        "standard": None,
        "pgd": {"method": "pgd", "eps": EPS},
        "fgsm-rs": {"method": "fgsm-rs", "eps": EPS},
        "fgsm-rs-unguarded": {"method": "fgsm-rs", "eps": EPS, "guard": False},
        "trades": {"method": "trades", "eps": EPS},
    }
    wanted = args.methods.split(",")
    results = {"versions": versions(), "torch_threads": torch.get_num_threads(),
               "seed": args.seed, "eps": EPS, "norm": "linf", "runs": {}}
    OUT.mkdir(parents=True, exist_ok=True)
    dest = Path(args.out) if args.out else OUT / "robust_training.json"
    if dest.exists():  # keep the runs measured earlier, replace those measured now
        results["runs"] = json.loads(dest.read_text()).get("runs", {})
    for name in wanted:
        adv = runs[name]
        cfg = (adversarial_training("alexnet") if adv else models.default_training("alexnet"))
        torch.manual_seed(args.seed)
        model = models.create("alexnet", ds.in_shape, ds.num_classes, ds.mean, ds.std)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            history = fit(model, (x, y), config=cfg, seed=args.seed, device=args.device,
                          quiet=True, adversarial=adv)
            seconds = time.perf_counter() - start
        model = model.float().cpu().eval()
        models.save(model, OUT / f"alexnet_{name}.pt", dataset="mnist-5k", seed=args.seed,
                    training=dataclasses.asdict(cfg), train_seconds=seconds,
                    history=history.epochs, **checkpoint_metadata(history))
        start = time.perf_counter()
        clean = accuracy_of(model, xt, yt)
        robust = pgd_accuracy(model, xt, yt, eps=EPS, steps=40, restarts=5, seed=args.seed)
        eval_seconds = time.perf_counter() - start
        record: dict[str, Any] = {
            "training": dataclasses.asdict(cfg), **checkpoint_metadata(history),
            "train_seconds": seconds, "device": history.device, "amp": history.amp,
            "epochs_run": len(history.epochs),
            # The machine is shared: epochs slowed by other jobs show up against the median.
            "epoch_seconds_median": float(np.median([e["seconds"] for e in history.epochs])),
            "guard_curve": [e.get("guard_accuracy") for e in history.epochs],
            "warnings": [str(w.message) for w in caught
                         if "adversarial training" in str(w.message)],
            "test_clean": clean, "test_pgd40x5": robust, "eval_seconds": eval_seconds,
        }
        if name in args.validity.split(","):
            record["validity"] = validity_checks(model, xt, yt, eps=EPS, steps=20,
                                                 seed=args.seed, progress=False)
        results["runs"][name] = record
        print(f"{name:18s} clean {clean * 100:6.2f}%  PGD-40x5 {robust * 100:6.2f}%  "
              f"train {seconds:6.1f}s ({len(history.epochs)} epochs)  "
              f"guard events {len(record.get('guard') or [])}"
              + (f"  validity {'pass' if record['validity']['passed'] else 'FAIL'}"
                 if "validity" in record else ""), flush=True)
        dest.write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {dest}")
    pgd_run = results["runs"].get("pgd")
    if pgd_run:
        ok = (pgd_run["test_clean"] >= 0.97 and pgd_run["test_pgd40x5"] >= 0.80
              and pgd_run["train_seconds"] <= 600)
        print(f"acceptance (pgd >= 97% clean, >= 80% PGD-40x5, <= 600 s): "
              f"{'met' if ok else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    m = sub.add_parser("measure")
    m.add_argument("--methods", default="standard,pgd,fgsm-rs,fgsm-rs-unguarded,trades")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--device", default="cpu")
    m.add_argument("--validity", default="pgd,fgsm-rs,trades",
                   help="the runs to give validity checks")
    m.add_argument("--out")
    t = sub.add_parser("tune")
    t.add_argument("candidates", nargs="+")
    t.add_argument("--model", default="alexnet")
    t.add_argument("--seeds", default="0")
    t.add_argument("--device", default="cpu")
    t.add_argument("--out", help="JSON-lines file to append the records to")
    args = ap.parse_args(sys.argv[1:] if len(sys.argv) > 1 and sys.argv[1] in ("measure", "tune")
                         else ["measure", *sys.argv[1:]])
    (tune if args.command == "tune" else measure)(args)


if __name__ == "__main__":
    main()
