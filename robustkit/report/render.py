"""Render a run folder's results as ``index.html`` and ``README.md`` with PNG figures.

``render(run_dir)`` reads ``results.json`` and the arrays the run stored; it never builds
or calls a model, so rendering again (``robustkit report reports/NAME``) costs seconds.

User strings are shown as written and never become markup (:mod:`robustkit.report.text`):
HTML comes from Jinja2 templates with autoescaping on, so a model named
``<script>alert(1)</script>`` is shown as text; every value a Markdown template prints is
escaped, so ``[click](http://evil)`` is no link; bidirectional controls are shown as
``\\u202e``; figure texts go through :func:`robustkit.explain.plotting.literal`, so
``$\\frac{1}{0}$`` is no mathtext. A damaged file is one :class:`RobustkitError` naming
it, and so is a file that cannot be written (a full disk).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from robustkit.config import Reference, from_dict
from robustkit.core import check_writable_dir, sha256, write_atomic
from robustkit.errors import RobustkitError
from robustkit.store import Store
from robustkit.explain.plotting import plot_sanity
from robustkit.report import figures
from robustkit.report.results import (by, flatten, fmt, load, mean_std, of_kind,
                                      structure_errors)
from robustkit.report.text import html_text, md_finalize, md_text

_HTML = jinja2.Environment(loader=jinja2.PackageLoader("robustkit.report", "templates"),
                           autoescape=True, undefined=jinja2.StrictUndefined,
                           trim_blocks=True, lstrip_blocks=True, finalize=html_text)
# Markdown: every value printed is escaped (md_text): Markdown viewers render raw HTML,
# links, images, emphasis and tables; the markup a report means is template text.
_MD = jinja2.Environment(loader=jinja2.PackageLoader("robustkit.report", "templates"),
                         autoescape=False, undefined=jinja2.StrictUndefined,
                         trim_blocks=True, lstrip_blocks=True, finalize=md_finalize)


def _pgd40(record: dict) -> float | None:
    """An attack record's cost in PGD-40 equivalents per image, if it counted one."""
    cost = record.get("cost")
    value = cost.get("pgd40_per_example") if isinstance(cost, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def slug(*parts: Any) -> str:
    """A safe, unique file name for a figure named by user strings: ASCII letters, digits,
    ``.`` and ``-`` only (nothing Markdown or HTML would read), plus a hash of the parts."""
    text = "-".join(str(p) for p in parts)
    safe = re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip(".-")[:60]
    return f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:6]}.png"


def md_cell(value: Any) -> str:
    """``value`` as Markdown text, safe in a table cell (:func:`~robustkit.report.text.md_text`:
    pipes, newlines and every other Markdown construct escaped)."""
    return md_text(value)


def render(run_dir: str | Path) -> Path:
    """Write ``index.html``, ``README.md`` and ``figures/`` for a run; returns the HTML path.

    Example:
        >>> render("reports/quickstart")            # doctest: +SKIP
        PosixPath('reports/quickstart/index.html')
    """
    root = Path(run_dir)
    loaded = load(root)
    check_writable_dir(root / "figures", "report folder")
    with structure_errors(f"{loaded['path']} and the arrays of its units",
                          (jinja2.UndefinedError,)):
        context = Report(root, loaded).context()
        html = _HTML.get_template("index.html.j2").render(**context)
        md = _MD.get_template("README.md.j2").render(**context)
    write_atomic(root / "index.html", html.encode())
    write_atomic(root / "README.md", md.encode())
    return root / "index.html"


