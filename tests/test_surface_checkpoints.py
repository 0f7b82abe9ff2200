"""The checkpoint surface: a table of bad checkpoint files and bad training inputs, each
answered exactly (the error class and a phrase of its message, or a warning).

Checkpoints: every refusal is one line that names the file and never suggests
``weights_only=False``; a payload that would run code is never run; options that would
allocate terabytes are refused before anything is allocated. Training: bad data is
refused before the first step, leaving the model untouched; a run whose loss becomes NaN
stops with the epoch and batch named, and nothing is saved as if it were fine.
"""

from __future__ import annotations

import builtins
import pickle
import re
import resource
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from robustkit import models, snapshot
from robustkit.config import TrainConfig
from robustkit.errors import RobustkitError
from robustkit.models import checkpoint
from robustkit.train import TrainingDiverged, fit, train_and_save

MARKER = "pwned"


class MarkerPayload:
    """Unpickling this creates a file (the stand-in for ``os.system`` in a real attack)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return models.create("mlp", (1, 28, 28), 10, mean=(0.1307,), std=(0.3081,),
                         hidden=(16,), activation="tanh", dropout=0.0)


def _good(tmp: Path, model: nn.Module | None = None, **metadata: Any) -> Path:
    return models.save(model if model is not None else _model(), tmp / "good.pt",
                       dataset="mnist-5k", test_accuracy=0.9, **metadata)


def _payload(tmp: Path) -> dict[str, Any]:
    return models.read(_good(tmp))


def _write(tmp: Path, payload: Any, *, resign: bool = False) -> Path:
    """Save ``payload`` as torch would; ``resign`` recomputes its checksums first (a
    checksum is no signature: whoever edits a file can do that too)."""
    if resign:
        payload["checksum"] = checkpoint.checksums(payload)
    torch.save(payload, tmp / "bad.pt")
    return tmp / "bad.pt"


def _edited(edit: Callable[[dict[str, Any]], None], resign: bool = True
            ) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        payload = _payload(tmp)
        edit(payload)
        return _write(tmp, payload, resign=resign)
    return make


def _bytes(blob: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / "bad.pt").write_bytes(blob)
        return tmp / "bad.pt"
    return make


def _truncated(tmp: Path) -> Path:
    blob = _good(tmp).read_bytes()
    return _bytes(blob[: len(blob) // 2])(tmp)


def _code_in_metadata(tmp: Path) -> Path:
    payload = _payload(tmp)
    payload["metadata"]["note"] = MarkerPayload(tmp / MARKER)
    return _write(tmp, payload)


def _raw_pickle(protocol: int) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / "bad.pt").write_bytes(pickle.dumps({"x": MarkerPayload(tmp / MARKER)},
                                                  protocol=protocol))
        return tmp / "bad.pt"
    return make


def _module_pickled(tmp: Path) -> Path:
    torch.save(_model(), tmp / "bad.pt")
    return tmp / "bad.pt"


def _folder(tmp: Path) -> Path:
    (tmp / "bad.pt").mkdir()
    return tmp / "bad.pt"


def _set_weight(key: str, value: float) -> Callable[[Path], Path]:
    """A checkpoint saved the proper way (valid checksums) from a model whose ``key``
    holds ``value``: what a diverged or broken model would look like."""
    def make(tmp: Path) -> Path:
        model = _model()
        with torch.no_grad():
            model.state_dict()[key].view(-1)[0] = value
        return _good(tmp, model)
    return make


def _old_version(tmp: Path) -> Path:
    payload = _payload(tmp)
    del payload["checksum"]
    payload["format_version"] = 1
    return _write(tmp, payload)


def _flip_one_weight(payload: dict[str, Any]) -> None:
    payload["state_dict"]["fc1.weight"][3, 7] += 0.5


def _sparse_weight(payload: dict[str, Any]) -> None:
    payload["state_dict"]["out.bias"] = payload["state_dict"]["out.bias"].to_sparse()


# (id, make the file, what it must raise (a phrase) or warn; None: nothing)
CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing file", lambda tmp: tmp / "nope.pt", "does not exist"),
    ("a folder", _folder, "is a folder, not a checkpoint file"),
    ("empty file", _bytes(b""), "corrupt or truncated (EOFError: the file ends too early)"),
    ("truncated file", _truncated, "cannot be read: it is corrupt or truncated ("),
    ("random bytes", _bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8)
                            .tobytes()), "corrupt or not a checkpoint"),
    ("a text file", _bytes(b"hello world\n[train]\nepochs = 3\n"), "corrupt or truncated"),
    ("code payload in metadata", _code_in_metadata,
     "holds io.open, which could run code when loaded; refused"),
    ("raw pickle with code (protocol 2)", _raw_pickle(2),
     "holds io.open, which could run code when loaded; refused"),
    ("raw pickle with code (protocol 4)", _raw_pickle(4), "corrupt or not a checkpoint"),
    ("a pickled module", _module_pickled, "which could run code when loaded; refused"),
    ("a bare state dict", lambda tmp: _write(tmp, _model().state_dict()),
     "is not a robustkit checkpoint (no 'robustkit-checkpoint' header)"),
    ("wrong format header", _edited(lambda p: p.update(format="other-checkpoint")),
     "is not a robustkit checkpoint"),
    ("future format version", _edited(lambda p: p.update(format_version=99)),
     "has format version 99, this robustkit reads 1 and 2"),
    ("a weight edited in the file", _edited(_flip_one_weight, resign=False),
     "its weights do not match their checksum (damaged or edited)"),
    ("num_classes edited", _edited(lambda p: p.update(num_classes=5), resign=False),
     "model description (name, shapes, normalization, options) does not match its checksum"),
    ("test accuracy edited", _edited(lambda p: p["metadata"].update(test_accuracy=1.0),
                                     resign=False),
     "its metadata do not match their checksum (damaged or edited)"),
    ("checksum removed", _edited(lambda p: p.pop("checksum"), resign=False),
     "has no checksum (damaged or edited)"),
    ("state dict removed", _edited(lambda p: p.pop("state_dict"), resign=False),
     "is damaged: its 'state_dict' is missing or not a table of dense tensors"),
    ("in_shape not a shape", _edited(lambda p: p.update(in_shape="1x28x28"), resign=False),
     "its 'in_shape' is missing or not a list of three integers"),
    ("a sparse weight", _edited(_sparse_weight, resign=False),
     "is missing or not a table of dense tensors"),
    ("huge hidden size, not re-signed",
     _edited(lambda p: p["options"].update(hidden=[2**40]), resign=False),
     "model description (name, shapes, normalization, options) does not match"),
    ("huge hidden size, re-signed", _edited(lambda p: p["options"].update(hidden=[2**40])),
     "weights do not fit the model 'mlp' its options describe: fc1.weight is (16, 784) in "
     "the file but (1099511627776, 784) in the model"),
    ("huge in_shape", _edited(lambda p: p.update(in_shape=[1, 2**20, 2**20])),
     "in_shape (1, 1048576, 1048576) has 1,099,511,627,776 elements per image; at most"),
    ("huge num_classes", _edited(lambda p: p.update(num_classes=2**40)),
     "num_classes must be at least 2 and at most 2,147,483,648"),
    ("unknown option", _edited(lambda p: p["options"].update(depth=3)),
     "model 'mlp': bad options ['depth']: it takes no option 'depth'; valid options: "
     "hidden, activation, dropout"),
    ("option not a plain value", _edited(lambda p: p["options"].update(hidden=torch.ones(3))),
     "model 'mlp': option 'hidden' must be a number, string, bool or a list of them, got "
     "Tensor"),
    ("option of the wrong type", _edited(lambda p: p["options"].update(hidden=16)),
     "model 'mlp': bad options"),
    ("wrong num_classes for the weights", _edited(lambda p: p.update(num_classes=5)),
     "out.weight is (10, 16) in the file but (5, 16) in the model"),
    ("a weight missing", _edited(lambda p: p["state_dict"].pop("out.bias")),
     "out.bias is missing from the file"),
    ("an extra tensor", _edited(lambda p: p["state_dict"].update(extra=torch.zeros(2))),
     "the file holds extra, which the model has not"),
    ("integer weights", _edited(lambda p: p["state_dict"].update(
        {"out.bias": torch.zeros(10, dtype=torch.long)})),
     "out.bias is torch.int64 in the file but torch.float32 in the model"),
    ("negative std in the description", _edited(lambda p: p.update(std=[-1.0])),
     "std > 0: [0.1307], [-1.0]"),
    ("NaN weights", _set_weight("fc1.weight", float("nan")),
     "its weights fc1.weight hold NaN or Inf; refused"),
    ("Inf bias", _set_weight("out.bias", float("inf")), "its weights out.bias hold NaN or Inf"),
    ("std buffer 0", _set_weight("normalize.std", 0.0),
     "normalize.std (the normalization's std) is [0.0]; it must be > 0"),
    ("std buffer negative", _set_weight("normalize.std", -0.5),
     "normalize.std (the normalization's std) is [-0.5]; it must be > 0"),
    ("std buffer NaN", _set_weight("normalize.std", float("nan")),
     "its weights normalize.std hold NaN or Inf"),
]

#: Refused by ``read`` already (``info`` shows nothing of them); the others at ``load``.
AT_LOAD = {"huge hidden size, re-signed", "huge in_shape", "huge num_classes",
           "unknown option", "option not a plain value", "option of the wrong type",
           "wrong num_classes for the weights", "a weight missing", "an extra tensor",
           "integer weights", "negative std in the description", "NaN weights", "Inf bias",
           "std buffer 0", "std buffer negative", "std buffer NaN"}


@pytest.mark.parametrize("make,phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_checkpoint_is_refused_in_one_line(make, phrase, tmp_path, request):
    path = make(tmp_path)
    readers = [models.load] if request.node.callspec.id in AT_LOAD else [models.read,
                                                                           models.load]
    for reader in readers:
        with pytest.raises(RobustkitError) as info:
            reader(path)
        message = str(info.value)
        assert phrase in message, message
        assert str(path) in message and "\n" not in message
        assert "weights_only" not in message and "trust" not in message
    assert not (tmp_path / MARKER).exists()  # no payload ever ran
    if request.node.callspec.id in AT_LOAD:
        models.read(path)  # what info shows is still readable


def test_huge_options_are_refused_without_allocating(tmp_path):
    make = dict((c[0], c[1]) for c in CASES)["huge hidden size, re-signed"]
    path = make(tmp_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(RobustkitError, match="fc1.weight is"):
        models.load(path)
    # fc1 alone would need 3.4 PB; the meta build allocates nothing.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000


def test_the_payload_is_live_so_its_refusal_means_something(tmp_path):
    path = _code_in_metadata(tmp_path)
    unsafe = torch.load(path, weights_only=False)
    unsafe["metadata"]["note"].close()  # the payload returned an open file
    assert (tmp_path / MARKER).exists()


def test_an_old_checkpoint_without_checksum_loads_with_a_warning(tmp_path, tiny_batch):
    path = _old_version(tmp_path)
    for reader in (models.read, models.load):
        with pytest.warns(UserWarning, match=r"written before checkpoints held checksums "
                                             r"\(format version 1\): its weights cannot be "
                                             r"verified"):
            reader(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = models.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(tiny_batch), _model().eval()(tiny_batch))


def test_an_old_checkpoint_is_still_checked_at_load(tmp_path):
    payload = _payload(tmp_path)
    del payload["checksum"]
    payload["format_version"] = 1
    payload["state_dict"]["normalize.std"].zero_()
    path = _write(tmp_path, payload)
    with pytest.warns(UserWarning, match="cannot be verified"):
        with pytest.raises(RobustkitError, match="normalize.std .* must be > 0"):
            models.load(path)


def test_a_valid_checkpoint_reads_and_loads_silently(tmp_path):
    path = _good(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        payload = models.read(path)
        model = models.load(path)
    assert payload["metadata"]["test_accuracy"] == 0.9
    assert model.robustkit_metadata["dataset"] == "mnist-5k"


def test_no_message_in_robustkit_suggests_turning_weights_only_off():
    root = Path(checkpoint.__file__).resolve().parents[1]
    offenders = [str(p) for p in root.rglob("*.py")
                 if re.search(r"weights_only\s*=\s*False", p.read_text(encoding="utf-8"))]
    assert offenders == []


@pytest.mark.parametrize("blob", [b"not a state", b"", pickle.dumps([1], protocol=4)],
                         ids=["text", "empty", "raw-pickle"])
def test_an_unreadable_resume_file_is_one_line_without_torch_advice(blob, tmp_path):
    path = tmp_path / "m.resume"
    path.write_bytes(blob)
    with pytest.raises(RobustkitError, match="cannot be read") as info:
        snapshot.load(path, {})
    message = str(info.value)
    assert "delete it to train from the start" in message
    assert "weights_only" not in message and "\n" not in message


# --- training inputs: refused before the first step, the model untouched -----------------

def _split(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10


def _with(x_edit=None, y_edit=None) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    def make():
        x, y = _split()
        return (x_edit(x) if x_edit else x), (y_edit(y) if y_edit else y)
    return make


def _set(t: torch.Tensor, index: tuple[int, ...], value: float) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _model()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(x)}


def _nan_model() -> nn.Module:
    model = _model()
    with torch.no_grad():
        model.out.bias[0] = float("nan")
    return model


# (id, the training split, the model, the phrase)
FIT_CASES = [
    ("one NaN pixel", _with(lambda x: _set(x, (3, 0, 5, 5), float("nan"))), _model,
     "fit: train: x contains NaN or Inf"),
    ("one Inf pixel", _with(lambda x: _set(x, (0, 0, 0, 0), float("inf"))), _model,
     "fit: train: x contains NaN or Inf"),
    ("values above 1", _with(lambda x: x * 255), _model,
     "fit: train: x must lie in [0, 1] (normalization belongs inside the model)"),
    ("values below 0", _with(lambda x: x - 0.5), _model, "fit: train: x must lie in [0, 1]"),
    ("label out of range", _with(y_edit=lambda y: _set(y, (4,), 10)), _model,
     "fit: train: label out of range: labels span [0, 10] but the model has 10 classes"),
    ("label -1", _with(y_edit=lambda y: _set(y, (4,), -1)), _model,
     "fit: train: label out of range: labels span [-1, 9]"),
    ("float labels", _with(y_edit=lambda y: y.float()), _model,
     "fit: train: y must hold integer labels, got dtype torch.float32"),
    ("bool labels", _with(y_edit=lambda y: y > 4), _model,
     "fit: train: y must hold integer labels, got dtype torch.bool"),
    ("uint8 images", _with(lambda x: (x * 255).to(torch.uint8)), _model,
     "fit: train: x must be floating point in [0, 1], got dtype torch.uint8"),
    ("images of another shape", _with(lambda x: x[:, :, :14, :14]), _model,
     "fit: the model (mlp) takes images of shape (1, 28, 28) (C, H, W), but x has (1, 14, 14)"),
    ("a model returning a dict", _with(), DictOutput,
     "fit: the model returned a dict with keys ['logits'], not a tensor of logits"),
    ("a model with NaN weights", _with(), _nan_model,
     "fit: the model returned non-finite logits (NaN or Inf)"),
]


@pytest.mark.parametrize("make_split,make_model,phrase", [c[1:] for c in FIT_CASES],
                         ids=[c[0] for c in FIT_CASES])
def test_fit_refuses_bad_inputs_before_training(make_split, make_model, phrase, tmp_path):
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RobustkitError) as info:
        fit(model, make_split(), epochs=1, device="cpu", amp=False, quiet=True,
            resume=tmp_path / "m.resume")
    assert phrase in str(info.value), str(info.value)
    for k, v in model.state_dict().items():  # untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True)
    assert not (tmp_path / "m.resume").exists()


@pytest.mark.parametrize("edit,phrase", [
    (lambda x, y: (x, _set(y, (0,), 12)), "fit: test: label out of range: labels span [0, 12]"),
    (lambda x, y: (_set(x, (1, 0, 2, 2), float("nan")), y), "fit: test: x contains NaN or Inf"),
    (lambda x, y: (x[:, :, :20], y), "fit: test images are (1, 20, 28) (C, H, W) but training "
                                     "images (1, 28, 28)"),
], ids=["label", "nan-pixel", "shape"])
def test_fit_refuses_a_bad_test_split_before_training(edit, phrase, monkeypatch):
    monkeypatch.setattr("robustkit.train.run_epoch", lambda *a, **k: pytest.fail("trained"))
    x, y = _split()
    with pytest.raises(RobustkitError) as info:
        fit(_model(), (x, y), edit(x, y), epochs=1, device="cpu", quiet=True)
    assert phrase in str(info.value)


class BlowsUp(nn.Module):
    """Finite logits in eval mode; in train mode, Inf logits from the ``at``-th batch on."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.net = _model()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.at:
                out = out * float("inf")
        return out


