"""One instrumented forward pass that tells the explainers what a model does.

Captum's hook-based methods (guided backprop, DeepLift) attach one hook per activation
*module*; what they cannot see (an activation module used twice, an activation written
as ``F.relu`` in ``forward``) silently gives wrong attributions. Grad-CAM needs the last
convolution that runs, and batching needs the memory one example's activations take.
:func:`probe` learns all of that from a single forward pass of one example:

- forward hooks on every submodule record the order in which modules finish and how
  often each runs;
- a ``TorchFunctionMode`` sees every torch function call, so an activation function
  called while the innermost running module is not an activation module is caught, also
  inside data-dependent control flow that ``torch.fx`` tracing cannot follow.

Limitation: only what runs on the probed example is seen (a branch the example does not
take stays unchecked), and an activation spelled as arithmetic (``x.clamp(min=0)``,
``x * (x > 0)``) is not recognised as one.

Example:
    >>> p = probe(model, x[:1])                        # doctest: +SKIP
    >>> p.num_classes, p.last_of(nn.Conv2d)            # doctest: +SKIP
    (10, 'conv5')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from robustkit.errors import RobustkitError

#: Activation (and pooling) module types whose gradients captum's hook-based methods
#: rewrite, each with the names of the torch functions that compute the same thing.
ACTIVATIONS: dict[type[nn.Module], frozenset[str]] = {
    nn.ReLU: frozenset({"relu", "relu_"}),
    nn.ELU: frozenset({"elu", "elu_"}),
    nn.LeakyReLU: frozenset({"leaky_relu", "leaky_relu_"}),
    nn.Sigmoid: frozenset({"sigmoid", "sigmoid_"}),
    nn.Tanh: frozenset({"tanh", "tanh_"}),
    nn.Softmax: frozenset({"softmax"}),
    nn.MaxPool1d: frozenset({"max_pool1d", "max_pool1d_with_indices"}),
    nn.MaxPool2d: frozenset({"max_pool2d", "max_pool2d_with_indices"}),
    nn.MaxPool3d: frozenset({"max_pool3d", "max_pool3d_with_indices"}),
}
_FUNCTION_NAMES = frozenset().union(*ACTIVATIONS.values())
_ACTIVATION_TYPES = tuple(ACTIVATIONS)


@dataclass
class Probe:
    """What one forward pass of one example revealed.

    Attributes:
        num_classes: number of logits.
        order: names of the modules in the order their forward finished (leaves before
            their parents); the root is ``""``.
        calls: forward calls per module name (shared instances counted once, under their
            first name).
        functional: ``(module name, function name)`` for every activation function called
            outside an activation module; the module is the innermost one running.
        bytes_per_example: memory of every leaf module's output for one example.
    """

    num_classes: int
    order: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    functional: list[tuple[str, str]] = field(default_factory=list)
    bytes_per_example: int = 0

    def last_of(self, kind: type[nn.Module], model: nn.Module) -> str | None:
        """Name of the last module of type ``kind`` to run, or None if none ran."""
        modules = dict(model.named_modules())
        hits = [name for name in self.order if isinstance(modules[name], kind)]
        return hits[-1] if hits else None


class _ActivationCalls(TorchFunctionMode):
    """Records activation functions called while a non-activation module is innermost."""

    def __init__(self, stack: list[tuple[str, nn.Module]], found: list[tuple[str, str]]) -> None:
        super().__init__()
        self.stack = stack
        self.found = found

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        name = getattr(func, "__name__", "")
        if name in _FUNCTION_NAMES and self.stack and not isinstance(self.stack[-1][1],
                                                                     _ACTIVATION_TYPES):
            self.found.append((self.stack[-1][0], name))
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def probe(model: nn.Module, x1: torch.Tensor) -> Probe:
    """Run ``model`` once on ``x1`` (1, C, H, W) with hooks; all hooks removed afterwards.

    The caller puts the model in eval mode (so BatchNorm statistics stay put).

    Returns:
        A :class:`Probe`.
    """
    names = {id(m): name for name, m in model.named_modules()}  # first name of each instance
    stack: list[tuple[str, nn.Module]] = []
    result = Probe(num_classes=0)

    def enter(module: nn.Module, args: Any) -> None:
        stack.append((names[id(module)], module))

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        name, _ = stack.pop()
        result.order.append(name)
        result.calls[name] = result.calls.get(name, 0) + 1
        if not any(True for _ in module.children()) and isinstance(output, torch.Tensor):
            result.bytes_per_example += output.numel() * output.element_size()

    handles = []
    try:
        for m in {id(m): m for m in model.modules()}.values():
            handles.append(m.register_forward_pre_hook(enter))
            handles.append(m.register_forward_hook(leave))
        with _ActivationCalls(stack, result.functional):
            out = model(x1)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RobustkitError(f"the model must return logits (N, K), got {shape}")
    result.num_classes = int(out.shape[1])
    return result
