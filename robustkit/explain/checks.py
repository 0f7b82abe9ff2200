"""Refuse models that captum's hook-based explainers would explain wrongly, naming the module.

Guided backprop rewrites the gradient of every ``nn.ReLU`` module and DeepLift that of
every nonlinearity module, through one hook per module instance. Three model patterns
defeat that without any error from captum (captum's documentation warns about each):

1. an activation module instance used twice in one forward pass (the hook sees two
   inputs but keeps one);
2. an activation written as a function in ``forward`` (``F.relu(x)``, ``x.relu()``):
   no module, so no hook, so a plain gradient passes through;
3. for layer-wise relevance propagation (LRP), ``nn.Flatten``, for which captum has no
   rule.

Detection runs one forward pass of one example (:mod:`robustkit.explain.probe`).

Example:
    >>> check_model(models.create("alexnet"), x)          # doctest: +SKIP
    >>> check_model(net_with_functional_relu, x)          # doctest: +SKIP
    Traceback (most recent call last):
    RobustkitError: ... calls relu as a function in Net.forward ...
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from robustkit.core import borrowed, check_inputs, model_device
from robustkit.errors import RobustkitError
from robustkit.explain.probe import ACTIVATIONS, Probe, probe


def check_model(model: nn.Module, x: torch.Tensor, *,
                activations: Iterable[type[nn.Module]] = tuple(ACTIVATIONS),
                lrp: bool = False, method: str = "hook-based explainers") -> None:
    """Raise :class:`RobustkitError` naming the module if ``model`` has a captum trap.

    Args:
        model: the classifier; its modes are restored afterwards.
        x: images (N, C, H, W) in [0, 1]; the first one is run.
        activations: the activation module types the method hooks (guided backprop:
            ``nn.ReLU`` only; DeepLift: every type in ``probe.ACTIVATIONS``).
        lrp: also refuse ``nn.Flatten`` (captum's LRP has no rule for it).
        method: the method's name, for the message.
    """
    check_inputs(x, None, what="check_model")
    with borrowed(model, what="check_model"):
        found = probe(model, x[:1].detach().to(model_device(model, x)))
    refuse_traps(model, found, tuple(activations), lrp=lrp, method=method)


def refuse_traps(model: nn.Module, found: Probe, activations: tuple[type[nn.Module], ...], *,
                 lrp: bool = False, method: str = "hook-based explainers") -> None:
    """The checks of :func:`check_model` on an existing probe of ``model``."""
    modules = dict(model.named_modules())

    def label(name: str) -> str:
        return f"{type(model).__name__}.forward" if name == "" else f"{name!r}.forward"

    for name, count in found.calls.items():
        module = modules[name]
        if count > 1 and isinstance(module, activations):
            raise RobustkitError(
                f"{method}: the activation module {name!r} ({type(module).__name__}) runs "
                f"{count} times in one forward pass; captum hooks each module once, so give "
                f"every use its own instance")
    functions = frozenset().union(*(ACTIVATIONS.get(t, frozenset()) for t in activations))
    for name, function in found.functional:
        if function in functions:
            raise RobustkitError(
                f"{method}: {label(name)} calls {function} as a function; captum's hooks "
                f"only see activation modules, so use a module (e.g. nn.ReLU) instead")
    if lrp:
        for name, module in modules.items():
            if isinstance(module, nn.Flatten):
                raise RobustkitError(
                    f"{method}: module {name!r} is nn.Flatten, for which captum's LRP has no "
                    f"rule; flatten with x.flatten(1) in forward or set a rule on it")