def test_a_loss_that_becomes_nan_stops_training_naming_epoch_and_batch(tmp_path):
    path = tmp_path / "m.resume"
    x, y = _split(64)
    model = BlowsUp(at=7)  # 4 batches per epoch: epoch 2, batch 3
    with pytest.raises(TrainingDiverged, match=r"^training diverged: the loss is NaN at epoch "
                                               r"2, batch 3 of 4; lower the learning rate"):
        fit(model, (x, y), epochs=3, batch_size=16, lr=0.01, augment="none", device="cpu",
            amp=False, quiet=True, resume=path)
    assert issubclass(TrainingDiverged, RobustkitError)
    stored = torch.load(path, weights_only=True)
    assert stored["epoch"] == 1  # the diverged epoch's state was never written


def test_a_huge_learning_rate_diverges_and_train_and_save_writes_nothing(tmp_path):
    out = tmp_path / "m.pt"
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e12, optimizer="sgd", augment="none")
    with pytest.raises(TrainingDiverged, match=r"training diverged: the loss is (NaN|Inf) at "
                                               r"epoch \d, batch \d+ of 4"):
        train_and_save("mlp", "mnist-5k", out, config=cfg, train_size=64,
                       options={"hidden": [8], "dropout": 0.0}, device="cpu", amp=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no checkpoint, no resume file


def test_train_and_save_refuses_an_unwritable_out_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr("robustkit.train.fit", lambda *a, **k: pytest.fail("trained"))
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [(tmp_path / "folder.pt", "is a folder; give a file path"),
             (tmp_path / "file" / "m.pt", "is a file, not a folder")]
    for out, phrase in cases:
        with pytest.raises(RobustkitError, match=re.escape(phrase)):
            train_and_save("logistic", "mnist-5k", out, train_size=50)
    with pytest.raises(RobustkitError, match="it takes no option 'depth'"):
        train_and_save("mlp", "mnist-5k", tmp_path / "m.pt", options={"depth": 2})


def test_a_full_disk_during_training_is_one_error_naming_the_file(tmp_path, monkeypatch):
    import errno

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.01, augment="none")
    monkeypatch.setattr("robustkit.core.io.os.fsync", no_space)
    with pytest.raises(RobustkitError, match=r"cannot write .*m\.pt\.resume: no space left on "
                                             r"the device"):
        train_and_save("logistic", "mnist-5k", tmp_path / "m.pt", config=cfg, train_size=50,
                       device="cpu", amp=False)
    assert not (tmp_path / "m.pt").exists()
