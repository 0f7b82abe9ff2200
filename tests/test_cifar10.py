"""CIFAR-10 end to end: ``experiments/cifar10.toml`` on small files in the real format.

The real config trains for tens of epochs on 50,000 images. These tests write a few
hundred images as torchvision's python batches (``cifar-10-batches-py/``, Python 2
pickles of planar RGB rows, the writer of ``test_data.py``), derive a small variant of
the config (the same sections, models and architectures; only sizes changed: one epoch,
narrow networks, fewer test images and steps), run it, and check what a run must give:
every unit stored, attack, transfer and explanation records for both models, robust
accuracy never above clean accuracy, and the report written.

``train_and_save`` with ``output``: a factory model whose output is a dict trains, and
its checkpoint remembers where the logits are.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from test_data import CIFAR_NAMES, md5, py2_pickle

from robustkit import data, models
from robustkit.config import TrainConfig, tomllib
from robustkit.errors import RobustkitError
from robustkit.experiment import Store, load_experiment, run
from robustkit.experiment.context import Context
from robustkit.experiment.runner import make_plan
from robustkit.train import train_and_save

CONFIG = Path(__file__).resolve().parent.parent / "experiments" / "cifar10.toml"

# ----------------------------------------------------------------------------- the files


def cifar_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images as CIFAR-10 stores them, uint8 rows (n, 3072) (1024 R, then 1024 G, then
    1024 B, each row by row), and labels (n,), every class about as often.

    Structured so that the classes can be told apart: each class has its own colour, and
    its own bright square whose position says the class, under uniform noise.
    """
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    colours = np.linspace(40, 215, 10)  # one level per class, per channel in turn
    x = rng.integers(0, 64, (n, 3, 32, 32)).astype(np.int64)  # (N, C, H, W) noise
    for i, k in enumerate(labels):
        x[i, k % 3] += int(colours[k])
        r, c = divmod(int(k), 4)
        x[i, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8] += 96
    rows = np.clip(x, 0, 255).astype(np.uint8).reshape(n, 3072)  # planar, as stored
    return rows, labels


