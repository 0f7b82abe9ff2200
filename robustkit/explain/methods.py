"""The attribution methods by name: thin adapters over captum, one registry entry each.

Every method is computed by captum; an adapter only picks captum's options (baselines,
batching knobs, the Grad-CAM layer) and brings the result to the input's shape. Adapters
take a prepared batch: the model in eval mode, ``x`` (n, C, H, W) on the model's device
with ``requires_grad`` set, ``target`` (n,) int64, and

- ``rows``: how many examples one forward pass may hold within the memory budget
  (:func:`robustkit.explain.batching.rows_per_pass`); methods that evaluate the model on
  many variants of each input (integrated gradients' steps, SmoothGrad's noisy copies,
  occlusion's windows) pack ``rows // n`` variants per pass;
- ``probe``: what one forward pass revealed (:class:`robustkit.explain.probe.Probe`).

Use :func:`robustkit.explain.attribute`, which checks inputs, keeps the model's state and
splits large batches, rather than calling an adapter directly.

Example:
    >>> EXPLAINERS.names()                                   # doctest: +SKIP
    ['deeplift', 'gradcam', 'gradient', ...]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from captum.attr import (DeepLift, GuidedBackprop, InputXGradient, IntegratedGradients,
                         LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency)
from torch import nn

from robustkit.errors import RobustkitError
from robustkit.explain.batching import budget_bytes
from robustkit.explain.probe import ACTIVATIONS, Probe
from robustkit.explain.reuse import SkipUnchanged
from robustkit.explain.rng import seeded
from robustkit.core.layout import channels_last
from robustkit.registry import Registry

Tensor = torch.Tensor
Runner = Callable[..., Tensor]


@dataclass(frozen=True)
class Explainer:
    """A registered method.

    Attributes:
        name: the registry name.
        run: ``run(model, x, target, *, rows, probe, **options) -> (n, C, H, W)``.
        hooks: the activation module types whose captum hooks the method relies on; the
            model is checked for traps on these before it runs (empty: no hooks).
    """

    name: str
    run: Runner
    hooks: tuple[type[nn.Module], ...] = ()


EXPLAINERS: Registry[Explainer] = Registry("explainer")


def register_explainer(name: str, hooks: tuple[type[nn.Module], ...] = ()
                       ) -> Callable[[Runner], Runner]:
    """Decorator: file an adapter under ``name``; ``hooks`` as in :class:`Explainer`."""

    def decorate(run: Runner) -> Runner:
        EXPLAINERS.register(name)(Explainer(name, run, hooks))
        return run

    return decorate


def names() -> list[str]:
    """The registered method names."""
    return EXPLAINERS.names()


@contextmanager
def _quiet_hooks():
    """Silence captum's notice that it sets (and will remove) hooks: it fires on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Setting .*hooks", category=UserWarning)
        yield


