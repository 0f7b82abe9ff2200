"""The reports' surface: every bad input to ``render`` and ``compare`` is answered exactly.

Run folders are built by hand (records written with the Store, no training), so each case
costs a render, not a run. Three tables:

- DAMAGED: a file the report reads is missing, truncated, of the wrong structure, or the
  output cannot be written -> one RobustkitError naming the file and the problem;
- INJECTIONS: a user string (model, attack, method, experiment, description, reference)
  that would be Markdown, HTML, a bidirectional override or mathtext -> shown escaped in
  README.md and index.html, the raw markup absent, and every figure drawn;
- FIGURES: each figure function given names with ``$`` draws them literally.
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import numpy as np
import pytest

import robustkit.core.io as core_io
from robustkit.core import write_json
from robustkit.errors import RobustkitError
from robustkit.store import Store, key
from robustkit.report import render
from robustkit.report.compare import compare

PLAIN = "logistic"

CONFIG = '''name = "fake"
description = {description}

[[references]]
claim = {claim}
value = 0.5
source = {source}
model = {model}
attack = {attack}
eps = 0.1
metric = "error_rate"
'''


def _toml(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def make_run(root: Path, *, model: str = "mlp", experiment: str = "fake",
             attack: str = "fgsm", method: str = "saliency", description: str = "A fake run.",
             claim: str = "error rate at eps 0.1", source: str = "Someone et al. 2020") -> Path:
    """A run folder with a record of every kind for ``model`` (and the model, attack,
    transfer and validity records of a second one, ``PLAIN``), arrays stored with the Store
    as ``robustkit run`` stores them; no model is trained."""
    rng = np.random.default_rng(0)
    store = Store(root)
    names = [PLAIN, model]
    x = rng.random((2, 1, 6, 6)).astype(np.float32)  # (N, C, H, W)
    records = []

    def unit(parts, record, arrays=None):
        k = key(*parts)
        store.put(k, record, arrays)
        records.append(store.get(k))  # as the runner collects them: with the checksum

    for name in names:
        history = [{"epoch": 1, "train_accuracy": 0.8, "loss": 0.5}]
        unit(("train", name, "s0"), {
            "kind": "model", "model": name, "seed": 0, "arch": "mlp", "parameters": 1234,
            "train_size": 500, "clean_accuracy": 0.9, "train_seconds": 1.0,
            "history": history, "architecture": "MLP()", "training": {"epochs": 1}})
        for eps in (0.1, 0.2):
            unit(("attack", attack, name, "s0", f"eps{eps}"), {
                "kind": "attack", "model": name, "seed": 0, "attack": attack,
                "method": "fgsm", "eps": eps, "options": {"note": attack},
                "robust_accuracy": 0.5 - eps, "error_rate": 0.5 + eps,
                "mean_confidence": 0.7, "median_l2": 1.0, "median_linf": eps,
                "median_psnr": 30.0, "median_ssim": 0.9})
        unit(("transfer", name, "s0"), {
            "kind": "transfer", "source": name, "seed": 0, "attack": attack,
            "rows": [{"eps": 0.1, "accuracy": {t: 0.4 for t in names},
                      "success": {t: 0.3 for t in names}}]})
        unit(("validity", name, "s0"), {
            "kind": "validity", "model": name, "seed": 0, "eps": 0.1, "passed": False,
            "checks": [{"name": "beats_random_noise", "passed": False,
                        "detail": f"{name} fails"}]})
        if name == PLAIN:
            continue  # the kinds below draw a figure per model: one model is enough
        unit(("examples", name, "s0"), {
            "kind": "examples", "model": name, "seed": 0, "attack": attack, "eps": 0.1,
            "median_l2": 1.0, "median_psnr": 30.0, "median_ssim": 0.9, "success_rate": 0.5},
            {"x": x, "x_adv": np.clip(x + 0.1, 0, 1), "y": np.array([0, 1]),
             "clean_pred": np.array([0, 1]), "clean_conf": np.array([0.9, 0.8]),
             "adv_pred": np.array([1, 1]), "adv_conf": np.array([0.6, 0.7])})
        unit(("minimal", name, "s0", "l2"), {
            "kind": "minimal", "model": name, "seed": 0, "norm": "l2", "target": 1,
            "median": [[None, 0.5], [0.7, None]], "success_rate": 1.0, "pairs": 2},
            {"x": x, "x_adv": x, "y": np.array([0, 1]), "norm": np.array([0.5, 0.0]),
             "adv_pred": np.array([1, 1]), "adv_conf": np.array([0.6, 0.9])})
        per = {"spearman": [0.1, 0.3], "ink_share": [0.2, 0.4], "area_share": [0.2, 0.2]}
        align = {"spearman": 0.2, "ink_share": 0.3, "area_share": 0.2, "n": 2,
                 "per_example": per}
        unit(("explain", name, "s0", method), {
            "kind": "explain", "model": name, "seed": 0, "method": method, "n": 2,
            "shift": {"all": {"n": 2, "spearman": 0.5}},
            "faithfulness": {"deletion": {"auc": 0.2, "random_auc": 0.3}},
            "alignment": align, "alignment_adv": align},
            {"x": x, "x_adv": x, "y": np.array([0, 1]), "clean": x, "adv": x})
        unit(("sanity", name, "s0"), {
            "kind": "sanity", "model": name, "seed": 0,
            "table": {method: [{"layer": "fc", "spearman_abs": 0.1, "spearman": 0.05,
                                "ssim": 0.2}]}})
    write_json(root / "results.json", {"experiment": experiment, "dataset": "mnist-5k",
                                       "seeds": [0], "records": records})
    write_json(root / "manifest.json", {"versions": {"robustkit": "0.1", "torch": "2"},
                                        "git_commit": "abc", "device": "cpu"})
    (root / "config.toml").write_text(CONFIG.format(
        description=_toml(description), claim=_toml(claim), source=_toml(source),
        model=_toml(PLAIN), attack=_toml(attack)))
    return root


# -- damaged inputs -------------------------------------------------------------------------

def _edit_results(edit):
    def apply(root):
        path = root / "results.json"
        results = json.loads(path.read_text())
        edit(results)
        path.write_text(json.dumps(results))
    return apply


def _first(kind):
    def find(results):
        return next(r for r in results["records"] if r["kind"] == kind)
    return find


def _truncate(name, keep=0.5):
    def apply(root):
        path = root / name
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * keep)])
    return apply


def _write(name, data: bytes):
    def apply(root):
        (root / name).write_bytes(data)
    return apply


def _unit_npz(kind, edit):
    """Change the ``.npz`` of the first unit of ``kind``."""
    def apply(root):
        results = json.loads((root / "results.json").read_text())
        k = _first(kind)(results)["key"]
        edit(root / "units" / f"{k}.npz")
    return apply


def _without_checksum(kind, edit):
    """As a run recorded before checksums: no ``arrays_sha256``; then ``edit`` the .npz."""
    def apply(root):
        _edit_results(lambda r: _first(kind)(r).pop("arrays_sha256"))(root)
        _unit_npz(kind, edit)(root)
    return apply


def _halve(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_array(name):
    def edit(path):
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files if k != name}
        np.savez(path, **arrays)
    return edit


def _set(kind, field, value):
    return _edit_results(lambda r: _first(kind)(r).__setitem__(field, value))


def _delete(kind, field):
    return _edit_results(lambda r: _first(kind)(r).pop(field))


def _no_space_on_open(monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(core_io, "open", full, raising=False)


def _read_only(monkeypatch):
    """What a chmod 0o500 folder gives a user who is not root (the tests run as root)."""
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(core_io, "open", denied, raising=False)


def _no_space_on_replace(monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(core_io.os, "replace", full)


# (case, how the run folder is damaged, a monkeypatch or None, phrases of the message);
# "{root}" in a phrase is the run folder.
DAMAGED = [
    ("results.json truncated", _truncate("results.json"), None,
     ["{root}/results.json", "is not valid JSON"]),
    ("results.json binary junk", _write("results.json", b"\x89PNG\xff\xfe\x00junk"), None,
     ["{root}/results.json", "cannot be read"]),
    ("results.json is a list", _write("results.json", b"[1, 2]"), None,
     ["{root}/results.json", "expected a JSON object, got a list"]),
    ("results.json missing", lambda root: (root / "results.json").unlink(), None,
     ["{root} holds no results.json"]),
    ("results.json without records", _edit_results(lambda r: r.pop("records")), None,
     ["{root}/results.json", "'records' is missing"]),
    ("records is a dict", _edit_results(lambda r: r.__setitem__("records", {})), None,
     ["{root}/results.json", "'records' must be a list, got an object"]),
    ("a record is a string", _edit_results(lambda r: r["records"].append("x")), None,
     ["{root}/results.json", "must be an object, got a string"]),
    ("attack record without eps", _delete("attack", "eps"), None,
     ["{root}/results.json", "(attack): 'eps' is missing"]),
    ("model record without clean_accuracy", _delete("model", "clean_accuracy"), None,
     ["{root}/results.json", "(model): 'clean_accuracy' is missing"]),
    ("eps is a string", _set("attack", "eps", "0.1"), None,
     ["{root}/results.json", "'eps' must be a number"]),
    ("model name is a list", _set("model", "model", ["a"]), None,
     ["{root}/results.json", "'model' must be a string"]),
    ("unit key escapes the run folder", _set("examples", "key", "../../etc/x"), None,
     ["{root}/results.json", "'key' must be a unit key"]),
    ("transfer row without accuracy",
     _edit_results(lambda r: _first("transfer")(r)["rows"][0].pop("accuracy")), None,
     ["{root}/results.json", "rows[0]: 'accuracy' is missing"]),
    ("validity check without name",
     _edit_results(lambda r: _first("validity")(r)["checks"][0].pop("name")), None,
     ["{root}/results.json", "checks[0]: 'name' is missing"]),
    ("sanity table entry without layer",
     _edit_results(lambda r: _first("sanity")(r)["table"]["saliency"][0].pop("layer")), None,
     ["{root}/results.json", "structure robustkit writes", "KeyError"]),
    ("seeds missing", _edit_results(lambda r: r.pop("seeds")), None,
     ["{root}/results.json", "'seeds', which are missing"]),
    ("config.toml binary junk", _write("config.toml", b"\xff\xfe\x00\x9c junk"), None,
     ["config copy {root}/config.toml", "is not UTF-8"]),
    ("config.toml truncated", _write("config.toml", b'name = "fake"\ndescription = "A'), None,
     ["config copy {root}/config.toml", "is not valid TOML"]),
    ("config.toml description is a number", _write("config.toml", b"description = 3\n"), None,
     ["config copy {root}/config.toml", "description must be a string"]),
    ("config.toml reference with an unknown field",
     _write("config.toml", b'[[references]]\nclaim = "c"\nvalue = 1.0\nsource = "s"\n'
                           b'colour = "red"\n'), None,
     ["config copy {root}/config.toml", "references[0]", "colour"]),
    ("manifest.json truncated", _truncate("manifest.json"), None,
     ["manifest {root}/manifest.json", "is not valid JSON"]),
    ("manifest.json is a list", _write("manifest.json", b"[]"), None,
     ["manifest {root}/manifest.json", "expected a JSON object"]),
    ("examples .npz truncated", _unit_npz("examples", _halve), None,
     ["{root}/units/examples/", ".npz", "is damaged: it does not match the checksum"]),
    ("explain .npz truncated", _unit_npz("explain", _halve), None,
     ["{root}/units/explain/", ".npz", "is damaged: it does not match the checksum"]),
    ("explain .npz is junk", _unit_npz("explain", lambda p: p.write_bytes(b"junk" * 10)), None,
     ["{root}/units/explain/", ".npz", "is damaged"]),
    ("examples .npz missing", _unit_npz("examples", lambda p: p.unlink()), None,
     ["{root}/units/examples/", ".npz", "is missing"]),
    ("minimal .npz truncated", _unit_npz("minimal", _halve), None,
     ["{root}/units/minimal/", ".npz", "is damaged"]),
    ("old run's .npz (no checksum) truncated", _without_checksum("examples", _halve), None,
     ["{root}/units/examples/", ".npz", "is damaged: it cannot be opened"]),
    ("old run's .npz (no checksum) lacks an array",
     _without_checksum("explain", _drop_array("clean")), None,
     ["{root}/units/explain/", ".npz", "lacks clean"]),
    ("checksum that is no checksum", _set("explain", "arrays_sha256", "abc"), None,
     ["{root}/results.json", "'arrays_sha256' must be a SHA-256"]),
    ("disk full on open", lambda root: None, _no_space_on_open,
     ["cannot write {root}/", "no space left on the device"]),
    ("disk full on rename", lambda root: None, _no_space_on_replace,
     ["cannot write {root}/", "no space left on the device"]),
    ("read-only output folder", lambda root: None, _read_only,
     ["cannot write {root}/", "permission denied"]),
    ("figures is a file", _write("figures", b"mine"), None,
     ["report folder {root}/figures is a file, not a folder"]),
]


@pytest.mark.parametrize("damage, patch, phrases", [pytest.param(*c[1:], id=c[0])
                                                     for c in DAMAGED])
def test_render_answers_a_damaged_run_with_one_error_naming_the_file(
        tmp_path, monkeypatch, damage, patch, phrases):
    root = make_run(tmp_path / "run")
    damage(root)
    if patch:
        patch(monkeypatch)
    with pytest.raises(RobustkitError) as info:
        render(root)
    message = str(info.value)
    assert "\n" not in message.strip(), message
    for phrase in phrases:
        assert phrase.format(root=root) in message, message
    assert not (root / "index.html").exists() and not (root / "README.md").exists()


def test_the_fake_run_renders_every_section(tmp_path):
    """The fixture is complete: every check above fails for its own damage only."""
    root = make_run(tmp_path / "run")
    page = render(root).read_text()
    for section in ("models", "robustness", "imperceptibility", "transfer", "explanations",
                    "validity", "references"):
        assert f'id="{section}"' in page, section
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (root / src).read_bytes()[:4] == b"\x89PNG", src


COMPARE_DAMAGED = [
    ("second results.json truncated", _truncate("results.json"),
     ["{root}/results.json", "is not valid JSON"]),
    ("second results.json is a list", _write("results.json", b"[]"),
     ["{root}/results.json", "expected a JSON object, got a list"]),
    ("second run's records lack keys", _delete("attack", "robust_accuracy"),
     ["{root}/results.json", "'robust_accuracy' is missing"]),
    ("second run's transfer row holds a list",
     _edit_results(lambda r: _first("transfer")(r)["rows"][0].__setitem__("accuracy", [1])),
     ["{root}/results.json", "'accuracy' must be an object"]),
    ("second run's config copy is junk", _write("config.toml", b"\xff\xfe"),
     ["config copy {root}/config.toml", "is not UTF-8"]),
]


@pytest.mark.parametrize("damage, phrases", [pytest.param(*c[1:], id=c[0])
                                             for c in COMPARE_DAMAGED])
def test_compare_answers_a_damaged_run_with_one_error_naming_the_file(tmp_path, damage,
                                                                       phrases):
    first = make_run(tmp_path / "a")
    second = make_run(tmp_path / "b", experiment="other")
    damage(second)
    with pytest.raises(RobustkitError) as info:
        compare([first, second], tmp_path / "cmp")
    for phrase in phrases:
        assert phrase.format(root=second) in str(info.value), str(info.value)
    assert not (tmp_path / "cmp" / "index.html").exists()


def test_compare_refuses_an_output_that_is_a_file_before_reading(tmp_path):
    out = tmp_path / "cmp"
    out.write_text("mine")
    with pytest.raises(RobustkitError, match="is a file, not a folder"):
        compare([make_run(tmp_path / "a"), make_run(tmp_path / "b")], out)
    assert out.read_text() == "mine"


def test_compare_on_a_full_disk_names_the_path(tmp_path, monkeypatch):
    runs = [make_run(tmp_path / "a"), make_run(tmp_path / "b", experiment="other")]
    _no_space_on_open(monkeypatch)
    with pytest.raises(RobustkitError, match="no space left on the device") as info:
        compare(runs, tmp_path / "cmp")
    assert f"cannot write {tmp_path / 'cmp'}/" in str(info.value)


# -- injections ---------------------------------------------------------------------------

BIDI = "safe\u202egpj.exe"
MATH = r"$\notacommand{1}$ and a$b"

# (case, field of make_run, value, its escaped form in README.md, its escaped form in
#  index.html, raw text that must not appear in README.md, nor in index.html). Every case
#  also checks that neither output links to the attacker, and that Markdown tables keep
#  their columns.
INJECTIONS = [
    ("markdown link in a model name", "model", "[click](http://evil)",
     r"\[click\](http://evil)", "[click](http://evil)", ["[click](http"], []),
    ("markdown image in a model name", "model", "![x](http://evil/x.png)",
     r"!\[x\](http://evil/x.png)", "![x](http://evil/x.png)", ["![x]("],
     ['src="http']),
    ("heading in a model name", "model", "# Title", r"\# Title", "# Title",
     ["| # Title"], ["<h1># Title"]),
    ("html in a model name", "model", "<script>alert(1)</script>",
     "&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;script&gt;alert(1)&lt;/script&gt;",
     ["<script"], ["<script"]),
    ("pipe in a model name", "model", "a|b", r"a\|b", "a|b", ["| a|b |"], []),
    ("backticks and emphasis in a model name", "model", "`rm` *bold* _it_",
     r"\`rm\` \*bold\* \_it\_", "`rm` *bold* _it_", ["`rm`", "*bold*", " _it_"],
     ["<code>", "<em>", "<strong>"]),
    ("newline and heading in a model name", "model", "a\n# b", r"a \# b", "a\n# b",
     ["\n# b"], []),
    ("bidi override in a model name", "model", BIDI, r"safe\\u202egpj.exe",
     r"safe\u202egpj.exe", ["\u202e"], ["\u202e"]),
    ("bidi isolate and mark in a model name", "model", "x\u2067y\u200fz\u061c",
     r"x\\u2067y\\u200fz\\u061c", r"x\u2067y\u200fz\u061c",
     ["\u2067", "\u200f", "\u061c"], ["\u2067", "\u200f", "\u061c"]),
    ("mathtext in a model name", "model", MATH, r"\$\\notacommand{1}\$ and a\$b",
     r"$\notacommand{1}$ and a$b", [r"| $\notacommand"], []),
    ("markdown in the description", "description",
     "Intro\n# Pwned\n[x](http://evil) ![i](http://evil/i.png) <img src=x onerror=alert(1)>",
     r"Intro \# Pwned \[x\](http://evil) !\[i\](http://evil/i.png) &lt;img src=x",
     "Intro\n# Pwned\n[x](http://evil) ![i](http://evil/i.png) &lt;img src=x onerror",
     ["\n# Pwned", "[x](http", "<img"], ["<img src=x", 'src="http']),
    ("list and quote markers in the description", "description", "- a\n> b\n1. c",
     r"\- a &gt; b 1. c", "- a\n&gt; b\n1. c", ["\n- a", "\n> b", "\n1. c"],
     ["<blockquote>"]),
    ("bidi override in the description", "description", "total \u202e0001",
     r"total \\u202e0001", r"total \u202e0001", ["\u202e"], ["\u202e"]),
    ("markdown in the experiment name", "experiment", "# [x](http://evil)",
     r"# \# \[x\](http://evil)", "# [x](http://evil)", ["[x](http"], []),
    ("html and a link in an attack label", "attack", "<b>[a](http://evil)</b>",
     r"&lt;b&gt;\[a\](http://evil)&lt;/b&gt;", "&lt;b&gt;[a](http://evil)&lt;/b&gt;",
     ["<b>", "[a](http"], ["<b>[a]"]),
    ("markdown in a method name", "method", "*m*|[x](http://evil)",
     r"\*m\*\|\[x\](http://evil)", "*m*|[x](http://evil)", ["*m*", "[x](http"], []),
    ("links in a reference's claim", "claim", "[c](http://evil) | `x`",
     r"\[c\](http://evil) \| \`x\`", "[c](http://evil) | `x`", ["[c](http", "`x`"], []),
    ("html in a reference's source", "source", "<iframe src=//evil>",
     "&lt;iframe src=//evil&gt;", "&lt;iframe src=//evil&gt;", ["<iframe"], ["<iframe"]),
]


def _md_tables_keep_their_columns(markdown):
    columns = None
    for line in markdown.splitlines():
        pipes = len(re.findall(r"(?<!\\)\|", line))
        if not line.startswith("|"):
            columns = None
        elif columns is None:
            columns = pipes
        else:
            assert pipes == columns, line


def _check_outputs(folder, md_escaped, html_escaped, md_raw, html_raw):
    markdown = (folder / "README.md").read_text()
    page = (folder / "index.html").read_text()
    assert md_escaped in markdown
    assert html_escaped in page
    for bad in md_raw:
        assert bad not in markdown, bad
    for bad in html_raw:
        assert bad not in page, bad
    assert 'href="http' not in page and "<script" not in page and "<iframe" not in page
    assert not re.search(r"(?<!\\)\]\(http", markdown)  # no link or image to the attacker
    _md_tables_keep_their_columns(markdown)
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (folder / src).read_bytes()[:4] == b"\x89PNG", src
        assert f"]({src})" in markdown  # a figure's path is never escaped away


@pytest.mark.parametrize("field, value, md_escaped, html_escaped, md_raw, html_raw",
                         [pytest.param(*c[1:], id=c[0]) for c in INJECTIONS])
def test_user_strings_are_shown_not_obeyed(tmp_path, field, value, md_escaped,
                                           html_escaped, md_raw, html_raw):
    root = make_run(tmp_path / "run", **{field: value})
    render(root)
    _check_outputs(root, md_escaped, html_escaped, md_raw, html_raw)
    if field in ("model", "attack", "method"):  # the comparison shows these in its tables
        other = make_run(tmp_path / "other", experiment="other")
        compare([root, other], tmp_path / "cmp")
        _check_outputs(tmp_path / "cmp", md_escaped, html_escaped, md_raw, html_raw)


# -- figures ------------------------------------------------------------------------------

def _figures(name):
    """Each figure function, given ``name`` wherever it takes a user string."""
    from robustkit.explain import plotting
    from robustkit.report import figures

    x = np.random.default_rng(0).random((2, 1, 5, 5))
    ex = {"spearman": [0.1, 0.3], "ink_share": [0.2, 0.4], "area_share": [0.15, 0.15]}
    step = {"layer": name, "spearman_abs": 0.1, "spearman": 0.1, "ssim": 0.1}
    import torch

    xt = torch.as_tensor(x, dtype=torch.float32)
    curve = {"curve": [1.0, 0.5], "auc": 0.7}
    faith = {"fractions": [0.0, 1.0], "score": name, "deletion": curve,
             "random": {"deletion": curve}}
    return {
        "line_chart": lambda: figures.line_chart({name: [(0, 0.5, 0.1), (1, 0.2, 0)]},
                                                 xlabel=name, ylabel=name, title=name),
        "transfer_heatmaps": lambda: figures.transfer_heatmaps(
            {0.1: {name: {name: 0.5, "b": 0.2}, "b": {name: 0.1, "b": 0.9}}}, title=name),
        "perturbation_grid": lambda: figures.perturbation_grid(x, x, [name] * 2, [name] * 2,
                                                               title=name),
        "class_matrix": lambda: figures.class_matrix([[None, 1.0], [2.0, None]], title=name,
                                                     label=name),
        "attribution_grid": lambda: figures.attribution_grid(x, x, {name: (x, x)},
                                                             title=name),
        "model_maps": lambda: figures.model_maps(x, {name: x}, labels=[name] * 2,
                                                 notes={name: name}, title=name),
        "alignment_chart": lambda: figures.alignment_chart({name: {name: ex}}, title=name),
        "plot_sanity": lambda: plotting.plot_sanity({name: [step]}),
        "plot": lambda: plotting.plot(xt, {name: xt}, labels=[name] * 2),
        "plot_faithfulness": lambda: plotting.plot_faithfulness({name: faith}),
    }


@pytest.mark.parametrize("function", list(_figures("x")))
@pytest.mark.parametrize("name", [MATH, r"$\frac{1}{0}$", "a$b", "cost \\$5 $"])
def test_figure_text_is_drawn_literally(function, name):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    fig = _figures(name)[function]()
    FigureCanvasAgg(fig).draw()  # an invalid mathtext command would raise here
    shown = []
    for text in fig.findobj(Text):
        s, math = text._preprocess_math(text.get_text())
        assert math is False, text.get_text()
        shown.append(s)
    assert any(name in s for s in shown), shown  # the name, exactly as written


def test_figures_written_through_the_atomic_write(tmp_path, monkeypatch):
    from robustkit.report import figures

    _no_space_on_open(monkeypatch)
    target = tmp_path / "f" / "chart.png"
    with pytest.raises(RobustkitError, match="no space left") as info:
        figures.line_chart({"a": [(0, 0.5, 0.0)]}, target, xlabel="x", ylabel="y")
    assert str(target) in str(info.value)
    assert not target.exists() and not list((tmp_path / "f").glob(".*tmp"))


def test_figure_suffix_that_is_no_image_format(tmp_path):
    from robustkit.explain.plotting import plot_sanity

    with pytest.raises(RobustkitError, match=r"suffix \.txt is not an image format"):
        plot_sanity({"m": [{"layer": "fc", "spearman_abs": 0, "spearman": 0, "ssim": 0}]},
                    path=tmp_path / "s.txt")


def test_a_refused_render_changes_no_file(tmp_path):
    """A refused render leaves the folder's files as they were."""
    root = make_run(tmp_path / "run")
    _truncate("results.json")(root)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(RobustkitError):
        render(root)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
