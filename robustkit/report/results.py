"""Reading a run's stored results into the tables a report shows (no model is ever run).

Every file a report reads is checked as it is read: a missing, truncated or damaged
``results.json``, ``manifest.json`` or ``config.toml``, or a ``results.json`` whose
records lack the fields robustkit writes, is one :class:`RobustkitError` naming the file
(never a ``JSONDecodeError`` or ``KeyError`` traceback).

Example:
    >>> loaded = load("reports/quickstart")                    # doctest: +SKIP
    >>> sorted(loaded)                                          # doctest: +SKIP
    ['config', 'config_data', 'config_path', 'manifest', 'path', 'results']
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from robustkit.config import tomllib
from robustkit.core import read_json
from robustkit.errors import RobustkitError


def load(run_dir: str | Path) -> dict[str, Any]:
    """``results.json`` (checked), ``manifest.json`` and the config copy of a run folder.

    Args:
        run_dir: a folder written by ``robustkit run``.

    Returns:
        ``{"results": dict, "manifest": dict ({} when absent), "config": the config's text
        ("" when absent), "config_data": the parsed config ({} when absent), "path": the
        results file, "config_path": the config copy}``.

    Raises:
        RobustkitError: naming the file that is missing, unreadable, malformed or of the
            wrong structure.
    """
    root = Path(run_dir)
    if root.exists() and not root.is_dir():
        raise RobustkitError(f"{root} is a file, not a run folder")
    path = root / "results.json"
    if not path.exists():
        raise RobustkitError(f"{root} holds no results.json: run `robustkit run CONFIG` first")
    results = check_results(read_json(path, "results file"), path)
    manifest_path = root / "manifest.json"
    manifest: Any = {}
    if manifest_path.exists():
        manifest = read_json(manifest_path, "manifest")
        if not isinstance(manifest, dict):
            raise RobustkitError(f"manifest {manifest_path} is damaged: expected a JSON "
                                 f"object, got {_json_type(manifest)}")
    config_path = root / "config.toml"
    text, data = read_config(config_path) if config_path.exists() else ("", {})
    return {"results": results, "manifest": manifest, "config": text, "config_data": data,
            "path": path, "config_path": config_path}


def read_config(path: Path) -> tuple[str, dict[str, Any]]:
    """A run's config copy as text and as parsed TOML; unreadable, not UTF-8 or not TOML
    is one error naming the file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise RobustkitError(f"config copy {path} cannot be read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise RobustkitError(f"config copy {path} is not UTF-8 text (damaged?): byte "
                             f"{err.start}") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RobustkitError(f"config copy {path} is not valid TOML (damaged?): {err}"
                             ) from None


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# A unit key as Store.key makes it: %-encoded parts joined by "/" (no "..", no "\").
_KEY = re.compile(r"[A-Za-z0-9%=.+@_-]+(/[A-Za-z0-9%=.+@_-]+)*")
_SHA = re.compile(r"[0-9a-f]{64}")

_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "int": ("an integer", _is_int),
    "num": ("a number", _is_num),
    "num?": ("a number or null", lambda v: v is None or _is_num(v)),
    "int?": ("an integer or null", lambda v: v is None or _is_int(v)),
    "bool?": ("true, false or null", lambda v: v is None or isinstance(v, bool)),
    "list": ("a list", lambda v: isinstance(v, list)),
    "dict": ("an object", lambda v: isinstance(v, dict)),
    "key": ("a unit key", lambda v: isinstance(v, str) and bool(_KEY.fullmatch(v))
            and not {".", ".."} & set(v.split("/"))),
    "sha?": ("a SHA-256 (64 hex digits) or null",
             lambda v: v is None or (isinstance(v, str) and bool(_SHA.fullmatch(v)))),
}

