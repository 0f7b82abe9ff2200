"""Models by spec wherever a model is named: registered names, ``torchvision:NAME``,
``timm:NAME`` (an optional extra), ``package.module:factory``; weights from a plain state
dict (read with weights_only); the two CIFAR-scale architectures; and the command line
(``--model``, ``robustkit train --model package.module:factory``) and config (``arch``,
``weights``) that name them.
"""

from __future__ import annotations

import builtins
import collections
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from robustkit import cli, data, models
from robustkit.errors import RobustkitError
from robustkit.experiment import load_experiment, run
from robustkit.models import foreign
from robustkit.models.checkpoint import torch_load
from test_data import write_cifar10

CIFAR_MEAN = (0.49, 0.48, 0.45)
CIFAR_STD = (0.25, 0.24, 0.26)


def _images(n: int, shape=(3, 32, 32), seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_main(argv, capsys):
    """(exit status, stdout, stderr) of ``robustkit argv`` run in this process."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if "warning:" not in line]
    assert len(lines) == 1, f"expected one error line on stderr, got:\n{err}"
    assert re.match(r"^robustkit( \w+)?: error: ", lines[0])
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


FACTORIES = '''
import torch
from torch import nn

IMPORTED = True

def small(num_classes=10, width=8, in_shape=(1, 28, 28)):
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(),
                         nn.Linear(width, num_classes))

def fixed():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

def anything(**options):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(options.get("classes", 10)))

def not_a_module():
    return 42

def tuple_net(num_classes=10):
    class T(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))

        def forward(self, x):
            return self.fc(x), x
    return T()

NOT_CALLABLE = 3
'''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """A module ``specnets`` on sys.path for this test; its name."""
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "specnets.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "specnets", raising=False)
    yield "specnets"
    sys.modules.pop("specnets", None)


# ----------------------------------------------------------------------------- spec forms


@pytest.mark.parametrize("spec, kind", [
    ("mlp", "registered"), ("torchvision:resnet18", "torchvision"), ("timm:resnet18", "timm"),
    ("pkg.mod:factory", "factory"), ("mod:f", "factory"),
])
def test_specs_are_parsed_by_form(spec, kind):
    assert foreign.parse(spec)[0] == kind


@pytest.mark.parametrize("spec, match", [
    ("", "non-empty string"),
    ("   ", "non-empty string"),
    (3, "non-empty string"),
    (":", "is not a registered name"),
    ("a b:c", "is not a registered name"),
    ("pkg.mod:", "is not a registered name"),
    ("pkg..mod:f", "is not a registered name"),
    ("torchvision:", "expected torchvision:NAME"),
    ("torchvision:res net", "expected torchvision:NAME"),
    ("torchvision:resnet81", "unknown torchvision classification model 'resnet81'; did you "
                             "mean resnet18"),
    ("torchvision:fasterrcnn_resnet50_fpn", "unknown torchvision classification model"),
    ("resnet50", "unknown model 'resnet50'; valid names: alexnet"),
    ("no_such_module_here:f", "cannot import 'no_such_module_here'"),
    ("collections:nope", "module 'collections' has no 'nope'"),
])
def test_bad_specs_are_refused_with_the_reason(spec, match):
    with pytest.raises(RobustkitError, match=re.escape(match)):
        models.build(spec, (3, 32, 32), 10)


def test_unknown_registered_name_lists_names_and_the_other_forms():
    with pytest.raises(RobustkitError) as info:
        models.create("resnet50")
    text = str(info.value)
    for name in models.names():
        assert name in text
    assert "torchvision:NAME" in text and "package.module:factory" in text


def test_timm_missing_is_an_error_naming_the_extra():
    if importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed here")
    for call in (lambda: models.build("timm:resnet18", (3, 32, 32), 10),
                 lambda: models.check_spec("timm:resnet18"),
                 lambda: models.default_training("timm:resnet18")):
        with pytest.raises(RobustkitError, match=re.escape("pip install 'robustkit[timm]'")):
            call()


# ---------------------------------------------------------------------- registered models


@pytest.mark.parametrize("name", models.names())
def test_every_registered_name_builds_by_spec(name):
    options = {"preact_resnet18": {"width": 4}, "wide_resnet": {"depth": 10, "widen_factor": 1},
               "mlp": {"hidden": [8]}}.get(name, {})
    model = models.build(name, (3, 32, 32), 10, options=options)
    assert model(_images(2)).shape == (2, 10)
    assert model.robustkit_spec["name"] == name and model.training


# ------------------------------------------------------------------------------ torchvision


def test_torchvision_model_is_built_without_weights_and_wrapped():
    torch.manual_seed(0)
    model = models.build("torchvision:resnet18", (3, 32, 32), 10, CIFAR_MEAN, CIFAR_STD,
                         options={"num_classes": 10})
    assert isinstance(model, models.Wrapped)
    assert isinstance(model.model, torchvision.models.ResNet)
    assert isinstance(next(iter(model.children())), models.Normalize)
    assert model(_images(2)).shape == (2, 10)
    assert model.robustkit_spec == {
        "name": "torchvision:resnet18", "in_shape": [3, 32, 32], "num_classes": 10,
        "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD), "options": {"num_classes": 10},
        "output": None}


def test_torchvision_num_classes_defaults_to_the_data_s():
    with torch.device("meta"):
        model = models.create("torchvision:resnet18", (3, 32, 32), 7)
    assert model.model.fc.out_features == 7


@pytest.mark.parametrize("options, match", [
    ({"num_classes": 100}, "returns outputs of shape (100,) per image, but the data has 10 "
                           "classes; give num_classes=10"),
    ({"weights": "DEFAULT"}, "option 'weights' is not taken: robustkit never downloads"),
    ({"pretrained": True}, "option 'pretrained' is not taken"),
    ({"num_clases": 10}, "unexpected keyword argument 'num_clases'"),
    ({"num_classes": [1, 2]}, "cannot be built with options"),
])
def test_torchvision_bad_options(options, match):
    with pytest.raises(RobustkitError, match=re.escape(match)):
        models.build("torchvision:resnet18", (3, 32, 32), 10, options=options)


# -------------------------------------------------------------------------------- factories


def test_factory_gets_its_options_and_the_data_s_shape_and_classes(nets):
    model = models.build(f"{nets}:small", (3, 8, 8), 4, options={"width": 5})
    body = model.model
    assert [m.out_features for m in body if isinstance(m, nn.Linear)] == [5, 4]
    assert body[1].in_features == 3 * 8 * 8  # in_shape given: the factory takes it
    assert model.robustkit_spec["options"] == {"width": 5}
    assert model.normalize is None  # no mean and std: the images go in as they are


def test_factory_with_kwargs_takes_any_option(nets):
    model = models.build(f"{nets}:anything", (1, 28, 28), 3, options={"classes": 3})
    assert model(_images(2, (1, 28, 28))).shape == (2, 3)


@pytest.mark.parametrize("spec, options, shape, match", [
    ("small", {"widht": 4}, (1, 28, 28), "bad options ['widht']: it takes no option 'widht'; "
                                         "valid options: num_classes, width, in_shape"),
    ("not_a_module", {}, (1, 28, 28), "the factory returned a int, not an nn.Module"),
    ("NOT_CALLABLE", {}, (1, 28, 28), "'NOT_CALLABLE' is a int, not a function"),
    ("fixed", {}, (3, 32, 32), "cannot run on images of shape (3, 32, 32) (C, H, W)"),
    ("tuple_net", {}, (1, 28, 28), "gave a tuple of 2 items, not a tensor of logits"),
    ("small", {"width": "x"}, (1, 28, 28), "cannot be built with options {'width': 'x'}"),
])
def test_factory_mistakes_are_refused_before_any_data(nets, spec, options, shape, match):
    with pytest.raises(RobustkitError, match=re.escape(match)):
        models.build(f"{nets}:{spec}", shape, 10, options=options)


def test_factory_output_index_picks_the_logits(nets):
    model = models.build(f"{nets}:tuple_net", (1, 28, 28), 10, output=0)
    assert model(_images(2, (1, 28, 28))).shape == (2, 10)
    assert model.robustkit_spec["output"] == 0


def test_registered_models_take_no_output():
    with pytest.raises(RobustkitError, match="a registered model returns its logits"):
        models.build("mlp", (1, 28, 28), 10, output="logits")


def test_default_training_of_a_foreign_spec_is_the_plain_config(nets):
    assert models.default_training("torchvision:resnet18") == models.zoo.FOREIGN_TRAINING
    assert models.default_training(f"{nets}:small").epochs > 0


# ------------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def resnet_state(tmp_path_factory):
    """A state dict of torchvision's resnet18 (10 classes) saved to a file, as a training
    script that normalizes in its data pipeline saves it; and the module."""
    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path_factory.mktemp("weights") / "w.pt"
    torch.save(net.state_dict(), path)
    return path, net


def _normalized(x):
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def test_weights_of_the_bare_model_load_behind_the_normalization(resnet_state):
    path, net = resnet_state
    model = models.build("torchvision:resnet18", (3, 32, 32), 10, CIFAR_MEAN, CIFAR_STD,
                         options={"num_classes": 10}, weights=path)
    assert not model.training
    x = _images(3)
    with torch.no_grad():
        assert torch.equal(model(x), net(_normalized(x)))
    assert model.robustkit_metadata["weights"] == str(path)
    assert re.fullmatch(r"[0-9a-f]{64}", model.robustkit_metadata["weights_sha256"])


def test_weights_of_the_wrapped_model_load_and_give_their_normalization(resnet_state,
                                                                        tmp_path):
    path, net = resnet_state
    first = models.build("torchvision:resnet18", (3, 32, 32), 10, CIFAR_MEAN, CIFAR_STD,
                         weights=path)
    torch.save(first.state_dict(), tmp_path / "wrapped.pt")
    second = models.build("torchvision:resnet18", (3, 32, 32), 10, weights=tmp_path / "wrapped.pt")
    assert second.robustkit_spec["mean"] == list(CIFAR_MEAN)  # as given, not float32 noise
    x = _images(3)
    with torch.no_grad():
        assert torch.equal(second(x), first(x))
    with pytest.raises(RobustkitError, match="were saved with the normalization mean "
                                             r"\[0.49, 0.48, 0.45\]"):
        models.build("torchvision:resnet18", (3, 32, 32), 10, [0.5] * 3, [0.5] * 3,
                     weights=tmp_path / "wrapped.pt")


def test_weights_saved_from_data_parallel_load(resnet_state, tmp_path):
    path, net = resnet_state
    state = torch.load(path, weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    model = models.build("torchvision:resnet18", (3, 32, 32), 10, weights=tmp_path / "ddp.pt")
    x = _images(2)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


@pytest.mark.parametrize("edit, match", [
    (lambda s: {**s, "fc.weight": torch.zeros(5, 512)},
     "fc.weight is (5, 512) in the file but (10, 512) in the model"),
    (lambda s: {k: v for k, v in s.items() if k != "layer1.0.conv1.weight"},
     "layer1.0.conv1.weight is missing from the file"),
    (lambda s: {**s, "head.weight": torch.zeros(2)}, "the file holds head.weight, which the "
                                                     "model has not"),
    (lambda s: {**s, "fc.bias": torch.full((10,), float("nan"))}, "fc.bias holds NaN or Inf"),
    (lambda s: {**s, "fc.bias": torch.zeros(10, dtype=torch.long)},
     "fc.bias is torch.int64 in the file but torch.float32"),
], ids=["shape", "missing", "extra", "nan", "dtype"])
def test_weights_that_do_not_fit_are_named(resnet_state, tmp_path, edit, match):
    path, _ = resnet_state
    torch.save(edit(torch.load(path, weights_only=True)), tmp_path / "bad.pt")
    with pytest.raises(RobustkitError, match=re.escape(match)):
        models.build("torchvision:resnet18", (3, 32, 32), 10, weights=tmp_path / "bad.pt")


class MarkerPayload:
    """Unpickling this creates ``path`` (the stand-in for ``os.system``)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def test_a_pickle_payload_in_weights_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"fc.weight": torch.zeros(2), "x": MarkerPayload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(RobustkitError, match="could run code when loaded; refused") as info:
        models.build("mlp", (1, 28, 28), 10, weights=tmp_path / "evil.pt")
    assert not marker.exists()
    assert "weights_only" not in str(info.value)  # never the advice to turn it off


@pytest.mark.parametrize("payload, match", [
    (lambda net: net, "could run code"),  # a whole pickled module
    (lambda net: {"state_dict": net.state_dict(), "epoch": 3},
     "not a plain state dict (names to tensors): it holds ['state_dict', 'epoch']"),
    (lambda net: [1, 2], "holds a list, not a state dict"),
    (lambda net: {}, "it is empty"),
], ids=["pickled-model", "training-state", "list", "empty"])
def test_files_other_than_a_state_dict_are_refused(tmp_path, payload, match):
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    torch.save(payload(net), tmp_path / "x.pt")
    with pytest.raises(RobustkitError, match=re.escape(match)):
        models.read_weights(tmp_path / "x.pt")


def test_a_checkpoint_given_as_weights_is_refused(tmp_path):
    models.save(models.create("logistic"), tmp_path / "ck.pt")
    with pytest.raises(RobustkitError, match="is a robustkit checkpoint, not a state dict"):
        models.build("logistic", (1, 28, 28), 10, weights=tmp_path / "ck.pt")


@pytest.mark.parametrize("where, match", [("missing", "does not exist"),
                                          ("folder", "is a folder")])
def test_missing_weights_file(tmp_path, where, match):
    path = tmp_path / "nope.pt"
    if where == "folder":
        path.mkdir()
    with pytest.raises(RobustkitError, match=match):
        models.build("logistic", (1, 28, 28), 10, weights=path)


def test_registered_model_weights_need_their_normalization(tmp_path):
    torch.manual_seed(0)
    m = models.create("mlp", (1, 28, 28), 10, mean=[0.13], std=[0.31], hidden=[8]).eval()
    torch.save(m.state_dict(), tmp_path / "full.pt")
    loaded = models.build("mlp", (1, 28, 28), 10, options={"hidden": [8]},
                          weights=tmp_path / "full.pt")
    x = _images(2, (1, 28, 28))
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
    assert loaded.robustkit_spec["mean"] == [0.13]
    body = {k: v for k, v in m.state_dict().items() if not k.startswith("normalize.")}
    torch.save(body, tmp_path / "body.pt")  # saved without the Normalize
    with pytest.raises(RobustkitError, match="hold no normalization .* give the mean and std"):
        models.build("mlp", (1, 28, 28), 10, options={"hidden": [8]},
                     weights=tmp_path / "body.pt")
    again = models.build("mlp", (1, 28, 28), 10, [0.13], [0.31], {"hidden": [8]},
                         weights=tmp_path / "body.pt")
    with torch.no_grad():
        assert torch.equal(again(x), m(x))


def test_torch_load_is_weights_only(tmp_path):
    # The one reader of untrusted files: a payload raises, whatever torch's default is.
    marker = tmp_path / "pwned"
    torch.save(MarkerPayload(marker), tmp_path / "evil.pt")
    with pytest.raises(RobustkitError):
        torch_load(tmp_path / "evil.pt", "weights")
    assert not marker.exists()


# ---------------------------------------------------------------- CIFAR-scale architectures


@pytest.mark.parametrize("name, options, params", [
    ("preact_resnet18", {}, 11_172_170),  # He et al. 2016 in Wong et al. 2020's layout
    ("wide_resnet", {"depth": 28, "widen_factor": 10}, 36_479_194),  # WRN-28-10: 36.5M
    ("wide_resnet", {"depth": 40, "widen_factor": 4}, 8_949_210),  # paper: 8.9M
    ("wide_resnet", {"depth": 16, "widen_factor": 8}, 10_961_370),  # paper: 11.0M
])
def test_parameter_counts_match_the_papers(name, options, params):
    with torch.device("meta"):  # counted, never allocated
        model = models.create(name, (3, 32, 32), 10, **options)
    assert _params(model) == params


@pytest.mark.parametrize("name, options", [
    ("preact_resnet18", {"width": 4}),
    ("wide_resnet", {"depth": 10, "widen_factor": 1}),
    ("wide_resnet", {"depth": 16, "widen_factor": 1, "dropout": 0.3}),
])
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_cifar_architectures_map_images_to_logits(name, options, shape):
    torch.manual_seed(0)
    model = models.create(name, shape, 10, **options).eval()
    x = _images(2, shape)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        assert torch.equal(out, model(x))  # dropout off in eval mode
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len({id(m) for m in relus}) == len(relus)  # each activation its own module
    assert isinstance(next(iter(model.children())), models.Normalize)


def test_preact_block_counts_and_shortcuts():
    model = models.create("preact_resnet18", (3, 32, 32), 10, width=4)
    blocks = [m for m in model.modules() if type(m).__name__ == "PreActBlock"]
    assert len(blocks) == 8
    assert sum(b.shortcut is not None for b in blocks) == 3  # where the stages change
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 17
    assert model.linear.in_features == 32


def test_wide_resnet_blocks_widths_and_dropout():
    model = models.create("wide_resnet", (3, 32, 32), 10, depth=22, widen_factor=2,
                          dropout=0.3)
    blocks = [m for m in model.modules() if type(m).__name__ == "PreActBlock"]
    assert len(blocks) == 9  # (22 - 4) / 6 = 3 per group
    assert [b.conv2.out_channels for b in blocks[::3]] == [32, 64, 128]
    assert all(b.dropout.p == 0.3 for b in blocks)


@pytest.mark.parametrize("name, options, match", [
    ("wide_resnet", {"depth": 27}, "depth must be 6n + 4"),
    ("wide_resnet", {"depth": 4}, "depth must be 6n + 4"),
    ("wide_resnet", {"widen_factor": 0}, "widen_factor must be a positive integer"),
    ("wide_resnet", {"widen_factor": 2.5}, "widen_factor must be a positive integer"),
    ("wide_resnet", {"dropout": 1.0}, "dropout must be in [0, 1)"),
    ("preact_resnet18", {"width": 0}, "width must be a positive integer"),
    ("preact_resnet18", {"blocks": [1, 1]}, "it takes no option 'blocks'"),
])
def test_cifar_architecture_bad_options(name, options, match):
    with pytest.raises(RobustkitError, match=re.escape(match)):
        models.create(name, (3, 32, 32), 10, **options)


@pytest.mark.parametrize("name", ["preact_resnet18", "wide_resnet"])
def test_cifar_architectures_default_training(name):
    cfg = models.default_training(name)
    assert (cfg.optimizer, cfg.epochs, cfg.lr, cfg.batch_size, cfg.weight_decay,
            cfg.augment) == ("sgd", 30, 0.1, 128, 5e-4, "shift")


def test_cifar_architectures_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = models.create("wide_resnet", (3, 32, 32), 10, depth=10, widen_factor=1).eval()
    models.save(model, tmp_path / "w.pt")
    loaded = models.load(tmp_path / "w.pt")
    x = _images(2)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# ------------------------------------------------------------------------------ command line


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    """A tiny CIFAR-10 folder in the real format (3 test images) under ``tmp/cifar``."""
    root = tmp_path / "cifar"
    write_cifar10(root, monkeypatch)
    return root


def test_readme_example_attacks_a_torchvision_model_from_a_state_dict(cifar, resnet_state,
                                                                      tmp_path, capsys):
    path, _ = resnet_state
    out = tmp_path / "pgd.json"
    code, stdout, err = run_main(
        ["attack", "--model", "torchvision:resnet18", "--model-options", "num_classes=10",
         "--weights", path, "--mean", "0.49,0.48,0.45", "--std", "0.25,0.24,0.26",
         "--dataset", "cifar10", "--root", cifar, "--n", 3, "--steps", 1, "--eps", 0.01,
         "--device", "cpu", "--quiet", "--out", out], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["model"] == {"spec": "torchvision:resnet18", "options": {"num_classes": 10},
                               "weights": str(path), "mean": list(CIFAR_MEAN),
                               "std": list(CIFAR_STD), "output": None}
    assert result["checkpoint"] is None and result["dataset"] == "cifar10" and result["n"] == 3
    assert 0 <= result["robust_accuracy"] <= result["clean_accuracy"] <= 1


@pytest.fixture
def logistic_weights(tmp_path):
    torch.manual_seed(0)
    m = models.create("logistic", (1, 28, 28), 10, mean=[0.13], std=[0.31])
    path = tmp_path / "logistic_w.pt"
    torch.save(m.state_dict(), path)
    return path


@pytest.mark.parametrize("command", [
    ["curve", "--eps", "0.1", "--steps", "1"],
    ["minimal", "--steps", "10", "--norms", "l2"],
    ["validity", "--steps", "1"],
    ["explain", "--methods", "saliency", "--steps", "2"],
    ["sanity", "--methods", "saliency"],
])
def test_every_model_command_takes_a_model_by_spec(command, logistic_weights, tmp_path, capsys):
    folder = command[0] in ("explain", "sanity")
    out = tmp_path / ("out" if folder else "out.json")
    code, _, err = run_main([*command, "--model", "logistic", "--weights", logistic_weights,
                             "--dataset", "mnist-5k", "--n", 10, "--device", "cpu",
                             *(["--quiet"] if command[0] != "explain" and not folder else []),
                             "--out", out], capsys)
    assert code == 0, err
    record = json.loads((out / f"{command[0]}.json").read_text() if folder else out.read_text())
    assert record["model"]["spec"] == "logistic" and record["checkpoint"] is None


@pytest.mark.parametrize("extra, fragments", [
    (["--checkpoint", "m.pt", "--model", "mlp"], ["not allowed with argument"]),
    ([], ["one of the arguments --checkpoint --model is required"]),
    (["--model", "mlp"], ["--model needs --dataset"]),
    (["--checkpoint", "m.pt", "--weights", "w.pt"], ["--weights only applies with --model"]),
    (["--checkpoint", "m.pt", "--mean", "0.5", "--std", "0.5"],
     ["--mean only applies with --model"]),
    (["--model", "mlp", "--dataset", "mnist-5k", "--mean", "0.5"], ["--mean needs --std"]),
    (["--model", "mlp", "--dataset", "mnist-5k", "--mean", "0.5,x", "--std", "1"],
     ["expected comma-separated numbers"]),
    (["--model", "mlp", "--dataset", "mnist-5k", "--model-options", "hidden"],
     ["expected KEY=VALUE"]),
    (["--model", "mlp", "--dataset", "mnist-5k", "--model-options", "a=1,a=2"],
     ["gives a twice"]),
    (["--model", "mlp", "--dataset", "mnist-5k", "--model-options", "hiden=[8]"],
     ["it takes no option 'hiden'"]),
    (["--model", "vgg", "--dataset", "mnist-5k"], ["unknown model 'vgg'", "torchvision:NAME"]),
    (["--model", "torchvision:resnet81", "--dataset", "cifar10"], ["did you mean resnet18"]),
    (["--model", "timm:resnet18", "--dataset", "cifar10"], ["robustkit[timm]"]),
    (["--model", "mlp", "--dataset", "mnist-5k", "--weights", "nope.pt"],
     ["--weights: file nope.pt does not exist"]),
    (["--model", "mlp", "--dataset", "mnist-5k", "--trust-factory", "a:b"],
     ["--trust-factory applies to --checkpoint"]),
], ids=["both", "neither", "no-dataset", "weights-with-checkpoint", "mean-with-checkpoint",
        "mean-without-std", "bad-mean", "bad-options", "option-twice", "unknown-option",
        "unknown-model", "unknown-torchvision", "timm-missing", "missing-weights",
        "trust-with-model"])
def test_model_flag_mistakes_are_one_line(extra, fragments, tmp_path, capsys, monkeypatch):
    if "timm:resnet18" in extra and importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed here")
    monkeypatch.chdir(tmp_path)
    models.save(models.create("logistic"), tmp_path / "m.pt")
    code, _, err = run_main(["attack", *extra, "--n", 5, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, *fragments)


def test_weights_with_a_pickle_payload_are_one_line_at_the_command_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"x": MarkerPayload(marker)}, tmp_path / "evil.pt")
    code, _, err = run_main(["attack", "--model", "logistic", "--weights", tmp_path / "evil.pt",
                             "--dataset", "mnist-5k", "--n", 5, "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "could run code when loaded; refused")
    assert not marker.exists()


def test_train_a_factory_model_then_attack_its_checkpoint(nets, tmp_path, capsys):
    out = tmp_path / "f.pt"
    code, stdout, err = run_main(
        ["train", "--model", f"{nets}:small", "--model-options", "width=12", "--epochs", 1,
         "--train-size", 100, "--device", "cpu", "--quiet", "--out", out], capsys)
    assert code == 0, err
    assert "training specnets:small" in stdout and out.exists()
    payload = models.read(out)
    assert (payload["name"], payload["options"]) == (f"{nets}:small", {"width": 12})
    assert payload["mean"] == list(data.spec("mnist-5k").mean)  # the dataset's
    # Loading it calls code the file names: refused unless trusted by name.
    code, _, err = run_main(["attack", "--checkpoint", out, "--n", 5, "--steps", 1,
                             "--device", "cpu", "--quiet"], capsys)
    assert_one_line_error(code, err, f"--trust-factory {nets}:small")
    code, stdout, err = run_main(["attack", "--checkpoint", out, "--trust-factory",
                                  f"{nets}:small", "--n", 5, "--steps", 1, "--device", "cpu",
                                  "--quiet"], capsys)
    assert code == 0, err
    assert "robust accuracy" in stdout


def test_a_factory_checkpoint_is_refused_before_its_module_is_imported(nets, tmp_path):
    model = models.create(f"{nets}:small", (1, 28, 28), 10, width=4)
    models.save(model, tmp_path / "f.pt")
    sys.modules.pop(nets, None)
    with pytest.raises(RobustkitError, match="refused unless you trust it"):
        models.load(tmp_path / "f.pt")
    assert nets not in sys.modules  # not even imported


@pytest.mark.parametrize("extra, fragments", [
    (["--model", "vgg"], ["unknown model 'vgg'"]),
    (["--model", "specnets:fixed", "--dataset", "cifar10"], ["cannot run on images of shape "
                                                            "(3, 32, 32)"]),
    (["--model", "specnets:small", "--model-options", "depth=3"], ["it takes no option 'depth'"]),
    (["--model", "torchvision:resnet18", "--model-options", "weights=DEFAULT"],
     ["never downloads"]),
])
def test_train_model_mistakes_are_one_line_before_training(nets, extra, fragments, tmp_path,
                                                           capsys):
    code, _, err = run_main(["train", *extra, "--epochs", 1, "--out", tmp_path / "x.pt"], capsys)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "x.pt").exists()


# ----------------------------------------------------------------------------------- configs


CONFIG = """
name = "byspec"
dataset = "cifar10"
n_test = 3
batch_size = 3

[[models]]
name = "rn18"
arch = "torchvision:resnet18"
options = {{ num_classes = 10 }}
weights = "{weights}"
mean = [0.49, 0.48, 0.45]
std = [0.25, 0.24, 0.26]

[[attacks]]
attack = "pgd"
eps = [0.01]
options = {{ steps = 1 }}
"""


def test_a_torchvision_model_with_weights_runs_in_a_config(cifar, resnet_state, tmp_path,
                                                          monkeypatch):
    path, net = resnet_state
    monkeypatch.setenv("ROBUSTKIT_DATA", str(cifar))
    config = tmp_path / "exp.toml"
    config.write_text(CONFIG.format(weights=path))
    cfg = load_experiment(config)
    assert cfg.models[0].weights == str(path) and cfg.models[0].loaded
    root = run(config, tmp_path / "run", progress=False, render=False)
    records = json.loads((root / "results.json").read_text())["records"]
    kinds = collections.Counter(r["kind"] for r in records)
    assert kinds == {"model": 1, "attack": 1}
    model_record = next(r for r in records if r["kind"] == "model")
    assert model_record["arch"] == "torchvision:resnet18"
    assert model_record["checkpoint"] == str(path)
    assert not (root / "models").exists() or not list((root / "models").iterdir())  # not trained


def _config(tmp_path, entry: str, dataset: str = "cifar10") -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(f'name = "x"\ndataset = "{dataset}"\n\n[[models]]\nname = "m"\n{entry}\n')
    return path


@pytest.mark.parametrize("entry, match", [
    ('arch = "torchvision:resnet81"', "experiment.models[0].arch: unknown torchvision classification model"),
    ('arch = "torchvision:resnet18"\noptions = { weights = "DEFAULT" }',
     "experiment.models[0].options: model 'torchvision:resnet18': option 'weights' is not"),
    ('arch = "torchvision:resnet18"\noptions = { num_classes = 100 }',
     "experiment.models[0]: model 'torchvision:resnet18' returns outputs of shape (100,)"),
    ('arch = "torchvision:resnet18"\nweights = "nope.pt"',
     "experiment.models[0].weights: weights file nope.pt does not exist"),
    ('arch = "torchvision:resnet18"\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]',
     "experiment.models[0].mean: applies only with weights"),
    ('arch = "torchvision:resnet18"\noutput = "logits"',
     "experiment.models[0].output: applies only with weights"),
    ('arch = "torchvision:resnet18"\nweights = "w.pt"\nmean = [0.5, 0.5, 0.5]',
     "experiment.models[0].std: give mean and std together"),
    ('arch = "torchvision:resnet18"\nweights = "w.pt"\ntrain = { epochs = 1 }',
     "experiment.models[0].train: does not apply to a model loaded from weights"),
    ('arch = "torchvision:resnet18"\nweights = "w.pt"\ncheckpoint = "m.pt"',
     "experiment.models[0].weights: give a checkpoint or weights, not both"),
    ('arch = "torchvision:resnet18"\nweights = "w.pt"\nmean = [0.5]\nstd = [0.5]',
     "experiment.models[0].mean: mean and std need 3 values (one per channel), got 1"),
    ('arch = "torchvision:resnet34"\nweights = "w.pt"',
     "experiment.models[0].weights: weights w.pt do not fit the model "
     "'torchvision:resnet34': layer1.2.conv1.weight is missing"),
    ('arch = "timm:resnet18"', "experiment.models[0].arch: timm models need timm"),
    ('arch = "torchvision:resnet18"\nweights = "w.pt"\noutput = true',
     "experiment.models[0].output: expected"),
], ids=["unknown-torchvision", "download-option", "wrong-classes", "missing-weights",
        "mean-without-weights", "output-without-weights", "mean-without-std",
        "weights-and-train", "weights-and-checkpoint", "mean-channels", "weights-misfit",
        "timm-missing", "output-bool"])
def test_config_model_spec_mistakes_name_the_field(entry, match, tmp_path, monkeypatch,
                                                    resnet_state):
    if "timm:" in entry and importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed here")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(resnet_state[0].read_bytes())
    with pytest.raises(RobustkitError, match=re.escape(match)):
        load_experiment(_config(tmp_path, entry))


def test_config_trains_a_factory_model_and_uses_its_checkpoint(nets, tmp_path):
    config = tmp_path / "exp.toml"
    config.write_text(f'''
name = "factory"
dataset = "mnist-5k"
n_test = 20

[[models]]
name = "small"
arch = "{nets}:small"
options = {{ width = 8 }}
train = {{ epochs = 1 }}
train_size = 100

[[attacks]]
attack = "fgsm"
eps = [0.1]
''')
    root = run(config, tmp_path / "run", progress=False, render=False)
    records = json.loads((root / "results.json").read_text())["records"]
    assert [r["kind"] for r in records] == ["model", "attack"]
    assert records[0]["arch"] == f"{nets}:small"
    # the run's checkpoint, as a checkpoint entry: its factory must be trusted by name
    ck = root / "models" / "small-s0.pt"
    with pytest.raises(RobustkitError, match=f'set arch = "{nets}:small" beside it'):
        load_experiment(_config(tmp_path, f'checkpoint = "{ck}"', "mnist-5k"))
    load_experiment(_config(tmp_path, f'checkpoint = "{ck}"\narch = "{nets}:small"', "mnist-5k"))
    with pytest.raises(RobustkitError, match="arch: does not apply to a model read from a "
                                             "checkpoint"):
        load_experiment(_config(tmp_path, f'checkpoint = "{ck}"\narch = "mlp"', "mnist-5k"))
