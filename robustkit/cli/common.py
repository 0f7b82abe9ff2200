"""What the ``robustkit`` commands share: the parser class, number parsers, the attack
flags and the options they make, checkpoints and test images, and output paths checked
before any work.

Every check here raises :class:`RobustkitError` (or, while parsing, an argparse error):
the command line prints it as one line, ``robustkit: error: ...``, and exits with status 2.

Example:
    >>> positive_int("3")
    3
    >>> option_pair("overshoot=0.05")
    ('overshoot', 0.05)
"""

from __future__ import annotations

import argparse
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from robustkit import data, models
from robustkit.attacks import ATTACKS
from robustkit.core import (check_writable, check_writable_dir, distributed, pick_device,
                            sha256, write_json)
from robustkit.core.resume import BlockStore
from robustkit.errors import RobustkitError

#: Devices a command can run on (``auto``: CUDA, then MPS, then the CPU).
DEVICES = ["auto", "cpu", "cuda", "mps"]

#: Attack options that have a flag of their own; ``--option KEY=VALUE`` gives any other.
ATTACK_FLAGS = ("steps", "alpha", "norm", "restarts")

#: The radius of ``robustkit attack`` for attacks that take one, when ``--eps`` is omitted.
DEFAULT_EPS = 0.3


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the hint to --help included), exit 2.

    Subparsers are made of the same class, so every subcommand answers the same way.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"robustkit: error: {message} (see '{self.prog} --help')\n")


def number(kind: type, ok: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """An argparse type: parse ``kind`` and require ``ok(value)``, else say ``rule``.

    Args:
        kind: ``int`` or ``float``.
        ok: the range check.
        rule: the message when ``ok`` fails, e.g. ``"must be an integer >= 1"``.
    """

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {value}")
        return value

    parse.__name__ = f"{kind.__name__}_parser"  # argparse names the type in some messages
    return parse


positive_int = number(int, lambda v: v >= 1, "must be an integer >= 1")
nonneg_int = number(int, lambda v: v >= 0, "must be an integer >= 0")
seed_int = number(int, lambda v: 0 <= v < 2 ** 63, "must be an integer in [0, 2**63)")
positive_float = number(float, lambda v: math.isfinite(v) and v > 0, "must be finite and > 0")
nonneg_float = number(float, lambda v: math.isfinite(v) and v >= 0, "must be finite and >= 0")


def eps_list(text: str) -> list[float]:
    """An argparse type: comma-separated radii, each finite and >= 0, none twice."""
    values = [nonneg_float(t.strip()) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"needs at least one radius, got {text!r}")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"lists {', '.join(f'{v:g}' for v in twice)} twice")
    return values


def norm_list(text: str) -> list[str]:
    """An argparse type: ``l2``, ``linf`` or both, comma-separated."""
    values = [t.strip() for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"names no norm, got {text!r}")
    for v in values:
        if v not in ("l2", "linf"):
            raise argparse.ArgumentTypeError(f"takes l2 and/or linf, got {v!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"names a norm twice: {text!r}")
    return values


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def option_value(text: str) -> Any:
    """``true``/``false`` as bools, then an int, then a finite float, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def option_pair(text: str) -> tuple[str, Any]:
    """An argparse type for ``--option KEY=VALUE``: the key and its parsed value."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key) or not value.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. steps=20), got {text!r}")
    return key, option_value(value.strip())


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto (default): CUDA, then MPS, then the CPU")


def add_images(p: argparse.ArgumentParser, n: int, batch_size: int | None) -> None:
    """The flags that choose test images: --n, --batch-size, --dataset, --root."""
    # --images: under torchrun, whose own parser takes "--n" for an abbreviation of its
    # --nnodes/--nproc-per-node and refuses it as ambiguous.
    p.add_argument("--n", "--images", dest="n", type=positive_int, default=n,
                   help=f"test images, a class-balanced subset (default {n})")
    p.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help="images per call" + (f" (default {batch_size})" if batch_size
                                             else " (default: sized by memory)"))
    p.add_argument("--dataset", help="default: the checkpoint's dataset")
    p.add_argument("--root", help="folder of torchvision datasets")


