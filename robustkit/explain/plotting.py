"""Figures: attribution heatmaps over the images, faithfulness curves, sanity-check curves.

Built with ``matplotlib.figure.Figure`` directly (no pyplot, no global state), so they
work under any backend, in threads and on headless machines. Each function returns the
Figure and writes it to ``path`` when given (PNG, PDF or SVG by the suffix), atomically.

Every user string that becomes figure text (a method, model or layer name, a caption)
goes through :func:`literal` first: it is drawn as written, never parsed as mathtext, and
its bidirectional control characters are shown as escapes. The reports use the same two
helpers (:mod:`robustkit.report`), so a name reads the same in every output.

Example:
    >>> a = {m: attribute(model, x, y, method=m)                           # doctest: +SKIP
    ...      for m in ("saliency", "integrated_gradients")}
    >>> fig = plot(x, a, path="maps.png")                                  # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from robustkit.core import write_atomic
from robustkit.core.text import visible_controls
from robustkit.errors import RobustkitError
from robustkit.explain.sanity import SIMILARITIES

Tensor = torch.Tensor
#: Colormaps: signed maps diverge around 0 (red for, blue against); absolute ones rise.
SIGNED_CMAP = "RdBu_r"
ABSOLUTE_CMAP = "inferno"


def literal(text: object) -> str:
    """A user string as figure text (title, label, tick, legend) that matplotlib draws as
    written: every ``$`` escaped, so ``$\\frac{1}{0}$`` or ``a$b`` is never parsed as
    mathtext, and bidirectional controls shown as escapes (:func:`visible_controls`).

    Apply it once, where the text enters matplotlib: an escaped ``$`` escaped again would
    show its backslash.

    Args:
        text: any value; it is turned into a string first.

    Returns:
        The escaped string (``Text.get_text()`` returns it; the figure shows the original).

    Example:
        >>> literal("cost $5")
        'cost \\\\$5'
    """
    return visible_controls(text).replace("$", "\\$")


def save_figure(fig: Figure, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Save ``fig`` to ``path`` through :func:`robustkit.core.write_atomic` (the format by
    the suffix, PNG when there is none): a full disk or a folder that cannot be written is
    one :class:`RobustkitError` naming the path, and no half-written file is left.

    Args:
        fig: the figure.
        path: the file to write; its folders are made.
        **kwargs: passed to ``Figure.savefig`` (``dpi``, ``bbox_inches``).

    Returns:
        The path written.

    Example:
        >>> save_figure(Figure(), "out/empty.png")                    # doctest: +SKIP
    """
    dest = Path(path)
    fmt = dest.suffix.lower().lstrip(".") or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise RobustkitError(f"cannot save a figure as {dest}: the suffix .{fmt} is not an "
                             f"image format; use one of {', '.join(sorted(supported))}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, **kwargs)
    return write_atomic(dest, buffer.getvalue())


def _save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        save_figure(fig, path, dpi=120, bbox_inches="tight")
    return fig


def _image(x: Tensor) -> tuple[Any, str | None]:
    """(C, H, W) in [0, 1] -> an array for imshow and its colormap (gray for one channel)."""
    x = x.detach().float().cpu().clamp(0, 1)
    if x.shape[0] == 1:
        return x[0].numpy(), "gray"
    return x.permute(1, 2, 0).numpy(), None


def plot(x: Tensor, attributions: Tensor | Mapping[str, Tensor], *,
         signed: bool | None = None, overlay: bool = True, alpha: float = 0.6,
         labels: Sequence[str] | None = None, max_images: int = 16,
         path: str | os.PathLike | None = None) -> Figure:
    """Heatmaps of attributions over their images: one row per image, one column per method.

    A map is reduced to one value per pixel: the channel sum for signed maps, drawn with a
    diverging colormap centred at 0 (``RdBu_r``, symmetric limits); the sum of absolute
    values otherwise, drawn with a sequential one (``inferno``, from 0). Each map is scaled
    to its own largest magnitude.

    Args:
        x: images (N, C, H, W) in [0, 1], grayscale (C = 1) or RGB (C = 3).
        attributions: maps shaped like ``x``, or ``{method name: maps}``.
        signed: draw as signed maps; default: signed when the map has a negative value.
        overlay: draw the map over the grayscale image (with ``alpha``) instead of alone.
        alpha: opacity of an overlaid map, in [0, 1].
        labels: one title per image row (e.g. ``"label 3, pred 3"``).
        max_images: draw at most this many images (the first ones).
        path: where to save the figure.

    Returns:
        The matplotlib Figure.
    """
    maps = attributions if isinstance(attributions, Mapping) else {"attribution": attributions}
    for name, a in maps.items():
        if a.shape != x.shape:
            raise RobustkitError(f"plot: {name} has shape {tuple(a.shape)}, x has {tuple(x.shape)}")
    n = min(len(x), max_images)
    fig = Figure(figsize=(1.6 * (1 + len(maps)), 1.6 * n))
    axes = fig.subplots(n, 1 + len(maps), squeeze=False)
    for i in range(n):
        img, img_cmap = _image(x[i])
        gray = img if img_cmap else img.mean(2)
        axes[i, 0].imshow(img, cmap=img_cmap, vmin=0, vmax=1)
        for j, (name, a) in enumerate(maps.items(), start=1):
            a_i = a[i].detach().float().cpu()
            is_signed = bool((a_i < 0).any()) if signed is None else signed
            m = a_i.sum(0) if is_signed else a_i.abs().sum(0)  # (H, W)
            peak = max(float(m.abs().max()), 1e-12)
            ax = axes[i, j]
            if overlay:
                ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
            ax.imshow(m.numpy(), cmap=SIGNED_CMAP if is_signed else ABSOLUTE_CMAP,
                      vmin=-peak if is_signed else 0.0, vmax=peak,
                      alpha=alpha if overlay else 1.0)
            if i == 0:
                ax.set_title(literal(name), fontsize=8)
        if i == 0:
            axes[i, 0].set_title("input", fontsize=8)
        if labels is not None:
            axes[i, 0].set_ylabel(literal(labels[i]), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def plot_faithfulness(results: Mapping[str, Mapping[str, Any]], *,
                      path: str | os.PathLike | None = None) -> Figure:
    """Deletion and insertion curves of several methods (results of
    :func:`robustkit.explain.faithfulness`), the random baseline dashed; AUCs in the legend."""
    first = next(iter(results.values()))
    modes = [m for m in ("deletion", "insertion") if m in first]
    fig = Figure(figsize=(4.5 * len(modes), 3.5))
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    for ax, mode in zip(axes, modes):
        for name, r in results.items():
            ax.plot(r["fractions"], r[mode]["curve"],
                    label=literal(f"{name} (AUC {r[mode]['auc']:.3f})"))
        rnd = first["random"][mode]
        ax.plot(first["fractions"], rnd["curve"], "k--", label=f"random (AUC {rnd['auc']:.3f})")
        ax.set_xlabel("fraction of pixels " + ("removed" if mode == "deletion" else "inserted"))
        ax.set_ylabel(literal(f"mean {first['score']} of the target class"))
        ax.set_title(mode)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_sanity(result: Mapping[str, Sequence[Mapping[str, Any]]], *,
                metrics: Sequence[str] = SIMILARITIES,
                path: str | os.PathLike | None = None) -> Figure:
    """Similarity to the original maps against the randomized layer (a
    :class:`robustkit.explain.SanityResult`), one panel per metric; the random-map floor
    dotted in the method's colour."""
    baseline = getattr(result, "baseline", {})
    first = next(iter(result.values()))
    ticks = ["original"] + [step["layer"] for step in first]
    fig = Figure(figsize=(4.2 * len(metrics), 3.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for method, steps in result.items():
            line, = ax.plot(range(len(ticks)), [1.0] + [s[metric] for s in steps], "o-",
                            label=literal(method), markersize=3)
            if method in baseline:
                ax.axhline(baseline[method][metric], color=line.get_color(), ls=":", lw=1)
        ax.set_xticks(range(len(ticks)), [literal(t) for t in ticks], rotation=60, fontsize=7)
        ax.set_ylabel(literal(metric))
        ax.set_ylim(-0.5 if metric == "spearman" else -0.1, 1.05)
        ax.set_title(literal(f"{getattr(result, 'mode', 'cascading')} randomization"),
                     fontsize=9)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return _save(fig, path)
