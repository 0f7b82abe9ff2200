"""Reports drawn from stored results: figures, HTML and Markdown; nothing here runs a model.

``render(run_dir)`` writes a run folder's ``index.html`` and ``README.md``;
``check_page`` (in :mod:`robustkit.report.browser`) opens one in headless Chromium.
"""

from robustkit.report.browser import check_page, find_chromium
from robustkit.report.compare import compare
from robustkit.report.figures import transfer_heatmaps
from robustkit.report.render import render

__all__ = ["check_page", "compare", "find_chromium", "render", "transfer_heatmaps"]
