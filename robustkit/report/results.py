"""Reading a run's stored results into the tables a report shows (no model is ever run)."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from robustkit.errors import RobustkitError


def load(run_dir: str | Path) -> dict[str, Any]:
    """``results.json``, ``manifest.json`` and the config text of a run folder."""
    root = Path(run_dir)
    path = root / "results.json"
    if not path.exists():
        raise RobustkitError(f"{root} holds no results.json: run `robustkit run CONFIG` first")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RobustkitError(f"{path} is not valid JSON: {err}") from None
    manifest = root / "manifest.json"
    config = root / "config.toml"
    return {"results": results,
            "manifest": json.loads(manifest.read_text()) if manifest.exists() else {},
            "config": config.read_text() if config.exists() else ""}


def of_kind(records: Iterable[dict], kind: str) -> list[dict]:
    return [r for r in records if r.get("kind") == kind]


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN when there is none."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def fmt(mean: float, std: float = 0.0, percent: bool = True, digits: int = 1) -> str:
    """``97.4 ± 0.3`` (percent) or ``0.412``; ``n/a`` for NaN."""
    if mean is None or math.isnan(mean):
        return "n/a"
    scale = 100 if percent else 1
    text = f"{scale * mean:.{digits}f}"
    if std and not math.isnan(std) and std > 0:
        text += f" ± {scale * std:.{digits}f}"
    return text


def by(records: Iterable[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Group records by the values of ``keys`` (insertion order kept)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[tuple(r.get(k) for k in keys)].append(r)
    return dict(groups)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to ``{"a.b": leaf}`` (for generic metric tables)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return {k.rstrip("."): v for k, v in out.items()}
    return {prefix.rstrip("."): value}
