"""Adversarial attacks: ``name(model, x, y, *, ...) -> x_adv``.

Every attack takes images in [0, 1] (N, C, H, W) and labels (N,), leaves the model's
modes, parameters, gradients and the input exactly as it found them (also when it
raises), warns on a model in train mode, and checks at the exit that every result lies
in [0, 1] and, for bounded attacks, in the eps-ball.

Attacks are registered by name (``ATTACKS``); :func:`bind` is the one way in for their
options: it turns a name, ``module:function``, a function, a torchattacks object or a
callable ``(x, y) -> x_adv``, the user's options and an eps into a checked call.

Example:
    >>> from robustkit import attacks
    >>> x_adv = attacks.pgd(model, x, y, eps=0.3, alpha=0.01, steps=40, seed=0)  # doctest: +SKIP
    >>> run = attacks.bind("fgsm", model, eps=0.1)                              # doctest: +SKIP
    >>> x_adv = run(x, y)                                                       # doctest: +SKIP
"""

from __future__ import annotations

from robustkit.attacks.apgd import apgd
from robustkit.attacks.binding import (ATTACKS, DISTANCE, AttackSpec, BoundAttack, bind,
                                       check_options, import_attack, spec)
from robustkit.attacks.cw import cw_l2
from robustkit.attacks.deepfool import deepfool
from robustkit.attacks.fab import fab
from robustkit.attacks.fgsm import fgsm
from robustkit.attacks.hop_skip_jump import hop_skip_jump
from robustkit.attacks.minimal import minimal_targeted
from robustkit.attacks.mifgsm import diverse_inputs, mifgsm
from robustkit.attacks.pgd import bim, pgd
from robustkit.attacks.square import square
from robustkit.attacks.threat import THREATS, ThreatModel

for _fn in (fgsm, bim, pgd, apgd, fab, mifgsm, deepfool, cw_l2, square, hop_skip_jump):
    ATTACKS.register(_fn.__name__)(_fn)


def names() -> list[str]:
    """The registered attack names."""
    return ATTACKS.names()


__all__ = ["ATTACKS", "AttackSpec", "BoundAttack", "DISTANCE", "THREATS", "ThreatModel", "apgd",
           "bim",
           "bind", "check_options", "cw_l2", "deepfool", "diverse_inputs", "fab", "fgsm",
           "hop_skip_jump", "import_attack", "mifgsm", "minimal_targeted", "names", "pgd", "spec",
           "square"]
