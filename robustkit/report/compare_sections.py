"""The tables of ``robustkit compare``, built from each run's stored records only.

Every builder takes ``runs``, an ordered ``{run name: records}`` mapping (the ``records``
list of each run's ``results.json``), and returns rows whose cells are already formatted
strings; a section no run has records for comes back empty (``[]``) or ``None``, and the
templates leave it out. Rows about the same model (and method) sit next to each other, in
the runs' order, so two seeds or configs of one experiment read line by line.

Example:
    >>> runs = {"a": [{"kind": "validity", "model": "mlp", "seed": 0, "checks": [
    ...     {"name": "monotone_in_eps", "passed": True, "detail": ""},
    ...     {"name": "beats_random_noise", "passed": False, "detail": ""}]}]}
    >>> row = validity(runs)[0]
    >>> row["passed"], row["failed"], row["failed_checks"]
    (1, 1, ['beats_random_noise'])
"""

from __future__ import annotations

from typing import Any

from robustkit.report.results import by, fmt, mean_std, of_kind

Runs = dict[str, list[dict]]

ALIGNMENT = ("spearman", "ink_share", "area_share")


def models(runs: Runs) -> list[dict[str, Any]]:
    """One row per run and model: architecture, parameters, clean accuracy (mean ± std, %)."""
    return [{"run": run, "model": model, "arch": recs[0]["arch"],
             "parameters": recs[0]["parameters"],
             "accuracy": fmt(*mean_std(r["clean_accuracy"] for r in recs))}
            for run, records in runs.items()
            for (model,), recs in by(of_kind(records, "model"), "model").items()]


def curves(runs: Runs) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    """``{attack: {"run: model": [(eps, mean, std), ...]}}`` of robust accuracy."""
    out: dict[str, dict[str, list]] = {}
    for run, records in runs.items():
        for (attack, model), recs in by(of_kind(records, "attack"), "attack", "model").items():
            eps = sorted({r["eps"] for r in recs})
            out.setdefault(attack, {})[f"{run}: {model}"] = [
                (e, *mean_std(r["robust_accuracy"] for r in recs if r["eps"] == e)) for e in eps]
    return out


def validity(runs: Runs) -> list[dict[str, Any]]:
    """One row per run and model: how many checks passed, failed and were skipped (all
    seeds together), and the failed checks' names (with their seed when there are several)."""
    rows = []
    for run, records in runs.items():
        for (model,), recs in by(of_kind(records, "validity"), "model").items():
            checks = [(r.get("seed"), c) for r in recs for c in r["checks"]]
            several = len(recs) > 1
            rows.append({"run": run, "model": model, "seeds": len(recs),
                         "passed": sum(c["passed"] is True for _, c in checks),
                         "failed": sum(c["passed"] is False for _, c in checks),
                         "skipped": sum(c["passed"] is None for _, c in checks),
                         "failed_checks": [f"{c['name']} (seed {s})" if several else c["name"]
                                           for s, c in checks if c["passed"] is False]})
    return _side_by_side(rows, "model")


def explanations(runs: Runs) -> dict[str, Any] | None:
    """Per run, model and method: faithfulness AUCs beside their random-order baselines and,
    for runs that recorded it, perceptual alignment; mean ± std over seeds.

    Cells a run did not record (alignment before it existed) are empty strings;
    ``alignment`` says whether any run has those columns at all.
    """
    rows = []
    for run, records in runs.items():
        recs = [r for r in of_kind(records, "explain") if not r.get("skipped")]
        for (model, method), rs in by(recs, "model", "method").items():
            row = {"run": run, "model": model, "method": method}
            for curve in ("deletion", "insertion"):
                for key, col in (("auc", curve), ("random_auc", f"{curve}_random")):
                    row[col] = _cell(r["faithfulness"][curve][key] for r in rs
                                     if curve in (r.get("faithfulness") or {}))
            for metric in ALIGNMENT:
                row[metric] = _cell(r["alignment"][metric] for r in rs if r.get("alignment"))
            rows.append(row)
    if not rows:
        return None
    rows = _side_by_side(rows, "model", "method")
    return {"rows": rows, "alignment": any(r["spearman"] for r in rows)}


def sanity(runs: Runs) -> list[dict[str, Any]]:
    """Per run, model and method: Spearman of |attribution| once every layer is randomized
    (the cascade's last entry; Adebayo et al. 2018), mean ± std over seeds."""
    rows: list[dict[str, Any]] = []
    for run, records in runs.items():
        for (model,), recs in by(of_kind(records, "sanity"), "model").items():
            methods = dict.fromkeys(m for r in recs for m in r["table"])
            rows.extend({"run": run, "model": model, "method": method,
                         "layer": next(r["table"][method][-1]["layer"] for r in recs
                                       if r["table"].get(method)),
                         "spearman_abs": _cell(r["table"][method][-1]["spearman_abs"]
                                               for r in recs if r["table"].get(method))}
                        for method in methods)
    return _side_by_side(rows, "model", "method")


def transfer(runs: Runs) -> dict[str, Any] | None:
    """One table per eps: a row per run and source model, a column per target model (every
    run's targets together), target accuracy in % (mean ± std over seeds).

    Only pairs within one run are filled; a target another run has stays empty.
    ``white_box`` marks the cells where source and target are the same model.
    """
    groups = {(run, source): rs for run, records in runs.items()
              for (source,), rs in by(of_kind(records, "transfer"), "source").items()}
    if not groups:
        return None
    targets = list(dict.fromkeys(t for rs in groups.values() for r in rs
                                 for row in r["rows"] for t in row["accuracy"]))
    eps_values = sorted({row["eps"] for rs in groups.values() for r in rs for row in r["rows"]})
    tables = []
    for e in eps_values:
        rows = []
        for (run, source), rs in groups.items():
            here = [row for r in rs for row in r["rows"] if row["eps"] == e]
            if here:
                rows.append({"run": run, "source": source, "attack": rs[0]["attack"], "cells": [
                    {"accuracy": _cell((row["accuracy"][t] for row in here
                                        if t in row["accuracy"]), percent=True),
                     "white_box": t == source} for t in targets]})
        tables.append({"eps": e, "rows": _side_by_side(rows, "source")})
    return {"targets": targets, "tables": tables}


def _side_by_side(rows: list[dict], *keys: str) -> list[dict]:
    """``rows`` grouped by ``keys`` in order of first appearance (a stable sort)."""
    order: dict[tuple, int] = {}
    for r in rows:
        order.setdefault(tuple(r[k] for k in keys), len(order))
    return sorted(rows, key=lambda r: order[tuple(r[k] for k in keys)])


def _cell(values, percent: bool = False) -> str:
    """Mean ± std of ``values``; an empty string when there are none (not recorded)."""
    values = list(values)
    if not values:
        return ""
    return fmt(*mean_std(values), percent=percent, digits=1 if percent else 3)
