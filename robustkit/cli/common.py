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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from robustkit import data, models
from robustkit.core import check_writable, check_writable_dir, pick_device, write_json
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
    p.add_argument("--n", type=positive_int, default=n,
                   help=f"test images, a class-balanced subset (default {n})")
    p.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help="images per call" + (f" (default {batch_size})" if batch_size
                                             else " (default: sized by memory)"))
    p.add_argument("--dataset", help="default: the checkpoint's dataset")
    p.add_argument("--root", help="folder of torchvision datasets")


def add_attack_args(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    """The flags of the commands that run an attack: the attack, its options, images."""
    if checkpoint:
        p.add_argument("--checkpoint", required=True)
    p.add_argument("--attack", default="pgd",
                   help="registered name (fgsm, bim, pgd, mifgsm, deepfool, cw_l2) or "
                        "package.module:function (default pgd)")
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
               flag: str = "--checkpoint") -> nn.Module:
    """The checkpoint's model on ``device``, in eval mode."""
    return models.load(checkpoint_file(path, flag), device=pick_device(device))


def images_for(args: argparse.Namespace, model: nn.Module
                ) -> tuple[str, torch.Tensor, torch.Tensor]:
    """``args.n`` test images of ``args.dataset`` (default: the model's), class-balanced.

    Returns:
        The dataset's name, images (N, C, H, W) in [0, 1] and labels (N,).
    """
    meta: dict[str, Any] = getattr(model, "robustkit_metadata", None) or {}
    dataset = args.dataset or meta.get("dataset") or "mnist-5k"
    x, y = data.load_tensors(dataset, "test", root=args.root)
    if args.n > len(y):
        raise RobustkitError(f"--n {args.n} is larger than {dataset}'s test split ({len(y)})")
    if args.n < len(y):  # a fixed, class-balanced subset (the split itself is ordered by class)
        keep = torch.from_numpy(data.stratified_indices(y.numpy(), args.n, seed=0))
        x, y = x[keep], y[keep]
    return dataset, x, y


def check_dataset(name: str | None) -> None:
    """Refuse an unknown ``--dataset`` (the valid names listed) before anything loads."""
    if name is not None:
        data.spec(name)


def load_for_attack(args: argparse.Namespace
                    ) -> tuple[nn.Module, str, torch.Tensor, torch.Tensor]:
    """The checkpoint's model on the chosen device and ``args.n`` test images."""
    check_dataset(args.dataset)
    model = load_model(args.checkpoint, args.device)
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
        if _same(p, i):
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
    """Write ``payload`` as JSON to ``path`` (atomically; NaN becomes null), if given."""
    if path is not None:
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
