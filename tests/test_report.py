"""Reports: rendered from stored results only, escaped, complete, and checked in a browser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from robustkit.experiment import run
from robustkit.report import render
from robustkit.report.compare import compare

# A model name that is HTML (and passes the config's safe-name check: no "/").
EVIL = "<script>alert(1)"

CONFIG = f"""
name = "report-test"
description = "Made by the tests, <b>not</b> bold."
n_test = 50

[[models]]
name = "logistic"
train = {{ epochs = 1 }}

[[models]]
name = "{EVIL}"
arch = "mlp"
options = {{ hidden = [16] }}
train = {{ epochs = 1 }}
train_size = 500

[[attacks]]
attack = "fgsm"
eps = [0.1, 0.25]

[transfer]
sources = ["logistic", "{EVIL}"]
targets = ["logistic", "{EVIL}"]
eps = [0.1]
options = {{ steps = 2 }}

[examples]
n = 2

[minimal]
n = 10
steps = 10
target = 3

[explain]
methods = ["saliency", "gradient", "gradcam"]
n = 4
options = {{ steps = 2 }}

[validity]
steps = 2

[[references]]
claim = "softmax regression error rate under FGSM at eps 0.25"
value = 0.999
source = "Goodfellow et al. 2015"
model = "logistic"
attack = "fgsm"
eps = 0.25
metric = "error_rate"
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    (root / "exp.toml").write_text(CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTKIT_CACHE", str(tmp_path_factory.getbasetemp() / "robustkit-cache0"))
        return run(root / "exp.toml", root / "run", progress=False)


def test_render_calls_no_model(run_dir, monkeypatch):
    def forbidden(self, *args, **kwargs):
        raise AssertionError(f"the report ran {type(self).__name__}")

    monkeypatch.setattr(torch.nn.Module, "__call__", forbidden)
    (run_dir / "index.html").unlink()
    assert render(run_dir) == run_dir / "index.html"
    assert (run_dir / "index.html").stat().st_size > 0


def test_user_strings_are_escaped(run_dir):
    page = (run_dir / "index.html").read_text()
    assert "<script" not in page  # the page has no script of its own, nor the model's name
    assert "&lt;script&gt;alert(1)" in page
    assert "<b>not</b>" not in page and "&lt;b&gt;not&lt;/b&gt;" in page
    markdown = (run_dir / "README.md").read_text()
    assert EVIL not in markdown and "&lt;script&gt;" in markdown


def test_every_section_has_real_figures(run_dir):
    page = (run_dir / "index.html").read_text()
    for section in ("models", "robustness", "imperceptibility", "transfer", "explanations",
                    "validity", "references"):
        assert f'id="{section}"' in page, section
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) >= 8
    for src in sources:
        png = (run_dir / src).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000, src
    # Grad-CAM needs a convolution: on these models it is skipped, and the report says why.
    assert "gradcam: skipped" in page and "Explanation shift under attack" in page
    assert "Faithfulness" in page and "sanity check" in page
    # The published figure sits beside ours.
    assert "99.9" in page and "Goodfellow et al. 2015" in page


def _explain_records(run_dir):
    import json

    records = json.loads((run_dir / "results.json").read_text())["records"]
    return [r for r in records if r["kind"] == "explain" and not r.get("skipped")]


