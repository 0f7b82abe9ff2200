"""Matplotlib figures drawn from stored results (never from models).

Figures are built on :class:`matplotlib.figure.Figure` directly, not pyplot, so drawing
leaves no global state behind and works without a display. Every text that may hold a
user string (titles, labels, legend entries, tick labels) goes through
:func:`~robustkit.explain.plotting.literal`, so a model named ``$\\frac{1}{0}$`` is drawn
as written, never as mathtext; files are written with
:func:`~robustkit.explain.plotting.save_figure` (atomic; a full disk is one error).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from robustkit.errors import RobustkitError
from robustkit.explain.plotting import literal, save_figure

Matrix = Mapping[str, Mapping[str, float]]


def transfer_heatmaps(matrices: Mapping[float, Matrix], path: str | os.PathLike | None = None,
                      *, title: str = "accuracy of target on source's adversarial examples"
                      ) -> Figure:
    """One heatmap per eps: rows are sources, columns targets, cells target accuracy in %.

    The white-box cells (a model that is both source and target) are outlined: a transfer
    cell darker than its column's outlined cell is the suspicious case that
    :func:`robustkit.transfer.transfer_matrix` warns about.

    Args:
        matrices: ``{eps: {source: {target: accuracy in [0, 1]}}}``.
        path: where to save the PNG (folders are made); nothing is saved when None.
        title: the figure's title.

    Returns:
        The figure.

    Example:
        >>> transfer_heatmaps({0.1: {"a": {"a": 0.2, "b": 0.9}}}, "transfer.png")  # doctest: +SKIP
    """
    items = sorted(matrices.items())
    if not items:
        raise RobustkitError("transfer_heatmaps needs at least one matrix")
    sources = list(items[0][1])
    targets = list(items[0][1][sources[0]])
    width = max(4.0, 0.9 * len(targets) + 2.0)  # inches per panel, room for the labels
    fig = Figure(figsize=(width * len(items) + 1.0, max(3.0, 0.75 * len(sources) + 2.0)),
                 layout="constrained")
    axes = fig.subplots(1, len(items), squeeze=False)[0]
    for ax, (eps, matrix) in zip(axes, items):
        grid = [[100 * matrix[s][t] for t in targets] for s in sources]
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100)
        for i, s in enumerate(sources):
            for j, t in enumerate(targets):
                value = grid[i][j]
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=9,
                        color="black" if value > 60 else "white")
                if s == t:
                    ax.add_patch(_outline(j, i))
        ax.set_xticks(range(len(targets)), [literal(t) for t in targets], rotation=30,
                      ha="right")
        ax.set_yticks(range(len(sources)), [literal(s) for s in sources])
        ax.set_xlabel("target")
        ax.set_ylabel("source")
        ax.set_title(f"eps = {eps:g}")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="target accuracy (%)")
    fig.suptitle(literal(title))
    return _save(fig, path, dpi=120)


def _outline(col: int, row: int):
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)


def _save(fig: Figure, path: str | os.PathLike | None, dpi: int = 110) -> Figure:
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


def line_chart(series: Mapping[str, Sequence[tuple[float, float, float]]], path=None, *,
               xlabel: str, ylabel: str, title: str = "", percent: bool = True) -> Figure:
    """Lines with a shaded band: ``{label: [(x, mean, std), ...]}``.

    Used for robustness curves (accuracy against eps), training curves and deletion curves.
    """
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    scale = 100 if percent else 1
    for label, points in series.items():
        pts = sorted(points)
        xs = [p[0] for p in pts]
        mean = [scale * p[1] for p in pts]
        std = [scale * p[2] for p in pts]
        line, = ax.plot(xs, mean, marker="o", markersize=3, label=literal(label))
        if any(s > 0 for s in std):
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)],
                            [m + s for m, s in zip(mean, std)], alpha=0.2,
                            color=line.get_color())
    ax.set_xlabel(literal(xlabel))
    ax.set_ylabel(literal(ylabel + (" (%)" if percent else "")))
    if percent:
        ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(literal(title))
    return _save(fig, path)


def broken_by_chart(rows: Mapping[str, Mapping[str, float]], order: Sequence[str], path=None,
                    *, title: str = "", notes: Mapping[str, str] | None = None) -> Figure:
    """One horizontal stacked bar per model: the share of examples misclassified clean,
    broken by each attack in ``order``, and robust (``{model: {segment: fraction}}``);
    ``notes`` (e.g. the cost) are written after each bar."""
    fig = Figure(figsize=(7.2, 1.2 + 0.55 * max(len(rows), 1)), layout="constrained")
    ax = fig.subplots()
    names = list(rows)
    segments = ["clean error", *order, "robust"]
    colors = {"clean error": "#bbbbbb", "robust": "#2ca02c"}
    palette = ["#d62728", "#ff7f0e", "#9467bd", "#1f77b4", "#8c564b", "#e377c2"]
    left = [0.0] * len(names)
    for i, seg in enumerate(segments):
        widths = [100 * rows[m].get(seg, 0.0) for m in names]
        ax.barh(range(len(names)), widths, left=left, label=literal(seg),
                color=colors.get(seg, palette[i % len(palette)]), edgecolor="white")
        left = [a + w for a, w in zip(left, widths)]
    ax.set_yticks(range(len(names)), [literal(m) for m in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("examples (%)")
    for j, m in enumerate(names):
        if notes and m in notes:
            ax.text(101, j, literal(notes[m]), va="center", fontsize=7, clip_on=False)
    # Below the axes, outside them (constrained layout makes room): never over the bars
    # or the axis label.
    fig.legend(fontsize=7, ncols=min(len(segments), 6), loc="outside lower center")
    if title:
        ax.set_title(literal(title))
    return _save(fig, path)


def blackbox_chart(accuracy: Sequence[tuple[float, float, float]],
                   queries: Sequence[tuple[float, float]],
                   transfer: Mapping[str, Sequence[tuple[float, float, float]]],
                   square: Sequence[tuple[float, float, float]] = (), path=None, *,
                   square_label: str = "", title: str = "") -> Figure:
    """A black-box attack in two panels (three with Square).

    Left: the substitute's accuracy per round ``[(round, mean, std)]`` (fractions) with the
    label queries spent so far ``[(round, queries)]`` as bars on a second axis. Middle:
    transfer success against eps, ``{label: [(eps, mean, std)]}`` (the substitute, the
    true-label surrogate). Right, when ``square`` is given: Square's robust accuracy
    against its query budget per image ``[(budget, mean, std)]``, log scale.

    Example:
        >>> blackbox_chart([(0, 0.5, 0), (1, 0.7, 0)], [(0, 0), (1, 150)],
        ...                {"substitute": [(0.1, 0.2, 0), (0.3, 0.8, 0)]})  # doctest: +SKIP
    """
    panels = 3 if square else 2
    # Wider gaps than the default: the first panel's twin axis label sits between panels.
    fig = Figure(figsize=(4.6 * panels, 3.8),
                 layout=ConstrainedLayoutEngine(wspace=0.08))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    bars = ax.twinx()
    bars.bar([r for r, _ in queries], [q for _, q in queries], width=0.6, color="#bbbbbb",
             alpha=0.6, label="label queries so far")
    bars.set_ylabel("label queries so far")
    bars.set_ylim(0, 1.05 * max([1.0, *(q for _, q in queries)]))
    ax.set_zorder(bars.get_zorder() + 1)  # the accuracy line in front of the bars
    ax.patch.set_visible(False)
    _band(ax, accuracy, "substitute accuracy", "#1f77b4")
    ax.set_xticks([r for r, *_ in accuracy])
    ax.set_xlabel("round")
    ax.set_ylabel("substitute accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("substitute per round", fontsize=10)
    ax = axes[1]
    for (label, points), color in zip(transfer.items(), ("#d62728", "#2ca02c", "#9467bd")):
        _band(ax, points, label, color)
    ax.set_xticks(sorted({e for points in transfer.values() for e, *_ in points}))
    ax.set_xlabel("eps")
    ax.set_ylabel("transfer success (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8)
    ax.set_title("transferred to the oracle", fontsize=10)
    if square:
        ax = axes[2]
        _band(ax, square, "Square", "#ff7f0e")
        ax.set_xscale("log")
        budgets = sorted({q for q, *_ in square})
        ax.set_xticks(budgets, [f"{q:,.0f}" for q in budgets])  # plain text, no mathtext
        ax.minorticks_off()
        ax.set_xlabel("Square's queries per image")
        ax.set_ylabel("oracle robust accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(literal(square_label or "Square on the oracle's scores"), fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(literal(title))
    return _save(fig, path)


def _band(ax, points: Sequence[tuple[float, float, float]], label: str, color: str) -> None:
    """A line of ``(x, mean, std)`` fractions drawn in %, with a +-std band."""
    pts = sorted((x, m, s) for x, m, s in points if m == m)  # NaN means: no value
    xs = [p[0] for p in pts]
    mean = [100 * p[1] for p in pts]
    std = [100 * (p[2] if p[2] == p[2] else 0.0) for p in pts]
    ax.plot(xs, mean, marker="o", markersize=4, label=literal(label), color=color)
    if any(s > 0 for s in std):
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)],
                        [m + s for m, s in zip(mean, std)], alpha=0.2, color=color)


def _show(ax, image, **kw) -> None:
    """Draw an image (C, H, W) in [0, 1], grayscale or RGB, without ticks."""
    import numpy as np

    img = np.asarray(image)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, **kw)
    else:
        ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1), **kw)
    ax.set_xticks([])
    ax.set_yticks([])


def perturbation_grid(x, x_adv, labels: Sequence[str], adv_labels: Sequence[str], path=None,
                      *, title: str = "", max_rows: int = 8, across: bool = False) -> Figure:
    """Clean image, amplified perturbation and adversarial image for each example.

    Args:
        x, x_adv: arrays (N, C, H, W) in [0, 1].
        labels, adv_labels: one caption per example for the clean and adversarial image.
        across: one example per column (three rows) instead of one per row.
    """
    import numpy as np

    n = min(len(x), max_rows)
    if across:
        fig = Figure(figsize=(1.5 * n + 0.4, 5.4), layout="constrained")
        axes = fig.subplots(3, n, squeeze=False).T  # axes[i] = the three panels of example i
    else:
        fig = Figure(figsize=(5.4, 1.75 * n + 0.6), layout="constrained")
        axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        delta = np.asarray(x_adv[i]) - np.asarray(x[i])
        scale = float(np.abs(delta).max()) or 1.0
        _show(axes[i][0], x[i])
        axes[i][0].set_title(literal(labels[i]), fontsize=7)
        # The perturbation stretched to the full grey range: 0.5 = unchanged pixel.
        _show(axes[i][1], 0.5 + 0.5 * delta / scale)
        axes[i][1].set_title(f"perturbation x{0.5 / scale:.1f}", fontsize=7)
        _show(axes[i][2], x_adv[i])
        axes[i][2].set_title(literal(adv_labels[i]), fontsize=7)
    if title:
        fig.suptitle(literal(title), fontsize=10)
    return _save(fig, path)


def class_matrix(matrix: Sequence[Sequence[float | None]], path=None, *, title: str = "",
                 label: str = "", highlight: int | None = None) -> Figure:
    """A class-by-class heatmap (rows: true class, columns: target), blanks for None."""
    import numpy as np

    grid = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    k = len(grid)
    fig = Figure(figsize=(0.55 * k + 2.2, 0.5 * k + 1.4), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="magma_r")
    for i in range(k):
        for j in range(k):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if grid[i, j] > np.nanmean(grid) else "black")
    if highlight is not None:
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((highlight - 0.5, -0.5), 1, k, fill=False, edgecolor="cyan",
                               linewidth=2))
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("target class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, label=literal(label), shrink=0.8)
    if title:
        ax.set_title(literal(title), fontsize=10)
    return _save(fig, path)


def attribution_grid(x, x_adv, maps: Mapping[str, tuple], path=None, *, title: str = "",
                     max_rows: int = 4) -> Figure:
    """Per image: clean and adversarial image, then each method's map on both.

    Args:
        x, x_adv: arrays (N, C, H, W) in [0, 1].
        maps: ``{method: (clean maps, adversarial maps)}``, arrays shaped like ``x``;
            the channel-summed absolute value is shown, scaled per image and method.
    """
    import numpy as np

    n = min(len(x), max_rows)
    cols = 2 + 2 * len(maps)
    fig = Figure(figsize=(1.35 * cols + 0.4, 1.45 * n + 0.8), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        _show(axes[i, 0], x[i])
        _show(axes[i, 1], x_adv[i])
        for j, (method, (clean, adv)) in enumerate(maps.items()):
            pair = [np.abs(np.asarray(m[i])).sum(0) for m in (clean, adv)]  # (H, W) each
            top = max(float(p.max()) for p in pair) or 1.0
            for k, heat in enumerate(pair):
                ax = axes[i, 2 + 2 * j + k]
                ax.imshow(heat, cmap="inferno", vmin=0, vmax=top)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{literal(method)}\n{'clean' if k == 0 else 'attacked'}",
                                 fontsize=7)
        if i == 0:
            axes[0, 0].set_title("clean", fontsize=7)
            axes[0, 1].set_title("attacked", fontsize=7)
    if title:
        fig.suptitle(literal(title), fontsize=10)
    return _save(fig, path)


def model_maps(x, maps: Mapping[str, Any], path=None, *, labels: Sequence[str] = (),
               notes: Mapping[str, str] | None = None, title: str = "",
               max_cols: int = 6) -> Figure:
    """The same images explained by several models: images on top, one row of |map| per model.

    Standard and robust models' maps then sit in one column per image, directly comparable
    (Tsipras et al. 2019: robust models' gradients look like the digit).

    Args:
        x: the images, an array (N, C, H, W) in [0, 1].
        maps: ``{model: maps shaped like x}`` in row order; the channel-summed absolute
            value is shown, each panel scaled to its own 99th percentile (only the pattern
            is compared: robust and standard gradients differ in size by orders of
            magnitude).
        labels: one caption per image (e.g. its class), or none.
        notes: a second line under a model's name (e.g. its alignment score).
        max_cols: at most this many images, the first ones.

    Returns:
        The figure.

    Example:
        >>> model_maps(x, {"mlp": a_mlp, "mlp-pgd": a_pgd}, "saliency.png")  # doctest: +SKIP
    """
    import numpy as np

    if not maps:
        raise RobustkitError("model_maps needs at least one model's maps")
    n = min(len(x), max_cols)
    rows = 1 + len(maps)
    fig = Figure(figsize=(1.2 * n + 1.1, 1.2 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, n, squeeze=False)
    for j in range(n):
        _show(axes[0, j], x[j])
        if j < len(labels):
            axes[0, j].set_title(literal(labels[j]), fontsize=8)
    axes[0, 0].set_ylabel("image", fontsize=8)
    for i, (model, m) in enumerate(maps.items(), start=1):
        for j in range(n):
            heat = np.abs(np.asarray(m[j])).sum(0)  # (H, W)
            # The 99th percentile, not the maximum: a few outlying pixels would otherwise
            # leave the rest of the map black.
            top = float(np.percentile(heat, 99)) or float(heat.max()) or 1.0
            ax = axes[i, j]
            ax.imshow(heat, cmap="inferno", vmin=0, vmax=top)
            ax.set_xticks([])
            ax.set_yticks([])
        note = (notes or {}).get(model)
        axes[i, 0].set_ylabel(literal(f"{model}\n{note}" if note else model), fontsize=8)
    if title:
        fig.suptitle(literal(title), fontsize=10)
    return _save(fig, path)


def alignment_chart(values: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
                    path=None, *, title: str = "") -> Figure:
    """Perceptual alignment per method (groups) and model (bars), with every example.

    Top: mean Spearman correlation of |map| with the image; bottom: the share of |map| on
    the digit's pixels, with a black tick at the ink's share of the area (what a uniform
    map gets). Bars are means over the examples, error bars their standard deviation, dots
    the examples themselves.

    Args:
        values: ``{model: {method: {"spearman": [...], "ink_share": [...],
            "area_share": [...]}}}``, per-example values; a missing method is left out.
        title: the figure's title.

    Returns:
        The figure.

    Example:
        >>> alignment_chart({"mlp": {"saliency": {"spearman": [0.1, 0.2],
        ...     "ink_share": [0.3, 0.2], "area_share": [0.2, 0.2]}}}, "a.png")  # doctest: +SKIP
    """
    import numpy as np

    models = list(values)
    methods = list(dict.fromkeys(m for per in values.values() for m in per))
    if not methods:
        raise RobustkitError("alignment_chart needs at least one model with one method")
    width = 0.8 / len(models)
    bars = len(models) * len(methods)
    fig = Figure(figsize=(max(6.4, 0.3 * bars + 2.8), 6.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    jitter = np.random.default_rng(0)  # fixed: the same figure on every render
    for k, model in enumerate(models):
        color = f"C{k % 10}"
        label: str | None = literal(model)  # on the model's first bar only: one legend entry
        for g, method in enumerate(methods):
            v = values[model].get(method)
            if not v:
                continue
            pos = g - 0.4 + width * (k + 0.5)  # the model's slot in the method's group
            for ax, metric in ((top, "spearman"), (bottom, "ink_share")):
                pts = np.asarray(v[metric], dtype=float)  # (examples,)
                ax.bar(pos, pts.mean(), width * 0.9, color=color, alpha=0.75,
                       yerr=pts.std() if len(pts) > 1 else None, capsize=2,
                       error_kw={"elinewidth": 0.8}, label=label if ax is top else None)
                ax.scatter(pos + jitter.uniform(-0.3, 0.3, len(pts)) * width, pts, s=5,
                           color="black", alpha=0.5, linewidths=0, zorder=3)
            area = float(np.mean(v["area_share"]))
            bottom.hlines(area, pos - width * 0.45, pos + width * 0.45, color="black",
                         linewidth=1.5, zorder=4)
            label = None
    for ax, ylabel in ((top, "Spearman(|map|, image)"), (bottom, "share of |map| on digit")):
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    bottom.set_xticks(range(len(methods)), [literal(m) for m in methods], fontsize=9)
    top.axhline(0, color="black", linewidth=0.8)
    top.set_title("rank correlation of |map| with the image's pixels", fontsize=9)
    bottom.set_title("share of |map| on the digit (black ticks: the digit's share of the area)",
                     fontsize=9)
    bottom.set_ylim(0, None)
    fig.legend(loc="outside lower center", ncols=min(len(models), 6), fontsize=8)
    if title:
        fig.suptitle(literal(title), fontsize=10)
    return _save(fig, path)
