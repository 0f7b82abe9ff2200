"""The ``[blackbox]`` section of an experiment: the run computes Papernot et al.'s attack per
oracle and seed with exact query counts, stores records the report checks, renders the
section in HTML and Markdown with a real figure, resumes, and refuses bad fields at load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robustkit import data
from robustkit.errors import RobustkitError
from robustkit.experiment import load_experiment, run
from robustkit.experiment.config import BlackboxSection, blackbox_images
from robustkit.experiment.units import blackbox_run
from robustkit.report import render
from robustkit.report.render import md_cell

EVIL = "<i>net"  # a model name that is HTML (the environments must escape it)
SEED_N, ROUNDS, N_TEST = 10, 2, 40
EPS = [0.1, 0.3]
BUDGETS = [5, 20]

CONFIG = f"""
name = "bb"
n_test = {N_TEST}
seeds = [0, 1]

[[models]]
name = "logistic"
train = {{ epochs = 1 }}

[[models]]
name = "{EVIL}"
arch = "mlp"
options = {{ hidden = [16] }}
train = {{ epochs = 2 }}
train_size = 1000

[blackbox]
oracles = ["{EVIL}"]
seed_n = {SEED_N}
rounds = {ROUNDS}
epochs = 1
arch_options = {{ hidden = [32] }}
eps = {EPS}
square_queries = {BUDGETS}
"""


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exp.toml").write_text(text, encoding="utf-8")
    return folder / "exp.toml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("blackbox")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTKIT_CACHE", str(tmp_path_factory.getbasetemp() / "robustkit-cache-bb"))
        return run(_write(root, CONFIG), root / "run", progress=False)


def _records(run_dir: Path, kind: str = "blackbox") -> list[dict]:
    records = json.loads((run_dir / "results.json").read_text())["records"]
    return [r for r in records if r["kind"] == kind]


# ----------------------------------------------------------------------------- the unit

def test_one_unit_per_oracle_and_seed_with_the_planned_queries(run_dir):
    recs = _records(run_dir)
    assert [(r["model"], r["seed"]) for r in recs] == [(EVIL, 0), (EVIL, 1)]  # oracles only
    for r in recs:
        sub = r["substitute"]
        assert sub["queries"] == sub["planned_queries"] == SEED_N * (2 ** (ROUNDS - 1) - 1)
        assert sub["arch"] == "mlp" and sub["arch_options"] == {"hidden": [32]}
        assert [h["size"] for h in sub["history"]] == [SEED_N * 2 ** i for i in range(ROUNDS)]
        assert [h["queries"] for h in sub["history"]] == [0, SEED_N]
        assert sub["size"] == SEED_N * 2 ** (ROUNDS - 1) and r["seed_labels"] == "attacker"
        assert all(0 <= h["accuracy"] <= 1 for h in sub["history"])
        assert r["eps"] == EPS and set(r["transfer"]) == {"substitute", "surrogate"}
        for t in r["transfer"].values():
            assert t["eps"] == EPS and t["n"] == r["n"]
            assert len(t["adversarial_accuracy"]) == len(t["transfer_success"]) == len(EPS)
            assert t["clean_accuracy"] == pytest.approx(r["oracle_accuracy"])
            assert t["queries"] == r["n"] * len(EPS)  # the clean labels were asked once
        # the judge: clean labels once, each transfer per eps, each Square's results
        assert r["judge_queries"] == r["n"] * (1 + 2 * len(EPS) + len(BUDGETS))
        surrogate = r["surrogate"]
        assert surrogate["size"] == surrogate["wanted"] == sub["size"]
        assert surrogate["train_split"] == 4000 and not surrogate["capped"]
        assert [s["queries"] for s in r["square"]] == BUDGETS
        for s in r["square"]:
            assert s["eps"] == max(EPS) and s["norm"] == "linf"
            assert s["queries_used"] <= r["n"] * s["queries"] and s["mean_queries"] >= 1
            # an image the oracle gets wrong clean stays wrong: Square never helps it
            assert s["robust_accuracy"] <= r["oracle_accuracy"] + 1e-6
    json.dumps(recs)  # plain JSON all through


def test_seeds_come_first_and_are_never_scored(run_dir):
    x, y = data.load_tensors("mnist-5k", "test")
    seeds, scored = blackbox_images(y.numpy(), N_TEST, SEED_N)
    assert seeds.tolist() == list(range(SEED_N)) and scored.min() >= SEED_N
    run_subset = data.stratified_indices(y.numpy(), N_TEST, seed=0)  # Context.test_set's
    assert set(scored) == set(run_subset) - set(range(SEED_N))
    assert all(r["n"] == len(scored) for r in _records(run_dir))


def test_every_query_the_target_answers_is_counted():
    """blackbox_run on a target with a forward hook: the rows it sees are exactly the
    substitute's queries, the judge's and Square's."""
    torch.manual_seed(0)
    target = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    rows = []
    target.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    x, y = data.load_tensors("mnist-5k", "test")
    sec = BlackboxSection(seed_n=8, rounds=3, epochs=1, arch_options={"hidden": [8]},
                          eps=[0.2], square_queries=[4], seed_labels="oracle")
    rec = blackbox_run(target, (x[:8], y[:8]), (x[8:38], y[8:38]), sec, seed=0,
                       dataset="mnist-5k", batch_size=7)
    assert rec["substitute"]["queries"] == 8 * (2 ** 2 - 1) + 8  # the oracle labels the seeds
    assert sum(rows) == (rec["substitute"]["queries"] + rec["judge_queries"]
                         + rec["square"][0]["queries_used"])