#: The fields a report reads from each kind of record, with their JSON types.
#: Records of another kind are ignored; fields not listed are optional.
FIELDS: dict[str, dict[str, str]] = {
    "model": {"model": "str", "arch": "str", "parameters": "int", "clean_accuracy": "num?"},
    "attack": {"model": "str", "attack": "str", "method": "str", "eps": "num",
               "robust_accuracy": "num?", "error_rate": "num?", "mean_confidence": "num?"},
    "examples": {"key": "key", "model": "str", "attack": "str", "seed": "int", "eps": "num",
                 "median_l2": "num?", "median_psnr": "num?", "median_ssim": "num?",
                 "success_rate": "num?"},
    "minimal": {"key": "key", "model": "str", "seed": "int", "norm": "str", "median": "list",
                "success_rate": "num?", "pairs": "int", "target": "int?"},
    "transfer": {"source": "str", "attack": "str", "rows": "list"},
    "explain": {"model": "str", "method": "str", "seed": "int"},
    "sanity": {"model": "str", "seed": "int", "table": "dict"},
    "validity": {"model": "str", "seed": "int", "eps": "num", "passed": "bool?",
                 "checks": "list"},
    "blackbox": {"model": "str", "seed": "int", "n": "int", "seed_n": "int",
                 "seed_labels": "str", "attack": "str", "eps": "list", "oracle_accuracy": "num",
                 "judge_queries": "int", "substitute": "dict", "transfer": "dict",
                 "square": "list"},
}
# Explanation records that were not skipped also carry their arrays and shift.
_EXPLAINED = {"key": "key", "shift": "dict"}
_TRANSFER_ROW = {"eps": "num", "accuracy": "dict", "success": "dict"}
_CHECK = {"name": "str", "passed": "bool?"}
# Black-box records (robustkit.experiment.units.blackbox): the substitute, its rounds, the
# transfers (lists per eps) and Square per budget.
_BLACKBOX = {"substitute": {"arch": "str", "rounds": "int", "lam": "num", "flip_every": "int",
                            "queries": "int", "planned_queries": "int", "size": "int",
                            "history": "list"},
             "round": {"round": "int", "size": "int", "queries": "int", "accuracy": "num?"},
             "transfer": {"eps": "list", "clean_accuracy": "num", "adversarial_accuracy": "list",
                          "transfer_success": "list", "queries": "int"},
             "surrogate": {"arch": "str", "size": "int", "wanted": "int", "train_split": "int",
                           "accuracy": "num?"},
             "square": {"queries": "int", "eps": "num", "norm": "str", "robust_accuracy": "num",
                        "mean_queries": "num"}}
# AutoAttack's attack records also carry its story (robustkit.experiment.units).
_AUTOATTACK = {"version": "str", "norm": "str", "attacks": "list", "split": "dict",
               "cost": "dict", "flags": "list", "pgd_accuracy": "num?"}


