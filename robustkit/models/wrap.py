"""Model adapters: a module that takes [0, 1] images and returns logits, whatever model
is inside.

Researchers' models often normalize in the data pipeline, not in the model, and return a
dict (``{"logits": ...}``), a tuple (``(logits, features)``) or an object
(HuggingFace's ``out.logits``). robustkit's attacks and explainers assume [0, 1] images in
and a logits tensor out (eps is in pixel units, the model normalizes itself).
:func:`wrap` bridges the two: a :class:`Normalize` in front and an output picker behind.

Example:
    >>> net = torchvision.models.resnet18(num_classes=10)               # doctest: +SKIP
    >>> model = wrap(net, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))  # doctest: +SKIP
    >>> model(torch.rand(2, 3, 32, 32)).shape                           # doctest: +SKIP
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from robustkit.errors import RobustkitError
from robustkit.models.normalize import Normalize

#: How the logits are picked from a model's output: a key (a dict's item or an object's
#: attribute), an index (a tuple's item) or a function of the output.
Output = Union[str, int, Callable[[Any], torch.Tensor], None]


def check_output(output: Any, what: str = "output") -> Output:
    """``output`` as a key (str), an index (int), a callable or None; else an error."""
    if output is None or callable(output):
        return output
    if isinstance(output, bool) or not isinstance(output, (str, int)):
        raise RobustkitError(f"{what} must be a key (text), an index (integer) or a function "
                             f"that picks the logits, got {type(output).__name__} {output!r}")
    if isinstance(output, str) and not output:
        raise RobustkitError(f"{what} must not be empty")
    return output


def describe_output(out: Any) -> str:
    """What a model returned, in a few words (``a dict with keys ['aux', 'logits']``)."""
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} with keys {sorted(map(str, out))[:8]}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} items"
    return f"a {type(out).__name__}"


def pick(out: Any, output: Output) -> torch.Tensor:
    """The logits in a model's output ``out``, picked by ``output``.

    Args:
        out: what the model returned.
        output: None (``out`` is the logits tensor), a key (``out[key]`` of a mapping,
            else ``out.key``), an index (``out[i]`` of a tuple or list) or a callable
            (``output(out)``).

    Returns:
        The logits tensor (N, K).

    Raises:
        RobustkitError: the output is not what ``output`` expects (the message says what
            came back), or the picked value is not a tensor.

    Example:
        >>> pick({"logits": torch.zeros(2, 3)}, "logits").shape
        torch.Size([2, 3])
    """
    if output is None:
        picked = out
    elif isinstance(out, torch.Tensor) and not callable(output):
        # out[0] would be the first example's row: a silently wrong "logits" tensor
        raise RobustkitError(f"output={output!r}: the model already returns a tensor of shape "
                             f"{tuple(out.shape)}; leave output out")
    elif callable(output):
        picked = output(out)
    elif isinstance(output, str):
        if isinstance(out, Mapping) and output in out:
            picked = out[output]
        elif not isinstance(out, Mapping) and hasattr(out, output):
            picked = getattr(out, output)
        else:
            raise RobustkitError(f"output={output!r}: the model returned "
                                 f"{describe_output(out)}, which has no {output!r}")
    else:
        if not isinstance(out, (tuple, list)) and not hasattr(out, "to_tuple"):
            raise RobustkitError(f"output={output}: the model returned {describe_output(out)}, "
                                 f"not a tuple or list to index")
        items = out.to_tuple() if hasattr(out, "to_tuple") else out  # HuggingFace outputs
        if not -len(items) <= output < len(items):
            raise RobustkitError(f"output={output}: the model returned "
                                 f"{describe_output(items)}")
        picked = items[output]
    if not isinstance(picked, torch.Tensor):
        how = ("the model" if output is None else f"output={output!r}" if not callable(output)
               else "the output function")
        raise RobustkitError(
            f"{how} gave {describe_output(picked)}, not a tensor of logits (N, K); pick the "
            f"logits with robustkit.models.wrap(model, output=...): a key, an index or a "
            f"function")
    return picked


class Wrapped(nn.Module):
    """``model`` behind a :class:`Normalize` (optional) and an output picker: [0, 1]
    images in, a logits tensor out.

    Submodules: ``normalize`` (a :class:`Normalize`, first, when mean and std are given)
    and ``model``; so the state dict holds ``normalize.mean``, ``normalize.std`` and
    ``model.*``.

    Args:
        model: any module taking (N, C, H, W) images, normalized as ``mean``/``std`` say.
        mean, std: per-channel normalization, both or neither.
        output: how to pick the logits (see :func:`pick`).
    """

    normalize: Normalize | None

    def __init__(self, model: nn.Module, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, output: Output = None) -> None:
        super().__init__()
        mean_t, std_t = check_mean_std(mean, std)
        if mean_t is not None and std_t is not None:
            self.normalize = Normalize(mean_t, std_t)  # registered first: the first layer
        else:
            self.normalize = None
        self.model = model
        self.output = check_output(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, K)
        if self.normalize is not None:
            x = self.normalize(x)
        return pick(self.model(x), self.output)

    def extra_repr(self) -> str:
        return "" if self.output is None else f"output={self.output!r}"


def check_mean_std(mean: Sequence[float] | None, std: Sequence[float] | None,
                   channels: int | None = None, what: str = "mean and std"
                   ) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """``(mean, std)`` as tuples of floats, or ``(None, None)``; both or neither, one finite
    value per channel, std > 0."""
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise RobustkitError(f"{what}: give both mean and std, or neither (got only "
                             f"{'mean' if std is None else 'std'})")
    try:
        mean_t = tuple(float(m) for m in mean)
        std_t = tuple(float(s) for s in std)
    except (TypeError, ValueError):
        raise RobustkitError(f"{what} must be lists of numbers, one per channel: {mean!r}, "
                             f"{std!r}") from None
    if not mean_t or len(mean_t) != len(std_t):
        raise RobustkitError(f"{what} need one value per channel each: {list(mean_t)}, "
                             f"{list(std_t)}")
    if channels is not None and len(mean_t) != channels:
        raise RobustkitError(f"{what} need {channels} values (one per channel), got "
                             f"{len(mean_t)}")
    if not all(math.isfinite(v) for v in mean_t + std_t) or min(std_t) <= 0:
        raise RobustkitError(f"{what} must be finite, std > 0: {list(mean_t)}, {list(std_t)}")
    return mean_t, std_t


def _normalizes(model: nn.Module) -> bool:
    """Whether ``model`` normalizes its inputs itself (a robustkit model, or a wrapped one
    with mean and std)."""
    spec = getattr(model, "robustkit_spec", None)
    if isinstance(spec, dict) and spec.get("mean") is not None:
        return True
    return isinstance(model, Wrapped) and model.normalize is not None


def wrap(model: nn.Module, *, mean: Sequence[float] | None = None,
         std: Sequence[float] | None = None, output: Output = None) -> nn.Module:
    """A module that takes [0, 1] images and returns logits: ``Normalize(mean, std)`` in
    front of ``model``, and ``output`` picking the logits from what it returns.

    Use it for a model trained with the normalization in the data pipeline (then
    eps is in [0, 1] pixel units and attacks never see normalized images), and for models
    that return a dict, a tuple or an object. A model made by
    :func:`robustkit.models.build` (``torchvision:NAME``, ``timm:NAME``,
    ``package.module:factory``) stays one after wrapping: it keeps its
    ``robustkit_spec`` (with this mean, std and output), so :func:`robustkit.models.save`
    and :func:`robustkit.models.load` work on it (not with a callable ``output``, which
    a checkpoint cannot hold).

    Args:
        model: the module; it receives the normalized images (N, C, H, W).
        mean, std: the pipeline's per-channel normalization (both or neither), e.g.
            ``(0.4914, 0.4822, 0.4465)`` and ``(0.2470, 0.2435, 0.2616)`` for CIFAR-10.
        output: how to pick the logits: a key (``"logits"``: ``out["logits"]`` of a dict,
            else ``out.logits``), an index (``0``: ``out[0]`` of a tuple) or a function of
            the output. None: the model returns the logits tensor.

    Returns:
        A :class:`Wrapped` module: (N, C, H, W) in [0, 1] -> (N, K) logits.

    Raises:
        RobustkitError: only one of mean and std, values not finite or std <= 0, a bad
            ``output``, or mean and std for a model that already normalizes its inputs
            (a robustkit model: it would normalize twice).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> w = wrap(net, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
        >>> w(torch.rand(2, 3, 2, 2)).shape
        torch.Size([2, 3])
    """
    mean_t, std_t = check_mean_std(mean, std)
    output = check_output(output)
    if mean_t is not None and _normalizes(model):
        raise RobustkitError(
            "wrap: the model already normalizes its inputs (its first layer is Normalize); "
            "wrapping it with mean and std would normalize twice: leave them out")
    spec = getattr(model, "robustkit_spec", None)
    inner = model
    if isinstance(model, Wrapped) and (output is None or model.output is None):
        # Flatten into one Wrapped, so the layout is the one models.build makes.
        inner = model.model
        if model.normalize is not None:  # the values as given, else as stored (float32)
            given = spec if isinstance(spec, dict) and spec.get("mean") is not None else None
            mean_t = tuple(given["mean"] if given else model.normalize.mean.flatten().tolist())
            std_t = tuple(given["std"] if given else model.normalize.std.flatten().tolist())
        output = output if output is not None else model.output
    elif isinstance(model, Wrapped):
        spec = None  # a picker behind a picker: no checkpoint describes it
    wrapped = Wrapped(inner, mean_t, std_t, output)
    if wrapped.normalize is not None:  # beside the model's first weights (not all of it:
        wrapped.normalize.to(_device_of(inner))  # a model may span devices)
    if (isinstance(spec, dict) and isinstance(model, Wrapped) and not callable(output)
            and _channels_fit(spec, mean_t)):
        record: Any = {**spec, "mean": None if mean_t is None else list(mean_t),
                       "std": None if std_t is None else list(std_t), "output": output}
        wrapped.robustkit_spec = record  # read by robustkit.models.save
    return wrapped


def _channels_fit(spec: dict[str, Any], mean: tuple[float, ...] | None) -> bool:
    """Whether a normalization of ``len(mean)`` channels fits the spec's images; refused
    when it does not (the model would fail on every batch)."""
    if mean is None:
        return True
    channels = list(spec.get("in_shape") or [len(mean)])[0]
    if len(mean) != channels:
        raise RobustkitError(f"wrap: mean and std have {len(mean)} values, but the model "
                             f"({spec.get('name')}) takes {channels}-channel images")
    return True


def _device_of(model: nn.Module) -> torch.device:
    for t in [*model.parameters(), *model.buffers()]:
        return t.device
    return torch.device("cpu")
