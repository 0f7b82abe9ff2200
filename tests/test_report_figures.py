"""Figures drawn from stored results."""

from __future__ import annotations

import pytest

from robustkit.report.figures import transfer_heatmaps


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
