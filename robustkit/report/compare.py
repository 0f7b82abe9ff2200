"""Two or more runs side by side: ``robustkit compare reports/A reports/B --out DIR``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

from robustkit.core import check_writable_dir, write_atomic
from robustkit.errors import RobustkitError
from robustkit.report import compare_sections as sections
from robustkit.report import figures
from robustkit.report.render import _HTML, _MD, slug
from robustkit.report.results import fmt, load, structure_errors


def compare(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write ``index.html`` and ``README.md`` comparing the runs section by section.

    Models are named ``run: model``. Shown side by side: models (clean accuracy),
    robustness curves (drawn together when the runs used the same attack name),
    validity checks, explanations (faithfulness and perceptual alignment), sanity checks
    and transfer within each run; a section appears when any run has records for it.
    Only the runs' ``results.json`` is read: nothing is recomputed. User strings are
    escaped as in :func:`robustkit.report.render`; a damaged file is one
    :class:`RobustkitError` naming it, and so is an output that cannot be written.

    Args:
        run_dirs: two or more run folders (each with ``results.json``).
        out: the folder to write.

    Returns:
        The path of the HTML page.

    Example:
        >>> compare(["reports/quickstart", "reports/robust_vs_standard"],
        ...         "reports/cmp")                                    # doctest: +SKIP
    """
    if len(run_dirs) < 2:
        raise RobustkitError("compare needs at least two run folders")
    check_writable_dir(Path(out) / "figures", "comparison folder")
    runs = {}
    paths = []
    for d in run_dirs:
        loaded = load(d)
        paths.append(str(loaded["path"]))
        name = loaded["results"].get("experiment") or Path(d).name
        if name in runs:
            name = str(d)
        runs[name] = loaded["results"]["records"]
    out = Path(out)
    with structure_errors(", ".join(paths), (jinja2.UndefinedError,)):
        context = {"runs": list(runs), "rows": sections.models(runs),
                   "robustness": _robustness(sections.curves(runs), out),
                   "validity": sections.validity(runs),
                   "explanations": sections.explanations(runs),
                   "sanity": sections.sanity(runs), "transfer": sections.transfer(runs)}
        html = _HTML.get_template("compare.html.j2").render(**context)
        md = _MD.get_template("compare.md.j2").render(**context)
    write_atomic(out / "index.html", html.encode())
    write_atomic(out / "README.md", md.encode())
    return out / "index.html"


def _robustness(curves: dict[str, dict[str, list]], out: Path) -> list[dict[str, Any]]:
    """Draw each attack's curves of every run into one figure; their table beside it."""
    robustness = []
    for attack, series in curves.items():
        name = slug("compare", attack)
        figures.line_chart(series, out / "figures" / name, xlabel="eps",
                           ylabel="robust accuracy", title=f"{attack}: all runs")
        eps = sorted({p[0] for pts in series.values() for p in pts})
        robustness.append({"attack": attack, "figure": f"figures/{name}", "eps": eps, "rows": [
            {"model": label, "cells": [next((fmt(m, s) for e2, m, s in pts if e2 == e), "")
                                       for e in eps]} for label, pts in series.items()]})
    return robustness