def test_a_second_run_reuses_the_stored_units(run_dir):
    before = _records(run_dir)
    run(run_dir / "config.toml", run_dir, progress=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["units_run_now"] == 0
    assert _records(run_dir) == before


# ----------------------------------------------------------------------------- the report

def test_the_report_shows_the_section_in_html_and_markdown(run_dir):
    page = (run_dir / "index.html").read_text()
    markdown = (run_dir / "README.md").read_text()
    assert 'id="blackbox"' in page and 'href="#blackbox"' in page
    assert "## Black box: a substitute from the oracle's labels" in markdown
    assert EVIL not in page and "&lt;i&gt;net" in page  # escaped, never markup
    assert EVIL not in markdown and f"### {md_cell(EVIL)}" in markdown
    queries = SEED_N * (2 ** (ROUNDS - 1) - 1)
    assert f"<b>{queries} label queries</b>" in page and f"**{queries} label queries**" in markdown
    figures = [f for f in (run_dir / "figures").iterdir() if f.name.startswith("blackbox-")]
    assert len(figures) == 1  # one per oracle
    png = figures[0].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert f'src="figures/{figures[0].name}"' in page and f"(figures/{figures[0].name})" in markdown
    recs = _records(run_dir)
    # the table's cells are the mean over the seeds of the records' figures
    success = np.mean([r["transfer"]["surrogate"]["transfer_success"][1] for r in recs])
    accuracy = np.mean([r["transfer"]["substitute"]["adversarial_accuracy"][1] for r in recs])
    assert f"| {EPS[1]} | {100 * accuracy:.1f}" in markdown
    assert f"<td>{EPS[1]}</td><td>{100 * accuracy:.1f}" in page
    assert f"{100 * success:.1f}" in page
    for budget in BUDGETS:
        assert f"<td>{budget}</td><td>{max(EPS)} (linf)</td>" in page
        assert f"| {budget} | {max(EPS)} (linf) |" in markdown
    assert "Means ± standard deviations over 2 seeds" in markdown


def _copy(run_dir: Path, dest: Path, edit) -> Path:
    shutil.copytree(run_dir, dest)
    path = dest / "results.json"
    results = json.loads(path.read_text())
    for r in results["records"]:
        if r["kind"] == "blackbox":
            edit(r)
    path.write_text(json.dumps(results))
    return dest


def test_a_capped_surrogate_is_said(run_dir, tmp_path):
    def capped(r):
        r["surrogate"].update(size=4000, wanted=4800, train_split=4000, capped=True)

    page = render(_copy(run_dir, tmp_path / "capped", capped)).read_text()
    assert "trained on 4,000 training\nimages, all of the training split" in page
    assert "substitute's 4,800 points are more than it holds" in page


def test_a_run_without_surrogate_or_square_renders(run_dir, tmp_path):
    def bare(r):
        r["transfer"].pop("surrogate")
        r["surrogate"], r["square"] = None, []

    page = render(_copy(run_dir, tmp_path / "bare", bare)).read_text()
    assert 'id="blackbox"' in page and "surrogate's examples" not in page
    assert "Square's queries per image" not in page


@pytest.mark.parametrize("edit, phrase", [
    (lambda r: r["substitute"].pop("history"), "(blackbox) substitute: 'history' is missing"),
    (lambda r: r["substitute"]["history"][0].update(queries="x"),
     "(blackbox) substitute history[0]: 'queries' must be an integer"),
    (lambda r: r["transfer"]["surrogate"]["transfer_success"].pop(),
     "(blackbox) transfer surrogate: needs one entry per eps"),
    (lambda r: r["square"][1].pop("robust_accuracy"),
     "(blackbox) square[1]: 'robust_accuracy' is missing"),
    (lambda r: r.pop("judge_queries"), "(blackbox): 'judge_queries' is missing"),
], ids=["history", "round", "per-eps", "square", "judge"])
def test_a_damaged_record_is_one_error_naming_the_field(run_dir, tmp_path, edit, phrase):
    folder = _copy(run_dir, tmp_path / "damaged", edit)
    with pytest.raises(RobustkitError, match="results file .* is damaged") as info:
        render(folder)
    assert phrase in str(info.value)


# ----------------------------------------------------------------------------- the config

def test_the_defaults_are_the_reference_setup(tmp_path):
    text = 'name = "ref"\n\n[[models]]\nname = "mlp"\n\n[blackbox]\n'
    cfg = load_experiment(_write(tmp_path, text))
    sec = cfg.blackbox
    assert (sec.seed_n, sec.rounds, sec.lam, sec.flip_every, sec.epochs) == (150, 6, 0.1, 3, 10)
    assert sec.seed_labels == "attacker" and sec.attack == "fgsm" and sec.eps == [0.1, 0.2, 0.3]
    assert sec.substitute_options == {"hidden": [200, 200], "dropout": 0.0}  # CleverHans'
    assert sec.surrogate and sec.square_queries == [] and sec.models == []
    assert BlackboxSection(arch="logistic").substitute_options == {}


BASE = CONFIG.replace(f'name = "{EVIL}"', 'name = "net"').replace(f'["{EVIL}"]', '["net"]')
SECTION = f"seed_n = {SEED_N}\nrounds = {ROUNDS}"


@pytest.mark.parametrize("old, new, phrase", [
    (SECTION, "seed_n = 0\nrounds = 2", "experiment.blackbox.seed_n: must be positive, got 0"),
    (SECTION, "seed_n = 10\nrounds = 0", "experiment.blackbox.rounds: must be positive"),
    (SECTION, "seed_n = 10\nrounds = 2\nflip_every = 0",
     "experiment.blackbox.flip_every: must be positive"),
    ("epochs = 1\narch", "epochs = 0\narch", "experiment.blackbox.epochs: must be positive"),
    (SECTION, SECTION + "\nlam = 0", "experiment.blackbox.lam: must be a finite radius > 0"),
    (SECTION, SECTION + "\nlam = inf", "experiment.blackbox.lam: must be a finite radius > 0"),
    (SECTION, SECTION + '\nseed_labels = "true"',
     "experiment.blackbox.seed_labels: must be one of attacker, oracle, got 'true'"),
    ('oracles = ["net"]', 'oracles = ["ghost"]',
     "experiment.blackbox.oracles[0]: unknown model 'ghost'"),
    ('oracles = ["net"]', 'oracles = ["net", "net"]',
     "experiment.blackbox.oracles: must not repeat"),
    (SECTION, SECTION + '\narch = "resnet"', "experiment.blackbox.arch: unknown model 'resnet'"),
    ("arch_options = { hidden = [32] }", "arch_options = { hiden = [32] }",
     "experiment.blackbox.arch_options.hiden: model 'mlp' takes no option 'hiden'"),
    (SECTION, SECTION + '\nattack = "deepfool"',
     "experiment.blackbox.eps: attack 'deepfool' measures a distance"),
    (SECTION, SECTION + '\nattack = "autoattack"',
     "experiment.blackbox.attack: autoattack gives robust accuracy, not adversarial images"),
    (SECTION, SECTION + "\noptions = { stepz = 3 }",
     "experiment.blackbox.options.stepz: attack 'fgsm' takes no option 'stepz'"),
    (f"eps = {EPS}", "eps = [0.1, -0.3]",
     "experiment.blackbox.eps[1]: must be a finite radius >= 0, got -0.3"),
    (f"eps = {EPS}", "eps = []", "experiment.blackbox.eps: must hold at least one radius"),
    (f"square_queries = {BUDGETS}", "square_queries = [100, 0]",
     "experiment.blackbox.square_queries[1]: must be a query budget >= 1, got 0"),
    (f"square_queries = {BUDGETS}", "square_queries = [100, 100]",
     "experiment.blackbox.square_queries: must not repeat"),
    (f"square_queries = {BUDGETS}", "square_queries = [1.5]",
     "experiment.blackbox.square_queries[0]: expected int"),
    (SECTION, SECTION.replace("seed_n = 10", "seed_n = 1000"),
     "experiment.blackbox.seed_n: the seeds are the first seed_n images of mnist-5k's test "
     "split, which has 1000"),
    (SECTION, "seed_n = 10\nrounds = 1000000000000",
     "experiment.blackbox.rounds: 1000000000000 rounds from 10 seeds grow"),
    (SECTION, SECTION + "\nbogus = 1", "experiment.blackbox.bogus: unknown key"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
def test_bad_fields_are_refused_at_load_naming_them(tmp_path, old, new, phrase):
    assert old in BASE
    path = _write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(RobustkitError) as info:
        load_experiment(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and phrase in message, message


def test_no_scored_image_left_is_refused_at_load(tmp_path):
    _, y = data.load_tensors("mnist-5k", "test")
    # an n_test whose class-balanced subset lies wholly among the first seed_n images
    n_test = next(n for n in range(1, 50)
                  if len(blackbox_images(y.numpy(), n, 990)[1]) == 0)
    text = BASE.replace(f"n_test = {N_TEST}", f"n_test = {n_test}").replace(
        "seed_n = 10", "seed_n = 990")
    with pytest.raises(RobustkitError, match=r"experiment\.blackbox\.seed_n: the run's n_test "
                                             rf"= {n_test} test images all lie among"):
        load_experiment(_write(tmp_path, text))