def float_list(text: str) -> list[float]:
    """An argparse type: comma-separated finite numbers (``0.49,0.48,0.45``)."""
    values = []
    for t in text.split(","):
        try:
            value = float(t.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got "
                                             f"{text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
        values.append(value)
    return values


def _split_top(text: str) -> list[str]:
    """``text`` split at the commas outside brackets (``a=1,b=[2,3]`` -> two parts)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [t.strip() for t in parts if t.strip()]


def model_options(text: str) -> dict[str, Any]:
    """An argparse type for ``--model-options``: ``KEY=VALUE,...``; a value is true/false,
    an integer, a number, text, or a list in brackets (``channels=[8,16]``)."""
    options: dict[str, Any] = {}
    for part in _split_top(text):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY.fullmatch(key) or not value:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE,... (e.g. num_classes=10), "
                                             f"got {part!r}")
        if key in options:
            raise argparse.ArgumentTypeError(f"gives {key} twice")
        if value.startswith("[") and value.endswith("]"):
            options[key] = [option_value(v) for v in _split_top(value[1:-1])]
        else:
            options[key] = option_value(value)
    if not options:
        raise argparse.ArgumentTypeError(f"names no option, got {text!r}")
    return options


def output_key(text: str) -> str | int:
    """An argparse type for ``--output``: an integer is an index, anything else a key."""
    try:
        return int(text)
    except ValueError:
        if not text.strip():
            raise argparse.ArgumentTypeError("expected a key or an index") from None
        return text


#: The flags that describe a model given by spec, which apply only with --model.
MODEL_FLAGS = ("model_options", "weights", "mean", "std", "output")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--checkpoint FILE`` or ``--model SPEC`` (one of them, not both), and the flags
    that describe a model by spec: --model-options, --weights, --mean, --std, --output;
    and --trust-factory for a checkpoint of a ``package.module:factory`` model."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a robustkit checkpoint (robustkit train)")
    source.add_argument("--model", metavar="SPEC",
                        help="a model by spec instead of a checkpoint: a registered name, "
                             "torchvision:NAME, timm:NAME or package.module:factory (needs "
                             "--dataset)")
    p.add_argument("--model-options", type=model_options, action="append", default=[],
                   metavar="KEY=VALUE,...",
                   help="with --model: the constructor's options (e.g. num_classes=10)")
    p.add_argument("--weights", metavar="FILE",
                   help="with --model: a state dict file (torch.save(model.state_dict())), "
                        "read with weights_only; default: random weights")
    p.add_argument("--mean", type=float_list, metavar="M1,M2,...",
                   help="with --model: the per-channel mean the model's inputs were "
                        "normalized with (a Normalize goes in front; with --std)")
    p.add_argument("--std", type=float_list, metavar="S1,S2,...",
                   help="with --model: the per-channel std (with --mean)")
    p.add_argument("--output", type=output_key, metavar="KEY",
                   help="with --model: where the logits are in the model's output: a key "
                        "of a dict or attribute, or an index of a tuple")
    p.add_argument("--trust-factory", action="append", default=[], metavar="SPEC",
                   help="with --checkpoint: let a checkpoint of a package.module:factory "
                        "model import and call that factory (repeatable)")


def merged_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--model-options`` given, merged; a key given twice is refused."""
    merged: dict[str, Any] = {}
    for options in getattr(args, "model_options", None) or []:
        for key, value in options.items():
            if key in merged:
                raise RobustkitError(f"--model-options gives {key} twice")
            merged[key] = value
    return merged


def check_model_args(args: argparse.Namespace) -> None:
    """The model flags agree: --model needs --dataset; the flags of a model by spec only
    with --model; --mean and --std together; the spec, its options and the weights file
    exist. Nothing is built."""
    spec = getattr(args, "model", None)
    given = [f"--{k.replace('_', '-')}" for k in MODEL_FLAGS if getattr(args, k, None)]
    if spec is None:
        if given:
            raise RobustkitError(f"{given[0]} only applies with --model (a model by spec), "
                                 f"not with --checkpoint")
        return
    if getattr(args, "trust_factory", None):
        raise RobustkitError("--trust-factory applies to --checkpoint; --model names the "
                             "factory itself")
    if not args.dataset:
        raise RobustkitError("--model needs --dataset (it gives the images' shape and the "
                             "number of classes)")
    if (args.mean is None) != (args.std is None):
        raise RobustkitError(f"--{'mean' if args.std is None else 'std'} needs "
                             f"--{'std' if args.std is None else 'mean'} too")
    models.check_spec(spec)
    models.check_options(spec, merged_options(args))
    if args.weights is not None:
        w = Path(args.weights)
        if w.is_dir():
            raise RobustkitError(f"--weights {w} is a folder, not a state dict file")
        if not w.exists():
            raise RobustkitError(f"--weights: file {w} does not exist")


def model_from_args(args: argparse.Namespace, device: str | torch.device) -> nn.Module:
    """The model the flags name: the checkpoint's, or one built by spec for
    ``--dataset``'s images (its weights from ``--weights``), on ``device``, in eval mode."""
    check_model_args(args)
    if getattr(args, "model", None) is None:
        return load_model(args.checkpoint, device,
                          trust=getattr(args, "trust_factory", None) or ())
    ds = data.spec(args.dataset)
    if args.weights is None:
        warnings.warn(f"--model {args.model} without --weights: the model has random weights",
                      stacklevel=2)
    model = models.build(args.model, ds.in_shape, ds.num_classes, args.mean, args.std,
                         merged_options(args), output=args.output, weights=args.weights,
                         device=pick_device(device))
    return model.eval()


def model_record(args: argparse.Namespace) -> dict[str, Any]:
    """What a command's JSON records of its model: the checkpoint, or the spec and the
    flags that describe it."""
    if getattr(args, "model", None) is None:
        return {"checkpoint": args.checkpoint}
    return {"checkpoint": None,
            "model": {"spec": args.model, "options": merged_options(args),
                      "weights": args.weights, "mean": args.mean, "std": args.std,
                      "output": args.output}}


def resume_store(out: Path | None, args: argparse.Namespace,
                 what: dict[str, Any]) -> BlockStore | None:
    """The finished blocks of this command's computation, in ``OUT.parts/`` (None without
    ``--out``): fingerprinted by ``what``, the model (its files' SHA-256), the seed and the
    batch size, so blocks of another computation are refused, never mixed in."""
    if out is None:
        return None
    files = {str(f): sha256(Path(f).read_bytes()) for f in model_inputs(args)}
    model = model_record(args) if hasattr(args, "checkpoint") else {}
    fingerprint = {**what, **model, "model_files": files, "seed": getattr(args, "seed", None),
                   "batch_size": args.batch_size}
    return BlockStore(out.with_name(out.name + ".parts"), fingerprint,
                      fresh=getattr(args, "fresh", False))


def model_inputs(args: argparse.Namespace) -> list[str]:
    """The model's input files (the checkpoint or the weights), for the output checks."""
    return [f for f in (getattr(args, "checkpoint", None), getattr(args, "weights", None))
            if f]


def add_attack_args(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    """The flags of the commands that run an attack: the model (``--checkpoint`` or
    ``--model``), the attack, its options, images."""
    if checkpoint:
        add_model_args(p)
    p.add_argument("--attack", default="pgd",
                   help=f"registered name ({', '.join(ATTACKS.names())}) or "
                        "package.module:function (default pgd); the robust accuracy to "
                        "report comes from robustkit autoattack")
    p.add_argument("--steps", type=positive_int, help="iterations (the attack's default if "
                                                      "omitted)")
    p.add_argument("--alpha", type=nonneg_float, help="step size (the attack's default if "
                                                      "omitted)")
    p.add_argument("--norm", help="threat model, linf or l2 (the attack's default if omitted)")
    p.add_argument("--restarts", type=positive_int, help="random restarts (pgd)")
    p.add_argument("--option", type=option_pair, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="any other option of the attack, repeatable (values are read as "
                        "true/false, integers, numbers or text); an option the attack does "
                        "not take is refused")
    add_images(p, n=1000, batch_size=500)
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seeds the attack's randomness where it takes a seed (default 0)")
    add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def user_options(args: argparse.Namespace) -> dict[str, Any]:
    """The attack options from the flags the user gave, and only those (no eps, no seed).

    Raises:
        RobustkitError: ``--option`` repeats a key, or gives one that has its own flag.
    """
    options = {k: getattr(args, k) for k in ATTACK_FLAGS if getattr(args, k, None) is not None}
    given: set[str] = set()
    for key, value in getattr(args, "option", None) or []:
        if key in ("eps", "seed"):
            raise RobustkitError(f"--option {key}: give it with --{key}")
        if key in ATTACK_FLAGS:
            raise RobustkitError(f"--option {key}: give it with --{key}")
        if key in given:
            raise RobustkitError(f"--option {key} is given twice")
        given.add(key)
        options[key] = value
    return options


def checkpoint_file(path: str | Path, flag: str = "--checkpoint") -> Path:
    """``path`` as an existing checkpoint file; a folder or a missing path is refused."""
    p = Path(path)
    if p.is_dir():
        raise RobustkitError(f"{flag} {p} is a folder, not a checkpoint file")
    if not p.exists():
        raise RobustkitError(f"{flag}: checkpoint {p} does not exist")
    return p


def load_model(path: str | Path, device: str | torch.device = "cpu",
               flag: str = "--checkpoint", trust: Iterable[str] = ()) -> nn.Module:
    """The checkpoint's model on ``device``, in eval mode (``trust``: the
    ``package.module:factory`` specs it may call; :func:`robustkit.models.load`)."""
    return models.load(checkpoint_file(path, flag), device=pick_device(device),
                       trust=list(trust))


def images_for(args: argparse.Namespace, model: nn.Module
                ) -> tuple[str, Any, torch.Tensor | None]:
    """``args.n`` test images of ``args.dataset`` (default: the model's), class-balanced.

    Returns:
        The dataset's name, then images (N, C, H, W) in [0, 1] and labels (N,); for an
        image folder, a Dataset of the chosen images and None: read one image at a time,
        never loaded whole.
    """
    meta: dict[str, Any] = getattr(model, "robustkit_metadata", None) or {}
    dataset = args.dataset or meta.get("dataset") or "mnist-5k"
    if data.spec(dataset).open is not None:  # an image folder: streamed
        folder = data.dataset(dataset, "test", root=args.root)
        labels = np.asarray(getattr(folder, "targets"))
        _check_n(args.n, len(labels), dataset)
        chosen = (data.stratified_indices(labels, args.n, seed=0) if args.n < len(labels)
                  else np.arange(len(labels)))
        return dataset, Subset(folder, np.sort(chosen).tolist()), None
    x, y = data.load_tensors(dataset, "test", root=args.root)
    _check_n(args.n, len(y), dataset)
    if args.n < len(y):  # a fixed, class-balanced subset (100 per class in mnist-5k)
        keep = torch.from_numpy(data.stratified_indices(y.numpy(), args.n, seed=0))
        x, y = x[keep], y[keep]
    return dataset, x, y


def _check_n(n: int, available: int, dataset: str) -> None:
    if n > available:
        raise RobustkitError(f"--n {n} is larger than {dataset}'s test split ({available})")


def count(x: Any, y: torch.Tensor | None) -> int:
    """The number of images :func:`images_for` chose."""
    return len(y) if y is not None else len(x)


def data_of(x: Any, y: torch.Tensor | None) -> Any:
    """What :func:`images_for` chose, as the evaluations take it: ``(x, y)`` or a Dataset."""
    return x if y is None else (x, y)


def check_dataset(name: str | None) -> None:
    """Refuse an unknown ``--dataset`` (the valid names listed) before anything loads."""
    if name is not None:
        data.spec(name)


def load_for_attack(args: argparse.Namespace
                    ) -> tuple[nn.Module, str, Any, torch.Tensor | None]:
    """The model (``--checkpoint``, or ``--model`` by spec) on the chosen device and
    ``args.n`` test images."""
    check_dataset(args.dataset)
    model = model_from_args(args, args.device)
    dataset, x, y = images_for(args, model)
    return model, dataset, x, y


def _same(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def out_file(path: str | Path | None, inputs: Iterable[str | Path] = (),
             flag: str = "--out") -> Path | None:
    """Check an output file before any work: not a folder, not under a file, writable,
    and not one of the command's input files. None passes (no output asked for)."""
    if path is None:
        return None
    p = check_writable(path, flag)
    for i in inputs:
        if i is not None and _same(p, i):  # None: an input not given (--model, no file)
            raise RobustkitError(f"{flag} {p} is also an input of this command; it would be "
                                 "overwritten")
    return p


def out_dir(path: str | Path, inputs: Iterable[str | Path] = (), flag: str = "--out") -> Path:
    """Check an output folder before any work: not a file, not under a file, writable,
    and none of the command's input folders."""
    p = check_writable_dir(path, flag)
    for i in inputs:
        if _same(p, i):
            raise RobustkitError(f"{flag} {p} is also an input of this command; its files "
                                 "would be overwritten")
    return p


def write_out(path: Path | None, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` (atomically; NaN becomes null), if given; under
    torchrun rank 0 alone writes."""
    if path is not None and distributed.is_main():
        write_json(path, payload)
        print(f"wrote {path}")


def checkpoint_names(paths: Sequence[str]) -> dict[str, str]:
    """A short, unique display name per distinct checkpoint: its stem, or as many trailing
    folders as it takes to tell checkpoints with the same stem apart (``a/mlp``, ``b/mlp``)."""
    distinct = list(dict.fromkeys(Path(p).resolve() for p in paths))
    names = {}
    for path in distinct:
        for depth in range(1, len(path.parts) + 1):
            name = "/".join([*path.parts[-depth:-1], path.stem])
            clash = [o for o in distinct if o != path
                     and "/".join([*o.parts[-depth:-1], o.stem]) == name]
            if not clash:
                break
        names[path] = name
    return {p: names[Path(p).resolve()] for p in paths}
