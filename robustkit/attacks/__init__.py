"""Adversarial attacks: ``name(model, x, y, *, ...) -> x_adv``.

Every attack takes images in [0, 1] (N, C, H, W) and labels (N,), leaves the model's
modes, parameters, gradients and the input exactly as it found them (also when it
raises), warns on a model in train mode, and checks at the exit that every result lies
in [0, 1] and, for bounded attacks, in the eps-ball.

Attacks are registered by name (``ATTACKS``); :func:`resolve` turns a name, or any
callable ``(x, y) -> x_adv`` such as a torchattacks attack object, into that callable.

Example:
    >>> from robustkit import attacks
    >>> x_adv = attacks.pgd(model, x, y, eps=0.3, alpha=0.01, steps=40, seed=0)  # doctest: +SKIP
    >>> run = attacks.resolve("fgsm", model, eps=0.1)                             # doctest: +SKIP
    >>> x_adv = run(x, y)                                                         # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from robustkit.attacks.base import check_inputs, check_result
from robustkit.attacks.cw import cw_l2
from robustkit.attacks.deepfool import deepfool
from robustkit.attacks.fgsm import fgsm
from robustkit.attacks.minimal import minimal_targeted
from robustkit.attacks.mifgsm import diverse_inputs, mifgsm
from robustkit.attacks.pgd import bim, pgd
from robustkit.attacks.threat import THREATS, ThreatModel
from robustkit.errors import RobustkitError
from robustkit.registry import Registry

AttackFn = Callable[..., torch.Tensor]
Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ATTACKS: Registry[AttackFn] = Registry("attack")
for _fn in (fgsm, bim, pgd, mifgsm, deepfool, cw_l2):
    ATTACKS.register(_fn.__name__)(_fn)

#: Attacks whose result is bounded by an ``eps`` keyword (the others measure a distance).
BOUNDED = ("fgsm", "bim", "pgd", "mifgsm")


def names() -> list[str]:
    """The registered attack names."""
    return ATTACKS.names()


def import_attack(spec: str) -> AttackFn:
    """Import a user's attack ``"package.module:function"`` with robustkit's signature
    ``function(model, x, y, **options) -> x_adv``, so configs and the CLI can name it."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise RobustkitError(f"cannot import attack {spec!r}: {err}") from None
    if not callable(obj):
        raise RobustkitError(f"attack {spec!r} is not callable")
    return obj


def resolve(attack: str | Attack, model: nn.Module | None = None, **kwargs: Any) -> Attack:
    """Turn an attack name or a user's callable into ``(x, y) -> x_adv``.

    Args:
        attack: a registered name or ``"package.module:function"`` (then ``model`` and
            ``kwargs`` are bound to it), or any callable ``(x, y) -> x_adv``, a
            torchattacks attack object included.
        model: the model to attack (named attacks only).
        kwargs: the attack's options, e.g. ``eps=0.3, steps=40``.

    Returns:
        A callable ``(x, y) -> x_adv``. A user's callable is wrapped so that its output
        is checked for shape and [0, 1] (and the eps-ball when ``eps`` and ``norm`` are given).
    """
    if isinstance(attack, str):
        fn = import_attack(attack) if ":" in attack else ATTACKS.get(attack)
        if model is None:
            raise RobustkitError(f"attack {attack!r} needs the model to attack")
        bound = functools.partial(fn, model, **kwargs)
        bound.__name__ = attack  # type: ignore[attr-defined]
        return bound
    if not callable(attack):
        raise RobustkitError(f"an attack must be a registered name or a callable, got {attack!r}")
    eps, norm = kwargs.pop("eps", None), kwargs.pop("norm", "linf")
    if kwargs:
        raise RobustkitError(f"options {sorted(kwargs)} apply to named attacks only")

    @functools.wraps(attack)
    def checked(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_inputs(x, y, what="attack")
        x_adv = attack(x, y)
        if not isinstance(x_adv, torch.Tensor):
            raise RobustkitError(f"the attack returned {type(x_adv).__name__}, not a tensor")
        return check_result(x_adv.detach(), x.detach().to(x_adv.device),
                            eps=eps, norm=norm if eps is not None else None, what="user attack")

    checked.__name__ = getattr(attack, "__name__", type(attack).__name__)
    return checked


__all__ = ["ATTACKS", "BOUNDED", "THREATS", "ThreatModel", "bim", "cw_l2", "deepfool",
           "diverse_inputs", "fgsm", "mifgsm", "minimal_targeted", "names", "pgd", "resolve"]