class Report:
    """Builds the template context (tables and figure paths) from stored results."""

    def __init__(self, root: Path, loaded: dict[str, Any]) -> None:
        self.root = root
        self.results = loaded["results"]
        self.records = self.results["records"]
        self.manifest = loaded["manifest"]
        self.config_text = loaded["config"]
        self.config_data = loaded["config_data"]
        self.config_path = loaded["config_path"]
        self.store = Store(root)
        self.fig_dir = root / "figures"
        # The config copy's parts the report shows, checked before any figure is drawn.
        self.description = self._description()
        self.published = self._references()

    def figure(self, name: str, draw) -> str:
        """Draw a figure into ``figures/name`` (closing it) and return its relative path."""
        path = self.fig_dir / name
        draw(path)
        return f"figures/{name}"

    def arrays(self, record: dict[str, Any], needed: Sequence[str], required: bool = True
               ) -> dict[str, np.ndarray]:
        """The arrays stored with ``record``'s unit, each of ``needed`` present.

        When the record carries the arrays' checksum (``arrays_sha256``, written by the
        Store), the file must match it: a truncated or changed file is caught even when it
        still opens. A missing (unless not ``required``: then ``{}``), damaged or
        incomplete file is one error naming it.
        """
        key = record["key"]
        path = self.store.units / f"{key}.npz"
        rerun = "rerun `robustkit run` to recompute it"
        if not path.is_file():
            if not required:
                return {}
            raise RobustkitError(f"arrays file {path} of unit {key} is missing; {rerun}")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise RobustkitError(f"arrays file {path} of unit {key} cannot be read: "
                                 f"{err.strerror or type(err).__name__}") from None
        checksum = record.get("arrays_sha256")
        if checksum is not None and sha256(data) != checksum:
            raise RobustkitError(f"arrays file {path} of unit {key} is damaged: it does not "
                                 f"match the checksum in results.json (truncated or changed?); "
                                 f"{rerun}")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
            raise RobustkitError(f"arrays file {path} of unit {key} is damaged: it cannot be "
                                 f"opened ({err}); {rerun}") from None
        missing = [k for k in needed if k not in arrays]
        if missing:
            raise RobustkitError(f"arrays file {path} of unit {key} lacks "
                                 f"{', '.join(missing)} (damaged or from another version?); "
                                 f"{rerun}")
        return arrays

    def context(self) -> dict[str, Any]:
        return {
            "title": self.results.get("experiment", self.root.name),
            "dataset": self.results.get("dataset", ""),
            "seeds": self.results.get("seeds", []),
            "manifest": self.manifest, "provenance": _provenance(self.manifest),
            "config_text": self.config_text, "description": self.description,
            "models": self.models(), "robustness": self.robustness(),
            "autoattack": self.autoattack(),
            "imperceptibility": self.imperceptibility(), "transfer": self.transfer(),
            "explanations": self.explanations(), "validity": self.validity(),
            "references": self.references(), "blackbox": self.blackbox(),
        }

    # -- sections ------------------------------------------------------------------
    def models(self) -> dict[str, Any]:
        rows, train_series, loss_series = [], {}, {}
        for (name,), recs in by(of_kind(self.records, "model"), "model").items():
            acc = mean_std(r["clean_accuracy"] for r in recs)
            secs = mean_std(r.get("train_seconds") for r in recs)
            first = recs[0]
            rows.append({"model": name, "arch": first["arch"], "parameters": first["parameters"],
                         "train_size": first.get("train_size"), "accuracy": fmt(*acc),
                         "seconds": fmt(*secs, percent=False),
                         "architecture": first.get("architecture", ""),
                         "training": first.get("training") or {}})
            histories = [r["history"] for r in recs if r.get("history")]
            if histories:
                epochs: dict[Any, list[dict]] = {}
                for h in histories:
                    for e in h:
                        epochs.setdefault(e["epoch"], []).append(e)
                train_series[name] = [(ep, *mean_std(e["train_accuracy"] for e in es))
                                      for ep, es in epochs.items()]
                loss_series[name] = [(ep, *mean_std(e["loss"] for e in es))
                                     for ep, es in epochs.items()]
        figs = []
        if train_series:
            figs.append(self.figure("training-accuracy.png", lambda p: figures.line_chart(
                train_series, p, xlabel="epoch", ylabel="training accuracy",
                title="training accuracy per epoch")))
            figs.append(self.figure("training-loss.png", lambda p: figures.line_chart(
                loss_series, p, xlabel="epoch", ylabel="training loss", percent=False,
                title="training loss per epoch")))
        return {"rows": rows, "figures": figs}

    def robustness(self) -> list[dict[str, Any]]:
        out = []
        attacks = of_kind(self.records, "attack")
        clean = {name: mean_std(r["clean_accuracy"] for r in recs) for (name,), recs in
                 by(of_kind(self.records, "model"), "model").items()}
        for (label,), recs in by(attacks, "attack").items():
            series, rows = {}, []
            eps_values = sorted({r["eps"] for r in recs})
            for (name,), mrecs in by(recs, "model").items():
                points = [(e, *mean_std(r["robust_accuracy"] for r in mrecs if r["eps"] == e))
                          for e in eps_values]
                if 0.0 not in eps_values and name in clean:
                    points.insert(0, (0.0, *clean[name]))
                series[name] = points
                rows.append({"model": name, "cells": [
                    fmt(*mean_std(r["robust_accuracy"] for r in mrecs if r["eps"] == e))
                    for e in eps_values],
                    "perceptibility": [{
                        "eps": e, **{k: fmt(*mean_std(r.get(k) for r in mrecs if r["eps"] == e),
                                            percent=False, digits=3)
                                     for k in ("median_l2", "median_linf", "median_psnr",
                                               "median_ssim")},
                        "error_rate": fmt(*mean_std(r["error_rate"] for r in mrecs
                                                    if r["eps"] == e)),
                        "confidence": fmt(*mean_std(r["mean_confidence"] for r in mrecs
                                                    if r["eps"] == e)),
                        "cost": fmt(*mean_std(_pgd40(r) for r in mrecs if r["eps"] == e),
                                    percent=False, digits=2),
                    } for e in eps_values]})
            options = recs[0].get("options", {})
            fig = self.figure(slug("robustness", label), lambda p: figures.line_chart(
                series, p, xlabel="eps", ylabel="robust accuracy",
                title=f"{label} {_options_text(options)}"))
            out.append({"attack": label, "method": recs[0]["method"], "options": options,
                         "eps": eps_values, "rows": rows, "figure": fig})
        return out

    def autoattack(self) -> list[dict[str, Any]]:
        """"Which attack broke each example": per AutoAttack entry and eps, a stacked bar
        per model, the split of cost in PGD-40 equivalents, PGD-40 beside it, the flags."""
        out = []
        recs = [r for r in of_kind(self.records, "attack") if r.get("method") == "autoattack"
                and isinstance(r.get("autoattack"), dict)]
        for (label, eps), group in by(recs, "attack", "eps").items():
            order: list[str] = []
            bars: dict[str, dict[str, float]] = {}
            notes: dict[str, str] = {}
            rows = []
            for (name,), mrecs in by(group, "model").items():
                seg: dict[str, float] = {}
                n = sum(r["n"] for r in mrecs)
                for r in mrecs:
                    aa = r["autoattack"]
                    order += [a for a in aa["attacks"] if a not in order]
                    seg["clean error"] = seg.get("clean error", 0.0) + \
                        (1 - r["clean_accuracy"]) * r["n"] / n
                    seg["robust"] = seg.get("robust", 0.0) + r["robust_accuracy"] * r["n"] / n
                    for a, v in aa["split"].items():
                        seg[a] = seg.get(a, 0.0) + v["broken"] / n
                cost = mean_std(r["autoattack"]["cost"]["pgd40_per_example"] for r in mrecs)
                pgd = mean_std(r["autoattack"].get("pgd_accuracy") for r in mrecs)
                bars[name] = seg
                notes[name] = f"{cost[0]:.1f} PGD-40"
                rows.append({
                    "model": name,
                    "autoattack": fmt(*mean_std(r["robust_accuracy"] for r in mrecs)),
                    "pgd": fmt(*pgd), "clean": fmt(*mean_std(r["clean_accuracy"] for r in mrecs)),
                    "cost": f"{cost[0]:.2f}",
                    "split": {a: f"{100 * seg.get(a, 0.0):.1f}" for a in order},
                    "flags": sorted({f["message"] for r in mrecs
                                     for f in r["autoattack"]["flags"]})})
            fig = self.figure(slug("autoattack", label, f"eps{eps:g}"),
                              lambda p: figures.broken_by_chart(
                                  bars, order, p, notes=notes,
                                  title=f"which attack broke each example, eps {eps:g}"))
            out.append({"attack": label, "eps": eps, "order": order, "rows": rows,
                        "figure": fig, "version": group[0]["autoattack"]["version"],
                        "norm": group[0]["autoattack"]["norm"]})
        return out

    def blackbox(self) -> list[dict[str, Any]]:
        """"Black box: a substitute from the oracle's labels": per oracle, the substitute's
        accuracy per round with its queries, transfer against eps beside the true-label
        surrogate, Square against its budget; means ± std over the seeds."""
        out = []
        for (name,), recs in by(of_kind(self.records, "blackbox"), "model").items():
            first, sub = recs[0], recs[0]["substitute"]
            rounds, accuracy = [], []
            for same in zip(*(r["substitute"]["history"] for r in recs)):  # one round
                acc = mean_std(h["accuracy"] for h in same)
                accuracy.append((same[0]["round"], *acc))
                rounds.append({"round": same[0]["round"], "size": same[0]["size"],
                               "queries": same[0]["queries"], "accuracy": fmt(*acc)})
            kinds = [k for k in ("substitute", "surrogate") if all(k in r["transfer"]
                                                                  for r in recs)]
            labels = {"substitute": "substitute (oracle's labels)",
                      "surrogate": "surrogate (true labels)"}

            def per_eps(kind: str, field: str, i: int) -> tuple[float, float]:
                return mean_std(r["transfer"][kind][field][i] for r in recs)

            eps = first["eps"]
            rows = [{"eps": e, "cells": [fmt(*per_eps(k, f, i)) for k in kinds for f in (
                "adversarial_accuracy", "transfer_success")]} for i, e in enumerate(eps)]
            series = {labels[k]: [(e, *per_eps(k, "transfer_success", i))
                                  for i, e in enumerate(eps)] for k in kinds}
            square = [{"queries": q, "robust": fmt(*mean_std(r["robust_accuracy"] for r in rs)),
                       "mean_queries": fmt(*mean_std(r["mean_queries"] for r in rs),
                                           percent=False), "eps": rs[0]["eps"],
                       "norm": rs[0]["norm"],
                       "point": (q, *mean_std(r["robust_accuracy"] for r in rs))}
                      for (q,), rs in by([s for r in recs for s in r["square"]],
                                         "queries").items()]
            surrogates = [r["surrogate"] for r in recs if r.get("surrogate")]
            queries = [(h["round"], h["queries"]) for h in sub["history"]]
            fig = self.figure(slug("blackbox", name), lambda p: figures.blackbox_chart(
                accuracy, queries, series, [s["point"] for s in square], p,
                square_label=(f"Square at eps {square[0]['eps']:g} ({square[0]['norm']})"
                              if square else ""),
                title=f"{name}: black box, {first['attack']} crafted on the substitute"))
            out.append({
                "model": name, "seeds": len(recs), "arch": sub["arch"],
                "arch_options": _options_text(sub.get("arch_options", {})),
                "seed_n": first["seed_n"], "seed_labels": first["seed_labels"],
                "rounds_n": sub["rounds"], "lam": sub["lam"], "flip_every": sub["flip_every"],
                "queries": sub["queries"], "planned": sub["planned_queries"],
                "size": sub["size"], "n": first["n"], "attack": first["attack"],
                "options": _options_text(first.get("options", {})),
                "judge": max(r["judge_queries"] for r in recs),
                "oracle": fmt(*mean_std(r["oracle_accuracy"] for r in recs)),
                "accuracy": rounds[-1]["accuracy"], "rounds": rounds, "kinds": kinds,
                "rows": rows, "square": square, "figure": fig,
                "surrogate": {"size": surrogates[0]["size"], "wanted": surrogates[0]["wanted"],
                              "split": surrogates[0]["train_split"],
                              "accuracy": fmt(*mean_std(s["accuracy"] for s in surrogates))}
                if surrogates else None})
        return out

    def imperceptibility(self) -> dict[str, Any]:
        grids = []
        for r in of_kind(self.records, "examples"):
            if r["seed"] != self.results["seeds"][0]:
                continue
            a = self.arrays(r, ("x", "x_adv", "y", "clean_pred", "clean_conf", "adv_pred",
                                "adv_conf"))
            labels = [f"label {y}: {p} ({100 * c:.0f}%)" for y, p, c in
                      zip(a["y"], a["clean_pred"], a["clean_conf"])]
            adv = [f"predicted {p} ({100 * c:.0f}%)" for p, c in zip(a["adv_pred"], a["adv_conf"])]
            fig = self.figure(slug("examples", r["model"]), lambda p: figures.perturbation_grid(
                a["x"], a["x_adv"], labels, adv, p,
                title=f"{r['model']}: {r['attack']} eps {r['eps']:g}"))
            grids.append({"model": r["model"], "attack": r["attack"], "eps": r["eps"],
                          "figure": fig, "l2": fmt(r["median_l2"], percent=False, digits=3),
                          "psnr": fmt(r["median_psnr"], percent=False),
                          "ssim": fmt(r["median_ssim"], percent=False, digits=3),
                          "success": fmt(r["success_rate"]),
                          "fooled": r["median_l2"] is not None})
        minimal = []
        for r in of_kind(self.records, "minimal"):
            if r["seed"] != self.results["seeds"][0]:
                continue
            fig = self.figure(slug("minimal", r["model"], r["norm"]),
                              lambda p: figures.class_matrix(
                                  r["median"], p, label=f"median {r['norm']} norm",
                                  highlight=r.get("target"),
                                  title=f"{r['model']}: smallest {r['norm']} change, "
                                        "class to target"))
            entry = {"model": r["model"], "norm": r["norm"], "figure": fig,
                     "success": fmt(r["success_rate"]), "pairs": r["pairs"], "target": r["target"],
                     "column": None, "target_figure": None}
            if r.get("target") is not None:
                t = r["target"]
                entry["column"] = [{"source": i, "median": fmt(row[t], percent=False, digits=3)}
                                   for i, row in enumerate(r["median"]) if i != t]
                # Runs recorded before the "every digit into a target" grid have no arrays.
                a = self.arrays(r, ("x", "x_adv", "y", "adv_pred", "adv_conf", "norm"),
                                required=False)
                if a:
                    labels = [f"a {y}" for y in a["y"]]
                    adv = [f"{p} ({100 * c:.0f}%)\n{r['norm']} {n:.2f}"
                           for p, c, n in zip(a["adv_pred"], a["adv_conf"], a["norm"])]
                    entry["target_figure"] = self.figure(
                        slug("into", r["model"], r["norm"], t),
                        lambda p: figures.perturbation_grid(
                            a["x"], a["x_adv"], labels, adv, p, max_rows=10, across=True,
                            title=f"{r['model']}: every digit into a {t} ({r['norm']})"))
            minimal.append(entry)
        return {"grids": grids, "minimal": minimal}

    def transfer(self) -> dict[str, Any] | None:
        recs = of_kind(self.records, "transfer")
        if not recs:
            return None
        eps_values = sorted({row["eps"] for r in recs for row in r["rows"]})
        sources = list(dict.fromkeys(r["source"] for r in recs))
        targets = list(recs[0]["rows"][0]["accuracy"])
        matrices, tables, warnings = {}, [], []
        for e in eps_values:
            acc = {s: {t: mean_std(row["accuracy"][t] for r in recs if r["source"] == s
                                   for row in r["rows"] if row["eps"] == e)[0]
                       for t in targets} for s in sources}
            success = {s: {t: mean_std(row["success"][t] for r in recs if r["source"] == s
                                       for row in r["rows"] if row["eps"] == e)[0]
                           for t in targets} for s in sources}
            matrices[e] = acc
            tables.append({"eps": e, "rows": [{"source": s, "cells": [
                {"accuracy": fmt(acc[s][t]), "success": fmt(success[s][t]),
                 "white_box": s == t} for t in targets]} for s in sources]})
            for t in targets:
                if t in acc:
                    for s in sources:
                        if s != t and acc[s][t] < acc[t][t] - 0.01:
                            warnings.append(f"eps {e:g}: examples crafted on {s} leave {t} at "
                                            f"{fmt(acc[s][t])}%, below the white-box attack on "
                                            f"{t} itself ({fmt(acc[t][t])}%): suspect gradient "
                                            "masking or a broken attack")
        fig = self.figure("transfer.png", lambda p: figures.transfer_heatmaps(
            matrices, p, title=f"{recs[0]['attack']} transfer: target accuracy (%)"))
        sizes = self._surrogate_sizes(recs)
        return {"attack": recs[0]["attack"], "options": recs[0].get("options", {}),
                "targets": targets, "tables": tables, "figure": fig, "warnings": warnings,
                "sizes": sizes}

    def _surrogate_sizes(self, recs: list[dict]) -> dict[str, Any] | None:
        """Transfer success against the surrogate's training-set size, per target."""
        size_of = {r["model"]: r.get("train_size") for r in of_kind(self.records, "model")}
        arch_of = {r["model"]: r["arch"] for r in of_kind(self.records, "model")}
        sizes_per_arch: dict[str, set] = {}
        for r in recs:
            sizes_per_arch.setdefault(arch_of[r["source"]], set()).add(size_of[r["source"]])
        if all(len(s) < 2 for s in sizes_per_arch.values()):
            return None  # no architecture was trained on several sizes
        series: dict[str, list] = {}
        eps = max(row["eps"] for r in recs for row in r["rows"])
        for target in recs[0]["rows"][0]["success"]:
            for arch in sorted({arch_of[r["source"]] for r in recs}):
                points: dict[Any, list[float]] = {}
                for r in recs:
                    if arch_of[r["source"]] != arch or r["source"] == target:
                        continue
                    for row in r["rows"]:
                        if row["eps"] == eps:
                            points.setdefault(size_of[r["source"]], []).append(
                                row["success"][target])
                if points:
                    series[f"{arch} -> {target}"] = [(s, *mean_std(v)) for s, v in points.items()]
        fig = self.figure("transfer-size.png", lambda p: figures.line_chart(
            series, p, xlabel="surrogate training examples",
            ylabel="transfer success", title=f"transfer success at eps {eps:g} by surrogate data"))
        return {"eps": eps, "figure": fig, "series": {
            k: [{"size": s, "success": fmt(m, sd)} for s, m, sd in sorted(v)]
            for k, v in series.items()}}

    def explanations(self) -> dict[str, Any] | None:
        recs = of_kind(self.records, "explain")
        sanity = of_kind(self.records, "sanity")
        if not recs and not sanity:
            return None
        first_seed = self.results["seeds"][0]
        grids, shift_rows, faith_rows, skipped = [], [], [], []
        first: dict[str, dict[str, dict]] = {}  # {method: {model: first seed's arrays}}
        for (name,), mrecs in by(recs, "model").items():
            maps = {}
            arrays: dict[str, np.ndarray] = {}
            for r in mrecs:
                if r.get("skipped"):
                    if r["seed"] == first_seed:
                        skipped.append({"model": name, "method": r["method"],
                                        "reason": r["skipped"]})
                    continue
                if r["seed"] == first_seed:
                    arrays = self.arrays(r, ("x", "x_adv", "y", "clean", "adv"))
                    maps[r["method"]] = (arrays["clean"], arrays["adv"])
                    first.setdefault(r["method"], {})[name] = arrays
            if maps:
                grids.append({"model": name, "figure": self.figure(
                    slug("attributions", name), lambda p: figures.attribution_grid(
                        arrays["x"], arrays["x_adv"], maps, p,
                        title=f"{name}: |attribution| on clean and attacked images"))})
            for (method,), rs in by([r for r in mrecs if not r.get("skipped")],
                                    "method").items():
                for group in ("all", "flipped", "held"):  # Ghorbani et al.'s split
                    stats = [r["shift"][group] for r in rs if group in r["shift"]]
                    if stats:
                        shift_rows.append({"model": name, "method": method, "group": group,
                                           "values": _mean_fmt(stats)})
                faith = [flatten(r["faithfulness"]) for r in rs if r.get("faithfulness")]
                if faith:
                    faith_rows.append({"model": name, "method": method,
                                       "values": _mean_fmt(faith)})
        sanity_out = []
        for r in sanity:
            if r["seed"] != first_seed:
                continue
            fig = self.figure(slug("sanity", r["model"]), lambda p: plot_sanity(r["table"], path=p))
            sanity_out.append({"model": r["model"], "figure": fig, "table": r["table"]})
        return {"grids": grids, "shift": shift_rows, "shift_keys": _keys(shift_rows),
                "faithfulness": faith_rows, "faith_keys": _keys(faith_rows),
                "sanity": sanity_out, "skipped": skipped,
                "alignment": self._alignment(recs, first)}

    def _alignment(self, recs: list[dict], first: dict[str, dict[str, dict]]
                   ) -> dict[str, Any] | None:
        """Tsipras et al. 2019's perceptual alignment: the models' maps of the same images
        side by side per method, a chart of the alignment scores, and their table.

        None for runs whose explanation records predate the ``alignment`` entry.
        """
        recs = [r for r in recs if not r.get("skipped") and r.get("alignment")]
        if not recs:
            return None
        first_seed = self.results["seeds"][0]
        rows = []
        chart: dict[str, dict[str, dict[str, list[float]]]] = {}  # model -> method -> metric
        for (name, method), rs in by(recs, "model", "method").items():
            row = {"model": name, "method": method}
            for entry, suffix in (("alignment", ""), ("alignment_adv", "_adv")):
                for metric in ("spearman", "ink_share", "area_share"):
                    row[metric + suffix] = fmt(*mean_std(r[entry][metric] for r in rs
                                                         if r.get(entry)),
                                               percent=False, digits=3)
            rows.append(row)
            pooled = chart.setdefault(name, {}).setdefault(method, {})  # examples of all seeds
            for metric in ("spearman", "ink_share", "area_share"):
                pooled[metric] = [v for r in rs for v in
                                  r["alignment"].get("per_example", {}).get(
                                      metric, [r["alignment"][metric]]) if v is not None]
        figs = []
        for method in dict.fromkeys(r["method"] for r in recs):
            ok = {r["model"]: r for r in recs
                  if r["method"] == method and r["seed"] == first_seed}
            arrays = {m: a for m, a in first.get(method, {}).items() if m in ok}
            if not arrays:
                continue
            x = next(iter(arrays.values()))["x"]
            # Only models explained on the very same images share a column.
            arrays = {m: a for m, a in arrays.items() if np.array_equal(a["x"], x)}
            labels = [f"label {y}" for y in next(iter(arrays.values()))["y"]]
            notes = {m: "Spearman " + fmt(ok[m]["alignment"]["spearman"], percent=False,
                                          digits=2) for m in arrays}
            draw = functools.partial(
                figures.model_maps, x, {m: a["clean"] for m, a in arrays.items()},
                labels=labels, notes=notes,
                title=f"{method}: |map| of the same images, one row per model")
            figs.append({"method": method, "models": list(arrays),
                         "figure": self.figure(slug("aligned", method), draw)})
        chart_fig = self.figure("alignment.png", lambda p: figures.alignment_chart(
            chart, p, title="how much each map looks like the digit (Tsipras et al. 2019)"))
        return {"figures": figs, "chart": chart_fig, "rows": rows}

    def validity(self) -> list[dict[str, Any]]:
        out = []
        for r in of_kind(self.records, "validity"):
            out.append({"model": r["model"], "seed": r["seed"], "eps": r["eps"],
                        "passed": r["passed"], "checks": [
                            {"name": c["name"], "passed": c["passed"], "detail": c["detail"]}
                            for c in r["checks"]]})
        return out

    def _description(self) -> str:
        """The config's ``description`` ("" when none)."""
        text = self.config_data.get("description", "")
        if not isinstance(text, str):
            raise RobustkitError(f"config copy {self.config_path}: description must be a "
                                 f"string, got {text!r:.60}")
        return text

    def _references(self) -> list[Reference]:
        """The config's published figures; a malformed one is an error naming the file."""
        raw = self.config_data.get("references", [])
        if not isinstance(raw, list):
            raise RobustkitError(f"config copy {self.config_path}: references must be a list "
                                 "of tables ([[references]])")
        try:
            return [from_dict(Reference, item, f"references[{i}]") for i, item in enumerate(raw)]
        except RobustkitError as err:
            raise RobustkitError(f"config copy {self.config_path}: {err}") from None

    def references(self) -> list[dict[str, Any]]:
        out = []
        for i, ref in enumerate(self.published):
            ours = [r.get(ref.metric) for r in of_kind(self.records, "attack")
                    if r["model"] == ref.model and r["attack"] == ref.attack
                    and (ref.eps is None or math.isclose(r["eps"], ref.eps))]
            if not all(v is None or _is_number(v) for v in ours):
                raise RobustkitError(f"config copy {self.config_path}: references[{i}].metric "
                                     f"{ref.metric!r} is not a number in the attack records")
            m, s = mean_std(ours)
            out.append({"claim": ref.claim, "source": ref.source, "published": fmt(ref.value),
                        "ours": fmt(m, s), "difference": fmt(m - ref.value)
                        if not math.isnan(m) else "n/a"})
        return out


def _mean_fmt(dicts: Sequence[dict]) -> dict[str, str]:
    """Mean ± std over seeds of every numeric entry; ``n`` (a count) is summed."""
    keys = [k for k, v in dicts[0].items() if _is_number(v) or v is None]
    return {k: (str(sum(d[k] for d in dicts)) if k == "n" else
                fmt(*mean_std(d.get(k) for d in dicts), percent=False, digits=3)) for k in keys}


def _keys(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r["values"]))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)


def _options_text(options: Any) -> str:
    if not isinstance(options, dict):
        return str(options)
    return ", ".join(f"{k}={v}" for k, v in options.items())


def _provenance(manifest: dict[str, Any]) -> dict[str, str] | None:
    """What the report's header says produced the run ("?" where the manifest is silent)."""
    if not manifest:
        return None
    versions = manifest.get("versions")
    versions = versions if isinstance(versions, dict) else {}
    return {"robustkit": str(versions.get("robustkit", "?")),
            "torch": str(versions.get("torch", "?")),
            "commit": str(manifest.get("git_commit") or "unknown"),
            "device": str(manifest.get("device", "?"))}
