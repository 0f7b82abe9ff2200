"""Figures drawn from stored results."""

from __future__ import annotations

import pytest

from robustkit.report.figures import alignment_chart, model_maps, transfer_heatmaps


def test_transfer_heatmaps_draw_one_panel_per_eps_with_every_cell(tmp_path):
    matrices = {0.2: {"a": {"a": 0.0, "b": 0.5}, "b": {"a": 0.7, "b": 0.1}},
                0.1: {"a": {"a": 0.3, "b": 0.9}, "b": {"a": 0.95, "b": 0.4}}}
    fig = transfer_heatmaps(matrices, tmp_path / "deep" / "h.png")
    panels = [ax for ax in fig.axes if ax.get_title().startswith("eps")]
    assert [ax.get_title() for ax in panels] == ["eps = 0.1", "eps = 0.2"]  # sorted by eps
    assert sorted(t.get_text() for t in panels[1].texts) == ["0.0", "10.0", "50.0", "70.0"]
    assert len(panels[0].patches) == 2  # the two white-box cells are outlined
    assert (tmp_path / "deep" / "h.png").stat().st_size > 0


def test_transfer_heatmaps_need_a_matrix():
    with pytest.raises(ValueError, match="at least one matrix"):
        transfer_heatmaps({})


def test_model_maps_put_each_model_in_a_row_under_the_same_images(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 5, 5))
    maps = {"std": rng.normal(size=x.shape), "robust": -x}  # signed: |map| is drawn
    fig = model_maps(x, maps, tmp_path / "m.png", labels=[f"label {i}" for i in range(8)],
                     notes={"robust": "Spearman 1.00"}, max_cols=6)
    assert len(fig.axes) == 3 * 6  # the image row and one row per model, six columns
    rows = [fig.axes[6 * i].get_ylabel() for i in range(3)]
    assert rows == ["image", "std", "robust\nSpearman 1.00"]
    assert [ax.get_title() for ax in fig.axes[:6]] == [f"label {i}" for i in range(6)]
    assert np.allclose(fig.axes[12].images[0].get_array(), x[0, 0])  # |-x| = x
    assert (tmp_path / "m.png").stat().st_size > 0
    with pytest.raises(ValueError, match="at least one"):
        model_maps(x, {})


def test_alignment_chart_draws_a_bar_and_every_example_per_model_and_method(tmp_path):
    ex = {"spearman": [0.1, 0.3], "ink_share": [0.2, 0.4], "area_share": [0.15, 0.15]}
    values = {"std": {"saliency": ex, "gradcam": ex},
              "robust": {"saliency": {k: [v + 0.3 for v in vs] for k, vs in ex.items()}}}
    fig = alignment_chart(values, tmp_path / "a.png")
    top, bottom = fig.axes[:2]
    assert [t.get_text() for t in bottom.get_xticklabels()] == ["saliency", "gradcam"]
    heights = sorted(round(p.get_height(), 6) for p in top.patches)
    assert heights == [0.2, 0.2, 0.5]  # robust has no gradcam bar
    from matplotlib.collections import PathCollection

    dots = [c for c in top.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in dots) == 6  # every example a dot
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["std", "robust"]
    assert (tmp_path / "a.png").stat().st_size > 0
    with pytest.raises(ValueError, match="at least one model"):
        alignment_chart({"std": {}})