def write_cifar_batches(root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int = 80,
                  n_test: int = 100, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/cifar-10-batches-py/``: ``data_batch_1..5`` of ``per_batch`` images,
    ``test_batch`` of ``n_test`` and ``batches.meta``, with torchvision's md5 list pointed
    at these files (its integrity check then passes on them, and only on them).

    Returns {split: (uint8 rows (N, 3072), labels (N,))}.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{b}": cifar_images(per_batch, rng) for b in range(1, 6)}
    batches["test_batch"] = cifar_images(n_test, rng)
    for name, (rows, labels) in batches.items():
        (folder / name).write_bytes(py2_pickle({
            b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": rows,
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
        }))
    (folder / "batches.meta").write_bytes(py2_pickle({
        b"num_cases_per_batch": per_batch, b"label_names": CIFAR_NAMES, b"num_vis": 3072,
    }))
    monkeypatch.setattr(tvd.CIFAR10, "train_list",
                        [[f"data_batch_{b}", md5(folder / f"data_batch_{b}")] for b in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                             "md5": md5(folder / "batches.meta")})
    train = [batches[f"data_batch_{b}"] for b in range(1, 6)]
    return {"train": (np.concatenate([r for r, _ in train]),
                      np.concatenate([y for _, y in train])),
            "test": batches["test_batch"]}


@pytest.fixture
def cifar_root(data_root, monkeypatch):
    """400 training and 100 test images in ``$ROBUSTKIT_DATA`` (the default data root)."""
    written = write_cifar_batches(data_root, monkeypatch)
    return data_root, written


def test_the_written_files_read_back_exactly(cifar_root):
    _, written = cifar_root
    for split, (rows, labels) in written.items():
        x, y = data.load_tensors("cifar10", split)  # from $ROBUSTKIT_DATA
        assert x.shape == (len(labels), 3, 32, 32) and x.dtype == torch.float32
        expected = torch.from_numpy(rows.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
        assert torch.equal(x, expected)
        assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
        assert sorted(np.bincount(labels, minlength=10).tolist())[0] > 0  # every class


# ----------------------------------------------------------------------------- TOML


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(v: Any) -> str:
    """One TOML value: a string, bool, integer, finite float, array or inline table."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        assert math.isfinite(v), v
        return repr(v)  # shortest text that reads back as the same double
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")


def toml_key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else json.dumps(k)


def to_toml(doc: dict[str, Any]) -> str:
    """A config as TOML: top-level values, then ``[table]`` sections and ``[[array]]``
    tables; tables inside those as inline tables (``options = { steps = 2 }``)."""
    def is_table_list(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not is_table_list(v)]
    for k, v in doc.items():
        tables = [v] if isinstance(v, dict) else v if is_table_list(v) else []
        for table in tables:
            lines += ["", f"[{toml_key(k)}]" if isinstance(v, dict) else f"[[{toml_key(k)}]]"]
            lines += [f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in table.items()]
    return "\n".join(lines) + "\n"


def test_the_toml_writer_round_trips_the_real_config():
    doc = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    assert tomllib.loads(to_toml(doc)) == doc


# ----------------------------------------------------------------------------- the config


RADII = [k / 255 for k in (1, 2, 4, 8)]
ARCHS = {"alexnet": "alexnet", "preact_resnet18": "preact_resnet18"}


def test_the_cifar10_config_loads_and_covers_what_it_promises():
    cfg = load_experiment(CONFIG)
    assert cfg.dataset == "cifar10"
    assert {m.name: m.architecture for m in cfg.models} == ARCHS
    for m in cfg.models:  # trained by the run, with the architecture's own settings
        assert not m.loaded and not m.train and not m.options and not m.adversarial
    assert models.default_training("preact_resnet18").epochs >= 10
    assert {a.attack: a.eps for a in cfg.attacks} == {"fgsm": RADII, "pgd": RADII}
    assert cfg.transfer is not None and cfg.explain is not None
    assert set(cfg.transfer.sources) == set(cfg.transfer.targets) == set(ARCHS)
    assert set(cfg.transfer.eps) <= set(RADII)
    assert cfg.explain.methods == ["saliency", "integrated_gradients", "gradcam"]
    assert cfg.model_names(cfg.explain.models) == list(ARCHS)
    for ref in cfg.references:
        assert ref.model in ARCHS and ref.eps in RADII


#: Only sizes change: narrow networks (alexnet's channels and hidden units, the ResNet's
#: width), one epoch, a few test images, a few steps.
SMALL_OPTIONS = {"alexnet": {"channels": [8, 8, 16, 16, 8], "hidden": 32},
                 "preact_resnet18": {"width": 4}}


def small_variant(doc: dict[str, Any]) -> dict[str, Any]:
    """The config with every size made small and nothing else changed."""
    doc = json.loads(json.dumps(doc))  # a deep copy
    doc["n_test"], doc["batch_size"] = 40, 40
    for m in doc["models"]:
        m["options"] = {**m.get("options", {}), **SMALL_OPTIONS[m.get("arch", m["name"])]}
        m["train"] = {**m.get("train", {}), "epochs": 1}
    for a in doc["attacks"]:
        if "steps" in a.get("options", {}):
            a["options"]["steps"] = 2
    for name in ("transfer", "examples", "explain"):
        section = doc[name]
        if "steps" in section.get("options", {}):
            section["options"]["steps"] = 2
        if "n" in section:
            section["n"] = 4
    return doc


@pytest.fixture
def small_run(cifar_root, tmp_path):
    """The small variant of experiments/cifar10.toml, run start to end with its report."""
    doc = small_variant(tomllib.loads(CONFIG.read_text(encoding="utf-8")))
    text = to_toml(doc)
    assert tomllib.loads(text) == doc
    path = tmp_path / "cifar10-small.toml"
    path.write_text(text, encoding="utf-8")
    out = run(path, tmp_path / "run", progress=False)
    return path, out


def test_the_cifar10_experiment_runs_end_to_end_on_cifar_files(small_run):
    path, out = small_run
    cfg = load_experiment(path)
    full = load_experiment(CONFIG)
    # The variant keeps every section, model and radius of the real config.
    assert [(m.name, m.architecture) for m in cfg.models] == \
        [(m.name, m.architecture) for m in full.models]
    assert [(a.attack, a.eps) for a in cfg.attacks] == [(a.attack, a.eps) for a in full.attacks]

    # Every planned unit was computed now and is stored whole.
    store = Store(out)
    plan = make_plan(cfg, Context(cfg, store, out))
    assert all(store.check(u.key) is None for u in plan)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["units_run_now"] == len(plan) and manifest["units_reused"] == 0

    records = json.loads((out / "results.json").read_text())["records"]
    assert len(records) == len(plan)
    by_kind: dict[str, list[dict]] = {}
    for r in records:
        by_kind.setdefault(r["kind"], []).append(r)

    trained = {r["model"]: r for r in by_kind["model"]}
    assert set(trained) == set(ARCHS)
    for name, r in trained.items():
        assert r["arch"] == ARCHS[name] and r["options"] == SMALL_OPTIONS[name]
        assert len(r["history"]) == 1 and r["train_size"] == 400

    attacks = by_kind["attack"]
    assert {(r["model"], r["attack"], r["eps"]) for r in attacks} == \
        {(m, a, e) for m in ARCHS for a in ("fgsm", "pgd") for e in RADII}
    for r in attacks:
        assert r["n"] == 40
        assert 0 <= r["robust_accuracy"] <= r["clean_accuracy"] <= 1

    transfer = {r["source"]: r for r in by_kind["transfer"]}
    assert set(transfer) == set(ARCHS)
    for r in transfer.values():
        assert set(r["clean_accuracy"]) == set(ARCHS)
        assert [row["eps"] for row in r["rows"]] == full.transfer.eps
        for row in r["rows"]:
            assert set(row["accuracy"]) == set(ARCHS)
            assert all(0 <= acc <= 1 for acc in row["accuracy"].values())

    explained = {(r["model"], r["method"]): r for r in by_kind["explain"]}
    assert set(explained) == {(m, k) for m in ARCHS
                              for k in ("saliency", "integrated_gradients", "gradcam")}
    for r in explained.values():
        assert "skipped" not in r, r.get("skipped")  # Grad-CAM too: both are CNNs
        assert r["n"] == 4 and r["eps"] == pytest.approx(8 / 255)
    assert {r["model"] for r in by_kind["sanity"]} == set(ARCHS)
    assert {r["model"] for r in by_kind["examples"]} == set(ARCHS)

    # The report: HTML and Markdown, and the figures they show, all present.
    html = (out / "index.html").read_text(encoding="utf-8")
    readme = (out / "README.md").read_text(encoding="utf-8")
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures and all((out / "figures" / f).stat().st_size > 0 for f in figures)
    for f in figures:
        assert f in html
    assert "preact_resnet18" in html and "alexnet" in readme
    assert "Madry et al. 2018" in html  # the published figures beside ours


# ----------------------------------------------------------------------------- output


FACTORY_MODULE = '''
import torch
from torch import nn


class DictCNN(nn.Module):
    """A small CNN that returns a dict, as HuggingFace-style models do."""

    def __init__(self, num_classes, width):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(width * 16, num_classes)

    def forward(self, x):
        features = self.pool(torch.relu(self.conv(x))).flatten(1)
        return {"features": features, "logits": self.head(features)}


def dict_cnn(num_classes=10, width=4):
    return DictCNN(num_classes, width)
'''


@pytest.fixture
def dict_factory(tmp_path, monkeypatch):
    """A module ``c10nets`` on sys.path for this test; the spec of its dict-output CNN."""
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "c10nets.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "c10nets", raising=False)
    yield "c10nets:dict_cnn"
    sys.modules.pop("c10nets", None)


ONE_EPOCH = TrainConfig(epochs=1, batch_size=50, lr=0.01, optimizer="adam", augment="none")


def test_a_factory_model_returning_a_dict_trains_with_output(cifar_root, dict_factory,
                                                             tmp_path):
    out = tmp_path / "dict.pt"
    model, history = train_and_save(dict_factory, "cifar10", out, config=ONE_EPOCH,
                                    options={"width": 6}, output="logits", device="cpu")
    assert len(history.epochs) == 1 and math.isfinite(history.epochs[0]["loss"])
    assert 0 <= history.final_test_accuracy <= 1
    assert not Path(f"{out}.resume").exists()
    x, _ = data.load_tensors("cifar10", "test")
    with torch.no_grad():
        logits = model(x[:5])
    assert isinstance(logits, torch.Tensor) and logits.shape == (5, 10)
    # The checkpoint holds the factory, its options, the dataset's normalization and the
    # output; a factory is imported only when trusted.
    with pytest.raises(RobustkitError, match="trust"):
        models.load(out)
    loaded = models.load(out, trust=[dict_factory])
    spec = loaded.robustkit_spec
    assert spec["name"] == dict_factory and spec["output"] == "logits"
    assert spec["options"] == {"width": 6}
    assert spec["mean"] == pytest.approx(list(data.spec("cifar10").mean))
    with torch.no_grad():
        assert torch.equal(loaded(x[:5]), logits)


def test_a_dict_output_without_output_is_refused_and_saves_nothing(cifar_root, dict_factory,
                                                                   tmp_path):
    out = tmp_path / "dict.pt"
    with pytest.raises(RobustkitError, match=r"a dict with keys \['features', 'logits'\]"):
        train_and_save(dict_factory, "cifar10", out, config=ONE_EPOCH, device="cpu")
    assert not out.exists() and not Path(f"{out}.resume").exists()


def test_output_on_a_registered_model_is_refused_before_training(cifar_root, tmp_path):
    out = tmp_path / "m.pt"
    with pytest.raises(RobustkitError, match="output applies to"):
        train_and_save("alexnet", "cifar10", out, config=ONE_EPOCH, output="logits",
                       device="cpu")
    assert not out.exists() and not Path(f"{out}.resume").exists()
