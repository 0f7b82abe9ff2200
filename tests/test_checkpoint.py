"""Checkpoints: exact round trips, metadata with versions, and refusal of unsafe or broken files."""

from __future__ import annotations

import builtins
import platform
import re

import numpy as np
import pytest
import torch

import robustkit
from robustkit import models
from robustkit.errors import RobustkitError
from robustkit.models import checkpoint


def _model(name: str):
    torch.manual_seed(0)
    options = {"mlp": {"hidden": (16, 8), "activation": "leaky_relu", "dropout": 0.3}}.get(name, {})
    return models.create(name, (1, 28, 28), 10, mean=(0.1307,), std=(0.3081,), **options)


class MarkerPayload:
    """Unpickling this creates ``path`` (the stand-in for ``os.system`` in a real attack)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@pytest.mark.parametrize("name", models.names())
def test_round_trip_gives_identical_outputs_in_eval_mode(name, tmp_path, tiny_batch):
    model = _model(name)
    model.train()  # saved in train mode; load must still give eval mode
    path = models.save(model, tmp_path / f"{name}.pt", dataset="mnist-5k")
    loaded = models.load(path)
    assert path == tmp_path / f"{name}.pt"
    assert loaded.training is False
    assert all(not m.training for m in loaded.modules())
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    model.eval()
    with torch.no_grad():
        out = loaded(tiny_batch)
        assert out.shape == (8, 10)  # (N, 1, 28, 28) -> (N, 10)
        assert torch.equal(out, model(tiny_batch))
    assert loaded.robustkit_spec == model.robustkit_spec


def test_metadata_round_trips_and_records_versions(tmp_path, tiny_mlp):
    meta = {"dataset": "mnist-5k", "train_size": 256, "seed": 3, "test_accuracy": 0.9125,
            "training": {"lr": 0.05, "loss": "mse"}, "history": [{"epoch": 1, "loss": 1.5}],
            "note": None, "augment": True}
    models.save(tiny_mlp, tmp_path / "m.pt", **meta)
    saved = models.load(tmp_path / "m.pt").robustkit_metadata
    assert {k: saved[k] for k in meta} == meta
    assert saved["python"] == platform.python_version()
    assert saved["torch"] == torch.__version__
    assert saved["robustkit"] == robustkit.__version__
    assert "git_commit" in saved
    assert saved["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", saved["git_commit"])
    payload = models.read(tmp_path / "m.pt")
    assert payload["format"] == checkpoint.FORMAT
    assert payload["format_version"] == checkpoint.FORMAT_VERSION
    assert payload["options"] == {"hidden": [16], "activation": "tanh", "dropout": 0.1}


def test_non_plain_metadata_is_refused(tmp_path, tiny_mlp):
    with pytest.raises(RobustkitError, match="must be a number, string, bool or list"):
        models.save(tiny_mlp, tmp_path / "m.pt", callback=print)
    assert not (tmp_path / "m.pt").exists()


def test_save_refuses_a_model_not_made_by_create(tmp_path):
    with pytest.raises(RobustkitError, match="robustkit.models.create"):
        models.save(torch.nn.Linear(2, 2), tmp_path / "m.pt")


def test_malicious_checkpoint_is_refused_without_running_its_payload(tmp_path, tiny_mlp):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    spec = tiny_mlp.robustkit_spec
    # A file that looks like a real checkpoint, with the payload tucked into the metadata.
    torch.save({"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION,
                **spec, "state_dict": tiny_mlp.state_dict(),
                "metadata": {"note": MarkerPayload(marker)}}, path)
    for attempt in (models.read, models.load):
        with pytest.raises(RobustkitError, match="could run code") as info:
            attempt(path)
        assert str(path) in str(info.value)
        assert not marker.exists()
    # The payload is live: an unsafe load does run it (so the refusal above is meaningful).
    unsafe = torch.load(path, weights_only=False)
    unsafe["metadata"]["note"].close()  # the payload returned an open file
    assert marker.exists()


def _saved_bytes(model, tmp_path) -> bytes:
    return models.save(model, tmp_path / "good.pt").read_bytes()


def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path, tiny_mlp):
    blob = _saved_bytes(tiny_mlp, tmp_path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(blob[: len(blob) // 2])
    for attempt in (models.read, models.load):
        with pytest.raises(RobustkitError, match="corrupt or truncated") as info:
            attempt(cut)
        assert str(cut) in str(info.value) and "\n" not in str(info.value)


def test_empty_file_is_reported_as_corrupt(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(RobustkitError, match="corrupt or truncated"):
        models.read(tmp_path / "empty.pt")


def test_plain_state_dict_is_not_a_robustkit_checkpoint(tmp_path, tiny_mlp):
    torch.save(tiny_mlp.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(RobustkitError, match="is not a robustkit checkpoint"):
        models.load(tmp_path / "weights.pt")


@pytest.mark.parametrize("content", ["random", "text"])
def test_foreign_bytes_raise_a_clear_error(content, tmp_path):
    # Garbage is not a checkpoint; it should be called corrupt / not a checkpoint, not a
    # file that "could run code" (there is no code in it), and never crash with a traceback.
    path = tmp_path / "foreign.pt"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        path.write_text("hello world\n[train]\nepochs = 3\n")
    with pytest.raises(RobustkitError) as info:
        models.read(path)
    message = str(info.value)
    assert str(path) in message
    assert re.search(r"corrupt|not a robustkit checkpoint", message)
    assert "could run code" not in message


def test_missing_checkpoint(tmp_path):
    with pytest.raises(RobustkitError, match="does not exist"):
        models.load(tmp_path / "nope.pt")


def test_other_format_version_is_refused(tmp_path, tiny_mlp):
    payload = models.read(models.save(tiny_mlp, tmp_path / "m.pt"))
    torch.save({**payload, "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(RobustkitError, match="format version 99"):
        models.read(tmp_path / "future.pt")


def test_weights_that_do_not_fit_are_refused(tmp_path, tiny_mlp):
    payload = models.read(models.save(tiny_mlp, tmp_path / "m.pt"))
    payload["options"]["hidden"] = [32]  # the stored fc1 has 16 units
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(RobustkitError, match="model description .* does not match its checksum"):
        models.load(tmp_path / "edited.pt")
    # A checksum is no signature: re-signed, the shapes are still compared before building.
    payload["checksum"] = checkpoint.checksums(payload)
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(RobustkitError, match=r"weights do not fit .*fc1\.weight is \(16, 784\) "
                                             r"in the file but \(32, 784\) in the model"):
        models.load(tmp_path / "mismatch.pt")


def test_save_records_checksums_that_read_verifies(tmp_path, tiny_mlp):
    payload = models.read(models.save(tiny_mlp, tmp_path / "m.pt"))
    assert payload["format_version"] == 2
    assert set(payload["checksum"]) == {"algorithm", "weights", "spec", "metadata"}
    assert payload["checksum"] == checkpoint.checksums(payload)
    assert all(re.fullmatch(r"[0-9a-f]{64}", payload["checksum"][k])
               for k in ("weights", "spec", "metadata"))


def test_the_weights_checksum_covers_names_dtypes_shapes_and_bytes(tiny_mlp):
    state = {k: v.clone() for k, v in tiny_mlp.state_dict().items()}
    base = checkpoint._weights_digest(state)
    assert checkpoint._weights_digest(dict(reversed(state.items()))) == base  # order-free
    renamed = {("x" + k if k == "out.bias" else k): v for k, v in state.items()}
    reshaped = {**state, "out.bias": state["out.bias"].reshape(2, 5)}
    retyped = {**state, "out.bias": state["out.bias"].double()}
    flipped = {**state, "out.bias": state["out.bias"].clone()}
    flipped["out.bias"].view(torch.int32)[0] ^= 1  # one bit of one weight
    for other in (renamed, reshaped, retyped, flipped):
        assert checkpoint._weights_digest(other) != base


def test_a_version_1_checkpoint_loads_with_a_warning(tmp_path, tiny_mlp, tiny_batch):
    payload = models.read(models.save(tiny_mlp, tmp_path / "m.pt"))
    del payload["checksum"]
    torch.save({**payload, "format_version": 1}, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="cannot be verified"):
        loaded = models.load(tmp_path / "old.pt")
    with torch.no_grad():
        assert torch.equal(loaded(tiny_batch), tiny_mlp.eval()(tiny_batch))


def test_save_leaves_no_temporary_files(tmp_path, tiny_mlp):
    folder = tmp_path / "ckpts"
    models.save(tiny_mlp, folder / "m.pt")
    models.save(tiny_mlp, folder / "m.pt")  # overwriting, too
    assert sorted(p.name for p in folder.iterdir()) == ["m.pt"]


def test_failed_save_keeps_the_old_file_and_no_temporary(tmp_path, tiny_mlp, monkeypatch):
    import errno

    dest = tmp_path / "m.pt"
    models.save(tiny_mlp, dest, version="old")
    before = dest.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("robustkit.core.io.os.fsync", disk_full)
    with pytest.raises(RobustkitError, match=f"cannot write {re.escape(str(dest))}: no space"):
        models.save(tiny_mlp, dest, version="new")
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_model_options_are_checked_against_the_factory_signature():
    from robustkit.models.zoo import check_options, valid_options

    assert list(valid_options("mlp")) == ["hidden", "activation", "dropout"]
    assert valid_options("logistic") == {}
    assert check_options("mlp", {"hidden": (8, 4)}) == {"hidden": [8, 4]}
    with pytest.raises(RobustkitError, match="model 'logistic': bad options \\['hidden'\\]: it "
                                             "takes no option 'hidden'; valid options: \\(none\\)"):
        check_options("logistic", {"hidden": [3]})
    with pytest.raises(RobustkitError, match="model 'mlp': option 'activation' must be a "
                                             "number, string, bool or a list of them, got "
                                             "builtin_function_or_method"):
        check_options("mlp", {"activation": print})


@pytest.mark.parametrize("args,match", [
    (((1, 28, 28.5), 10), "in_shape must be \\(C, H, W\\) with positive integer sizes"),
    (((3, 2**16, 2**16), 10), "elements per image; at most 2,147,483,648"),
    (((1, 28, 28), 2**32), "num_classes must be at least 2 and at most"),
    (((1, 28, 28), 10.0), "num_classes must be an integer"),
    (((1, 28, 28), True), "num_classes must be an integer"),
], ids=["float-size", "huge-image", "huge-classes", "float-classes", "bool-classes"])
def test_absurd_shapes_are_refused_before_building(args, match):
    with pytest.raises(RobustkitError, match=match):
        models.create("logistic", *args)


@pytest.mark.parametrize("mean,std", [([float("nan")], [0.5]), ([0.5], [float("nan")]),
                                      ([0.5], [float("inf")]), ([0.5], [0.0])])
def test_normalize_refuses_non_finite_or_non_positive_values(mean, std):
    with pytest.raises(RobustkitError, match="finite, and std > 0"):
        models.Normalize(mean, std)
