"""``robustkit train``: a model (a registered name or a spec: ``torchvision:NAME``,
``timm:NAME``, ``package.module:factory``) trained on a registered dataset and saved as a
checkpoint; thin over :func:`robustkit.train.train_and_save`.

A killed run started again goes on from ``OUT.resume`` (``--fresh`` starts over).

Under torchrun (``python -m torch.distributed.run --nproc-per-node N -m robustkit train
...``) the N processes train one model with DistributedDataParallel: ``--batch-size`` is
the batch of one optimizer step across all of them (each trains on its part of it), so the
learning rate means what it means in one process. Rank 0 alone prints, writes the resume
file and saves the checkpoint (see :mod:`robustkit.train`, "Many processes").

Example:
    robustkit train --model alexnet --dataset mnist-5k --out m.pt
    torchrun --nproc-per-node 2 -m robustkit train --model alexnet --out m.pt
    robustkit train --model alexnet --adversarial pgd --eps 0.3 --out robust.pt
    robustkit train --model mypackage.nets:small_cnn --model-options width=32 --out m.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from robustkit import data, models
from robustkit.adversarial import adversarial_training, as_config
from robustkit.cli import common
from robustkit.config import TrainConfig
from robustkit.core import check_writable
from robustkit.errors import RobustkitError
from robustkit.models.building import check as check_model
from robustkit.train import epoch_line, train_and_save

LOSS_ALIASES = {"ce": "cross_entropy", "cross_entropy": "cross_entropy", "mse": "mse"}

#: The flags that only mean something with ``--adversarial``, and the field each sets.
ADVERSARIAL_FLAGS = {"eps": "eps", "adv_norm": "norm", "adv_steps": "steps"}


def add_parsers(sub: Any) -> None:
    """Add ``train`` to an argparse subparsers object."""
    p = sub.add_parser("train", help="train a model on a dataset and save a checkpoint")
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="a registered model name (robustkit list), torchvision:NAME, "
                        "timm:NAME or package.module:factory")
    p.add_argument("--model-options", type=common.model_options, action="append", default=[],
                   metavar="KEY=VALUE,...",
                   help="the model's options (e.g. width=16 or hidden=[64,32])")
    p.add_argument("--dataset", default="mnist-5k",
                   help="registered dataset name (default mnist-5k)")
    p.add_argument("--epochs", type=common.positive_int, help="default: the model's tuned setting")
    p.add_argument("--batch-size", type=common.positive_int)
    p.add_argument("--lr", type=common.positive_float, help="peak learning rate")
    p.add_argument("--seed", type=common.seed_int, default=0)
    p.add_argument("--train-size", type=common.positive_int,
                   help="train on a stratified, seeded subset of this many examples")
    common.add_device(p)
    p.add_argument("--loss", choices=sorted(LOSS_ALIASES), help="ce (cross-entropy) or mse")
    p.add_argument("--root", help="folder of torchvision datasets")
    p.add_argument("--download", action="store_true", help="let torchvision download a dataset")
    p.add_argument("--amp", default="auto", choices=["auto", "on", "off"],
                   help="mixed precision: auto = float16 on CUDA, bfloat16 on a CPU with native "
                        "bfloat16, else off")
    p.add_argument("--eval-every", type=common.nonneg_int, default=0, metavar="N",
                   help="score the test split every N epochs (default: after the last only)")
    p.add_argument("--adversarial", choices=["fgsm-rs", "pgd", "trades"],
                   help="adversarial training: fgsm-rs (Wong et al. 2020), pgd (Madry et al. "
                        "2017) or trades (Zhang et al. 2019); uses the model's adversarial "
                        "training defaults")
    p.add_argument("--eps", type=common.positive_float,
                   help="with --adversarial: the threat model's radius (default 0.3)")
    p.add_argument("--adv-norm", help="with --adversarial: linf (default) or l2")
    p.add_argument("--adv-steps", type=common.positive_int,
                   help="with --adversarial: inner attack steps (default 10 for pgd and "
                        "trades: 5 masked gradients)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--fresh", action="store_true",
                   help="ignore OUT.resume (the training state an interrupted run left) and "
                        "start over")
    p.add_argument("--out", required=True, help="checkpoint path to write")
    p.set_defaults(func=cmd_train)


def _settings(args: argparse.Namespace) -> tuple[TrainConfig, Any]:
    """The training settings and the adversarial config (None for standard training),
    from the flags given; conflicting flags are refused."""
    given = {field: getattr(args, flag) for flag, field in ADVERSARIAL_FLAGS.items()
             if getattr(args, flag) is not None}
    if args.adversarial is None and given:
        flags = [f"--{f.replace('_', '-')}" for f in ADVERSARIAL_FLAGS
                 if getattr(args, f) is not None]
        verb = "applies" if len(flags) == 1 else "apply"
        raise RobustkitError(f"{' and '.join(flags)} only {verb} with --adversarial (fgsm-rs, "
                             "pgd or trades)")
    adversarial = as_config({"method": args.adversarial, **given}) if args.adversarial else None
    cfg = adversarial_training(args.model) if adversarial else models.default_training(args.model)
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                 "loss": LOSS_ALIASES.get(args.loss) if args.loss else None}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    return cfg, adversarial


def cmd_train(args: argparse.Namespace) -> int:
    """Train, save the checkpoint at ``--out`` and print the test accuracy."""
    start = time.perf_counter()
    ds = data.spec(args.dataset)  # unknown names fail here, before any work
    options = common.merged_options(args)
    # The spec, its options, and (on the meta device) that it runs on the dataset's images
    # and gives its number of logits.
    check_model(args.model, ds.in_shape, ds.num_classes, ds.mean, ds.std, options)
    cfg, adversarial = _settings(args)
    out = check_writable(args.out, "--out")
    common.out_file(f"{args.out}.resume", flag="--out (its resume file)")
    model, history = train_and_save(
        args.model, args.dataset, out, config=cfg, seed=args.seed, train_size=args.train_size,
        options=options, adversarial=adversarial, device=args.device,
        amp={"auto": None, "on": True, "off": False}[args.amp], eval_every=args.eval_every,
        quiet=args.quiet, root=args.root, download=args.download, fresh=args.fresh,
        log=lambda line: print(line, flush=True))
    if args.quiet:
        for record in history.epochs:
            print(epoch_line(record, cfg.epochs))
    acc = history.final_test_accuracy
    acc_text = f"{acc:.4f} ({acc * 100:.2f}%)" if acc is not None else "not measured"
    where = history.device + (f" x {history.processes} processes (DistributedDataParallel)"
                              if history.processes > 1 else "")
    print(f"test accuracy {acc_text} after {cfg.epochs} epochs; "
          f"trained in {history.seconds:.1f}s on {where}, "
          f"{time.perf_counter() - start:.1f}s in all; saved {out}")
    return 0