def check_results(results: Any, path: Path) -> dict[str, Any]:
    """``results`` (a parsed ``results.json``) if it has the structure robustkit writes.

    Args:
        results: the parsed JSON.
        path: the file, named in errors.

    Returns:
        ``results`` unchanged.

    Raises:
        RobustkitError: naming ``path`` and the first field that is missing or of the wrong
            type (``records[3] (attack): 'eps' is missing``).
    """
    def bad(what: str) -> RobustkitError:
        return RobustkitError(f"results file {path} is damaged or not written by robustkit: "
                              f"{what}")

    if not isinstance(results, dict):
        raise bad(f"expected a JSON object, got {_json_type(results)}")
    records = results.get("records")
    if not isinstance(records, list):
        raise bad("'records' is missing" if records is None
                  else f"'records' must be a list, got {_json_type(records)}")
    for field in ("experiment", "dataset"):
        if field in results and not isinstance(results[field], str):
            raise bad(f"'{field}' must be a string")
    seeds = results.get("seeds", [])
    if not isinstance(seeds, list) or not all(_is_int(s) for s in seeds):
        raise bad("'seeds' must be a list of integers")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise bad(f"records[{i}] must be an object, got {_json_type(record)}")
        kind = record.get("kind")
        if not isinstance(kind, str):
            raise bad(f"records[{i}] has no 'kind'")
        fields = dict(FIELDS.get(kind, {}))
        if "arrays_sha256" in record:
            fields["arrays_sha256"] = "sha?"
        if kind == "explain" and not record.get("skipped"):
            fields.update(_EXPLAINED)
        _check_fields(record, fields, f"records[{i}] ({kind})", bad)
        if kind in ("examples", "minimal", "explain", "sanity") and not seeds:
            raise bad(f"records[{i}] ({kind}) needs the run's 'seeds', which are missing")
        for j, row in enumerate(record["rows"] if kind == "transfer" else []):
            _check_fields(row, _TRANSFER_ROW, f"records[{i}] (transfer) rows[{j}]", bad)
        if kind == "attack" and record.get("method") == "autoattack":
            _check_fields(record, {"n": "int", "clean_accuracy": "num",
                                   "robust_accuracy": "num", "autoattack": "dict"},
                          f"records[{i}] (attack)", bad)
            _check_fields(record["autoattack"], _AUTOATTACK,
                          f"records[{i}] (attack) autoattack", bad)
        for j, check in enumerate(record["checks"] if kind == "validity" else []):
            _check_fields(check, _CHECK, f"records[{i}] (validity) checks[{j}]", bad)
        if kind == "blackbox":
            _check_blackbox(record, f"records[{i}] (blackbox)", bad)
    return results


def _check_blackbox(record: dict[str, Any], where: str,
                    bad: Callable[[str], RobustkitError]) -> None:
    """The nested parts of a black-box record: substitute and its rounds, each transfer
    (one entry per eps), the surrogate (null when not trained), Square's rows."""
    _check_fields(record["substitute"], _BLACKBOX["substitute"], f"{where} substitute", bad)
    for j, row in enumerate(record["substitute"]["history"]):
        _check_fields(row, _BLACKBOX["round"], f"{where} substitute history[{j}]", bad)
    if "substitute" not in record["transfer"]:
        raise bad(f"{where} transfer: 'substitute' is missing")
    for name, result in record["transfer"].items():
        _check_fields(result, _BLACKBOX["transfer"], f"{where} transfer {name}", bad)
        if not len(result["eps"]) == len(result["adversarial_accuracy"]) \
                == len(result["transfer_success"]) == len(record["eps"]):
            raise bad(f"{where} transfer {name}: needs one entry per eps of the record")
    if record.get("surrogate") is not None:
        _check_fields(record["surrogate"], _BLACKBOX["surrogate"], f"{where} surrogate", bad)
    for j, row in enumerate(record["square"]):
        _check_fields(row, _BLACKBOX["square"], f"{where} square[{j}]", bad)


def _check_fields(record: Any, fields: dict[str, str], where: str,
                  bad: Callable[[str], RobustkitError]) -> None:
    if not isinstance(record, dict):
        raise bad(f"{where} must be an object, got {_json_type(record)}")
    for name, kind in fields.items():
        if name not in record:
            raise bad(f"{where}: '{name}' is missing")
        description, ok = _TYPES[kind]
        if not ok(record[name]):
            raise bad(f"{where}: '{name}' must be {description}, got {record[name]!r:.60}")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             type(None): "null", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


@contextmanager
def structure_errors(what: str, extra: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Turn a ``KeyError``/``TypeError``/... met while building a report from stored
    records into one :class:`RobustkitError` naming ``what`` (the files read).

    :func:`check_results` checks the fields every section needs; this catches what lies
    deeper (a transfer row's accuracy table, a sanity table's entries, an array's shape).
    The original error stays attached as the cause. ``extra``: more exception types to
    treat so (a template's undefined field).
    """
    caught: tuple[type[Exception], ...] = (KeyError, TypeError, IndexError, AttributeError,
                                           ValueError, *extra)
    try:
        yield
    except RobustkitError:
        raise
    except caught as err:
        raise RobustkitError(f"{what} do not have the structure robustkit writes "
                             f"(damaged or edited?): {type(err).__name__}: {err}") from err


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