def _passes(rows: int, n: int) -> int:
    """How many variants of each of ``n`` examples fit in one forward pass of ``rows``."""
    return max(1, rows // n)


@register_explainer("saliency")
def saliency(model: nn.Module, x: Tensor, target: Tensor, *, rows: int, probe: Probe,
             abs: bool = True) -> Tensor:
    """|d f_target / d x| (Simonyan, Vedaldi and Zisserman 2014), captum's ``Saliency``."""
    return Saliency(model).attribute(x, target=target, abs=abs)


@register_explainer("gradient")
def gradient(model: nn.Module, x: Tensor, target: Tensor, *, rows: int, probe: Probe) -> Tensor:
    """The signed gradient d f_target / d x, captum's ``Saliency(abs=False)``."""
    return Saliency(model).attribute(x, target=target, abs=False)


@register_explainer("input_x_gradient")
def input_x_gradient(model: nn.Module, x: Tensor, target: Tensor, *, rows: int,
                     probe: Probe) -> Tensor:
    """x * d f_target / d x (Shrikumar et al. 2016), captum's ``InputXGradient``."""
    return InputXGradient(model).attribute(x, target=target)


@register_explainer("integrated_gradients")
def integrated_gradients(model: nn.Module, x: Tensor, target: Tensor, *, rows: int,
                         probe: Probe, baselines: Tensor | float | None = None,
                         n_steps: int = 50, method: str = "gausslegendre",
                         internal_batch_size: int | None = None) -> Tensor:
    """Integrated gradients (Sundararajan, Taly and Yan 2017), captum's ``IntegratedGradients``.

    Zero baseline unless ``baselines`` is given. ``internal_batch_size`` defaults to as
    many whole steps for all n examples as ``rows`` allows: captum's own default (every
    step of every example in one pass) took 2-2.5x the time and 1.5 GB more peak memory
    on 100 MNIST test images of the benchmark alexnet on a 2-core CPU
    (``python -m benchmarks.explain --only ig``).
    """
    n = len(x)
    batch = internal_batch_size or _passes(rows, n) * n
    return IntegratedGradients(model).attribute(x, baselines=baselines, target=target,
                                                n_steps=n_steps, method=method,
                                                internal_batch_size=batch)


@register_explainer("smoothgrad")
def smoothgrad(model: nn.Module, x: Tensor, target: Tensor, *, rows: int, probe: Probe,
               nt_samples: int = 25, stdevs: float = 0.15, seed: int = 0,
               abs: bool = True) -> Tensor:
    """SmoothGrad (Smilkov et al. 2017): saliency averaged over noisy copies of the input.

    captum's ``NoiseTunnel`` over ``Saliency``; noise of standard deviation ``stdevs``
    (0.15 of the [0, 1] range: the paper's 10-20%), ``nt_samples`` copies, drawn from a
    generator seeded with ``seed`` (the caller's random state is left alone). The noise an
    example gets depends on the examples drawn before it in its pass, so equal maps across
    runs need the same ``batch_size`` too.
    """
    tunnel = NoiseTunnel(Saliency(model))
    with seeded(seed, x.device):
        return tunnel.attribute(x, nt_type="smoothgrad", nt_samples=nt_samples, stdevs=stdevs,
                                nt_samples_batch_size=_passes(rows, len(x)), target=target,
                                abs=abs)


@register_explainer("guided_backprop", hooks=(nn.ReLU,))
def guided_backprop(model: nn.Module, x: Tensor, target: Tensor, *, rows: int,
                    probe: Probe) -> Tensor:
    """Guided backpropagation (Springenberg et al. 2015), captum's ``GuidedBackprop``."""
    with _quiet_hooks():
        return GuidedBackprop(model).attribute(x, target=target)


@register_explainer("deeplift", hooks=tuple(ACTIVATIONS))
def deeplift(model: nn.Module, x: Tensor, target: Tensor, *, rows: int, probe: Probe,
             baselines: Tensor | float | None = None) -> Tensor:
    """DeepLIFT, rescale rule (Shrikumar, Greenside and Kundaje 2017), captum's ``DeepLift``.

    Zero baseline unless ``baselines`` is given.
    """
    with _quiet_hooks():
        return DeepLift(model).attribute(x, baselines=baselines, target=target)


@register_explainer("gradcam")
def gradcam(model: nn.Module, x: Tensor, target: Tensor, *, rows: int, probe: Probe,
            layer: str | nn.Module | None = None, relu_attributions: bool = False,
            interpolate_mode: str = "bilinear") -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017), captum's ``LayerGradCam``, upsampled to the input.

    ``layer`` defaults to the last ``nn.Conv2d`` that runs in ``forward``. The map is
    upsampled with captum's ``LayerAttribution.interpolate`` (bilinear) and repeated over
    the input's channels. It stays signed, as captum's default: the paper's final ReLU
    (``relu_attributions=True``) blanked the whole map of half the test digits on the
    benchmark CNN, whose last convolution sees 6x6 positions.
    """
    module = _layer(model, probe, layer)
    cam = LayerGradCam(model, module).attribute(x, target=target,
                                                relu_attributions=relu_attributions)
    up = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode=interpolate_mode)
    return up.expand(-1, x.shape[1], -1, -1).contiguous()  # (n, 1, H, W) -> (n, C, H, W)


@register_explainer("occlusion")
def occlusion(model: nn.Module, x: Tensor, target: Tensor, *, rows: int, probe: Probe,
              window: tuple[int, ...] | None = None, stride: int | tuple[int, ...] | None = None,
              baselines: Tensor | float = 0.0, perturbations_per_eval: int | None = None
              ) -> Tensor:
    """Occlusion (Zeiler and Fergus 2014), captum's ``Occlusion``.

    The window covers every channel and a seventh of the shorter side (4x4 on 28x28),
    sliding by half its size. captum builds as many occluded copies of every example per
    call as fit the memory budget (instead of its default of one), and the forward
    function (:class:`robustkit.explain.reuse.SkipUnchanged`) runs only the copies that
    the window changed, in full passes of ``rows`` channels-last images: a window over
    pixels already equal to the baseline gets exactly zero without a forward pass.
    """
    c, h, w = x.shape[1:]
    k = max(1, min(h, w) // 7)
    window = tuple(window or (c, k, k))
    stride = stride or max(1, k // 2)
    strides = (stride,) * len(window) if isinstance(stride, int) else tuple(stride)
    if perturbations_per_eval is None:
        positions = 1
        for size, win, step in zip(x.shape[1:], window, strides):
            positions *= max(1, (size - win) // step + 1)
        copy_bytes = x[0].numel() * x.element_size() * len(x)  # one copy of every example
        perturbations_per_eval = max(1, min(positions, budget_bytes(x.device) // copy_bytes))
    with channels_last(model):
        forward = SkipUnchanged(model, x, rows)  # its cached pass in the same layout
        return Occlusion(forward).attribute(
            x, sliding_window_shapes=window, strides=stride, baselines=baselines,
            target=target, perturbations_per_eval=perturbations_per_eval)


def _layer(model: nn.Module, probe: Probe, layer: str | nn.Module | None) -> nn.Module:
    """The module Grad-CAM explains: given, named, or the last Conv2d that ran."""
    if isinstance(layer, nn.Module):
        return layer
    modules = dict(model.named_modules())
    name = layer if layer is not None else probe.last_of(nn.Conv2d, model)
    if name is None:
        raise RobustkitError("gradcam: no nn.Conv2d runs in the model's forward; pass layer=")
    if name not in modules:
        raise RobustkitError(f"gradcam: the model has no module {name!r}")
    return modules[name]


def options_of(method: str) -> dict[str, Any]:
    """A method's keyword options and their defaults (for documentation and the CLI)."""
    import inspect

    params = inspect.signature(EXPLAINERS.get(method).run).parameters.values()
    return {p.name: p.default for p in params
            if p.kind is p.KEYWORD_ONLY and p.name not in ("rows", "probe")}