def test_alignment_figures_and_table_match_the_records(run_dir):
    import html

    from robustkit.report.render import md_cell
    from robustkit.report.results import fmt

    page = (run_dir / "index.html").read_text()
    markdown = (run_dir / "README.md").read_text()
    recs = _explain_records(run_dir)
    assert {r["method"] for r in recs} == {"saliency", "gradient"}  # gradcam was skipped
    for r in recs:
        for entry in ("alignment", "alignment_adv"):
            a = r[entry]
            assert -1 <= a["spearman"] <= 1 and 0 <= a["area_share"] <= 1
            assert len(a["per_example"]["ink_share"]) == a["n"] == r["n"]
        cells = [fmt(r[e][m], percent=False, digits=3) for e, m in (
            ("alignment", "spearman"), ("alignment", "ink_share"), ("alignment", "area_share"),
            ("alignment_adv", "spearman"), ("alignment_adv", "ink_share"))]
        name = html.escape(r["model"], quote=False)
        md_name = md_cell(r["model"])
        row = (f'<tr><td>{name}</td><td class="text">{r["method"]}</td>'
               + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        assert row in page, row
        md_row = f"| {md_name} | {md_cell(r['method'])} | " + " | ".join(cells) + " |"
        assert md_row in markdown, md_row
    # One side-by-side figure per method (images on top, a row per model) and the chart,
    # each a real PNG referenced from both pages.
    figs = re.findall(r'src="(figures/(?:aligned-[^"]+|alignment\.png))"', page)
    assert len(figs) == 3 and sum("aligned-saliency" in f for f in figs) == 1
    for f in figs:
        assert f"]({f})" in markdown
        assert (run_dir / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Perceptual alignment" in page and "Perceptual alignment" in markdown


def test_a_run_recorded_before_alignment_still_renders(run_dir, tmp_path):
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("figures", "index.html",
                                                                "README.md"))
    results = json.loads((old / "results.json").read_text())
    for r in results["records"]:
        r.pop("alignment", None)
        r.pop("alignment_adv", None)
    (old / "results.json").write_text(json.dumps(results))
    render(old)
    page = (old / "index.html").read_text()
    assert 'id="explanations"' in page and "Explanation shift under attack" in page
    assert "Perceptual alignment" not in page and "Perceptual alignment" not in (
        old / "README.md").read_text()
    assert not list((old / "figures").glob("align*"))


def test_examples_that_fool_nothing_are_said_so_not_given_sizes(run_dir, tmp_path):
    import json
    import shutil

    robust = tmp_path / "robust"
    shutil.copytree(run_dir, robust, ignore=shutil.ignore_patterns("figures", "index.html",
                                                                   "README.md"))
    results = json.loads((robust / "results.json").read_text())
    shown = [r for r in results["records"] if r["kind"] == "examples"]
    assert shown
    for r in shown:  # what a robust model's records hold: nothing fooled, so no medians
        r.update(success_rate=0.0, median_l2=None, median_linf=None, median_psnr=None,
                 median_ssim=None)
    (robust / "results.json").write_text(json.dumps(results))
    render(robust)
    page, markdown = (robust / "index.html").read_text(), (robust / "README.md").read_text()
    assert "None of these images was fooled" in " ".join(page.split())  # whitespace folded
    assert "none of the shown images was fooled" in markdown
    assert "median L2 n/a" not in markdown and "Median L2 n/a" not in page


def test_compare_puts_runs_side_by_side(run_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(
        (run_dir / "results.json").read_text().replace('"report-test"', '"second"', 1))
    page = compare([run_dir, other], tmp_path / "cmp").read_text()
    assert "report-test: logistic" in page and "second: logistic" in page
    assert (tmp_path / "cmp" / "README.md").exists()


def _compare_copy(run_dir, dest, edit):
    """``run_dir``'s results.json in ``dest``, its records changed in place by ``edit``."""
    import json

    dest.mkdir()
    results = json.loads((run_dir / "results.json").read_text())
    edit(results)
    (dest / "results.json").write_text(json.dumps(results))
    return results["records"]


def _md_tables_keep_their_columns(markdown):
    """Every row of every Markdown table has its header's number of unescaped pipes."""
    columns = None
    for line in markdown.splitlines():
        pipes = len(re.findall(r"(?<!\\)\|", line))
        if not line.startswith("|"):
            columns = None
        elif columns is None:
            columns = pipes
        else:
            assert pipes == columns, line


def test_compare_shows_validity_explanations_sanity_and_transfer(run_dir, tmp_path):
    import html
    import json

    from robustkit.report.render import md_cell
    from robustkit.report.results import fmt

    pipe = "lo|gistic"  # a model name that would break a Markdown table

    def edit(results):
        results["experiment"] = "second"
        for r in results["records"]:
            for key in ("model", "source"):
                if r.get(key) == "logistic":
                    r[key] = pipe
            r.pop("alignment", None)  # as recorded before alignment existed
            if r["kind"] == "explain" and r["model"] == EVIL and r["method"] == "saliency":
                r["faithfulness"]["deletion"]["auc"] = 0.123456
            if r["kind"] == "validity" and r["model"] == pipe:
                r["checks"][0]["passed"] = False
            if r["kind"] == "sanity" and r["model"] == EVIL:
                r["table"]["saliency"][-1]["spearman_abs"] = 0.4567
            if r["kind"] == "transfer":
                for row in r["rows"]:
                    for table in ("accuracy", "success"):
                        row[table] = {pipe if t == "logistic" else t: v
                                      for t, v in row[table].items()}
                    if r["source"] == pipe:
                        row["accuracy"][EVIL] = 0.4321

    ours = json.loads((run_dir / "results.json").read_text())["records"]
    theirs = _compare_copy(run_dir, tmp_path / "second", edit)
    page = compare([run_dir, tmp_path / "second"], tmp_path / "cmp").read_text()
    markdown = (tmp_path / "cmp" / "README.md").read_text()
    evil = html.escape(EVIL, quote=False)
    assert "<script" not in page and "&lt;script&gt;alert(1)" in page
    assert EVIL not in markdown and "&lt;script&gt;" in markdown
    assert f"| {md_cell(pipe)} |" in markdown
    _md_tables_keep_their_columns(markdown)
    for section in ("validity", "explanations", "sanity", "transfer"):
        assert f'id="{section}"' in page, section

    def rows(html_cells, md_cells):
        assert "<tr>" + "".join(html_cells) + "</tr>" in page, html_cells
        md = "| " + " | ".join(md_cells) + " |"
        assert md in markdown, md

    # Validity: the failed check is counted and named, in the run where it failed only.
    for label, records, model in (("report-test", ours, "logistic"), ("second", theirs, pipe)):
        checks = [c for r in records if r["kind"] == "validity" and r["model"] == model
                  for c in r["checks"]]
        passed = sum(c["passed"] is True for c in checks)
        skipped = sum(c["passed"] is None for c in checks)
        failed = [c["name"] for c in checks if c["passed"] is False]
        assert label == "report-test" or checks[0]["name"] in failed
        rows([f"<td>{label}</td>", f'<td class="text">{model}</td>', "<td>1</td>",
              f'<td class="pass">{passed}</td>',
              f'<td class="fail">{len(failed)}</td>' if failed else "<td>0</td>",
              f"<td>{skipped}</td>", f'<td class="text">{", ".join(failed)}</td>'],
             [label, md_cell(model), "1", str(passed), f"**{len(failed)}**" if failed else "0",
              str(skipped), md_cell(", ".join(failed))])
    # Explanations: faithfulness beside its random baseline; alignment where recorded.
    for label, records in (("report-test", ours), ("second", theirs)):
        r = next(r for r in records if r["kind"] == "explain" and r["model"] == EVIL
                 and r["method"] == "saliency")
        f = r["faithfulness"]
        cells = [fmt(v, percent=False, digits=3) for v in (
            f["deletion"]["auc"], f["deletion"]["random_auc"], f["insertion"]["auc"],
            f["insertion"]["random_auc"])]
        cells += ([fmt(r["alignment"][m], percent=False, digits=3)
                   for m in ("spearman", "ink_share", "area_share")]
                  if label == "report-test" else ["", "", ""])
        assert label == "report-test" or cells[0] == "0.123"
        rows([f"<td>{label}</td>", f'<td class="text">{evil}</td>',
              '<td class="text">saliency</td>'] + [f"<td>{c}</td>" for c in cells],
             [label, md_cell(EVIL), "saliency"] + cells)
    # Sanity: the last row of the cascade, every layer randomized.
    for label, records in (("report-test", ours), ("second", theirs)):
        last = next(r for r in records if r["kind"] == "sanity" and r["model"] == EVIL
                    )["table"]["saliency"][-1]
        value = fmt(last["spearman_abs"], percent=False, digits=3)
        assert label == "report-test" or value == "0.457"
        rows([f"<td>{label}</td>", f'<td class="text">{evil}</td>',
              '<td class="text">saliency</td>', f'<td class="text">{last["layer"]}</td>',
              f"<td>{value}</td>"],
             [label, md_cell(EVIL), "saliency", md_cell(last["layer"]), value])
    # Transfer: each run's own pairs only; the other run's model names stay empty.
    source = next(r for r in theirs if r["kind"] == "transfer" and r["source"] == pipe)
    own = fmt(next(row for row in source["rows"] if row["eps"] == 0.1)["accuracy"][pipe])
    assert ('<th>eps 0.1: run</th><th class="text">source \\ target</th>'
            f'<th class="text">attack</th><th>logistic</th><th>{evil}</th><th>{pipe}</th></tr>'
            ) in page
    rows(["<td>second</td>", f'<td class="text">{pipe}</td>',
          f'<td class="text">{source["attack"]}</td>', "<td></td>", "<td>43.2</td>",
          f'<td class="wb">{own}</td>'],
         ["second", md_cell(pipe), md_cell(source["attack"]), "", "43.2", f"**{own}**"])


def test_compare_of_runs_recorded_before_alignment(run_dir, tmp_path):
    def old(results):
        for r in results["records"]:
            r.pop("alignment", None)
            r.pop("alignment_adv", None)

    def bare(results):  # models and attacks only
        old(results)
        results["experiment"] = "bare"
        results["records"] = [r for r in results["records"] if r["kind"] in ("model", "attack")]

    _compare_copy(run_dir, tmp_path / "old", old)
    _compare_copy(run_dir, tmp_path / "bare", bare)
    page = compare([tmp_path / "old", tmp_path / "bare"], tmp_path / "cmp").read_text()
    markdown = (tmp_path / "cmp" / "README.md").read_text()
    assert 'id="explanations"' in page and "deletion AUC" in markdown
    assert "Spearman(|map|" not in page and "Spearman(\\|map\\|" not in markdown
    assert 'id="validity"' in page and 'id="transfer"' in page
    assert "| bare |" in markdown and "| report-test |" in markdown
    _md_tables_keep_their_columns(markdown)
    page = compare([tmp_path / "bare", tmp_path / "bare"], tmp_path / "cmp2").read_text()
    for section in ("validity", "explanations", "sanity", "transfer"):
        assert f'id="{section}"' not in page, section


def test_report_opens_in_a_browser_without_errors(run_dir, chromium):
    from robustkit.report.browser import check_page

    shot = run_dir / "screenshot.png"
    check = check_page(run_dir / "index.html", screenshot=shot)
    assert check.console_errors == []
    assert check.images and all(i["natural_width"] > 0 for i in check.images)
    assert check.broken_images == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_folder_without_results(tmp_path):
    from robustkit.errors import RobustkitError

    with pytest.raises(RobustkitError, match="no results.json"):
        render(Path(tmp_path))


def test_cli_report_renders_again_and_checks_in_a_browser(run_dir, chromium, capsys):
    from tests.test_cli import run_main

    code, out, err = run_main(["report", str(run_dir), "--check"], capsys)
    assert code == 0, out + err
    assert "all loaded, no console errors" in out
    assert (run_dir / "screenshot.png").read_bytes()[:4] == b"\x89PNG"
