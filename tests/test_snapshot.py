"""Resumable training: a run killed after any epoch and started again ends exactly as an
uninterrupted one; states of other runs are refused."""

from __future__ import annotations

import pytest
import torch

from robustkit import models, snapshot
from robustkit.errors import RobustkitError
from robustkit.train import fit

#: Dropout (global generator), affine augmentation and shuffling (fit's generator), the
#: adversarial random starts (their own generator) and the guard: every state there is.
SETTINGS = dict(epochs=4, batch_size=32, lr=0.01, augment="affine", amp=False, quiet=True,
                seed=3, adversarial={"method": "fgsm-rs", "eps": 0.1, "guard_size": 32})


@pytest.fixture
def small(mnist_1000):
    x, y = mnist_1000["train"]
    xt, yt = mnist_1000["test"]
    return (x[:256], y[:256]), (xt[:64], yt[:64])


def fresh_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("mlp", hidden=(32,), dropout=0.2)


def killed_after(epochs: int, monkeypatch) -> None:
    """Make the run stop (as if killed) right after writing the state of ``epochs``."""
    real, written = snapshot.save, []

    def save_then_die(path, state):
        real(path, state)
        written.append(state["epoch"])
        if len(written) == epochs:
            raise KeyboardInterrupt
    monkeypatch.setattr(snapshot, "save", save_then_die)


def same_run(a, b) -> None:
    drop = ("seconds",)  # wall time differs; everything else must not
    assert [{k: v for k, v in e.items() if k not in drop} for e in a.epochs] == \
        [{k: v for k, v in e.items() if k not in drop} for e in b.epochs]


@pytest.mark.parametrize("stop_after", [1, 3])
def test_a_killed_run_resumed_ends_exactly_as_an_uninterrupted_one(small, tmp_path, stop_after,
                                                                    monkeypatch):
    train, test = small
    straight = fresh_model()
    whole = fit(straight, train, test, **SETTINGS)

    path = tmp_path / "m.resume"
    model = fresh_model()
    with monkeypatch.context() as m:
        killed_after(stop_after, m)
        with pytest.raises(KeyboardInterrupt):
            fit(model, train, test, resume=path, **SETTINGS)
    assert snapshot.load(path, torch.load(path, weights_only=True)["fingerprint"])["epoch"] \
        == stop_after
    resumed = fresh_model()  # a new process would start from a new model
    history = fit(resumed, train, test, resume=path, **SETTINGS)
    same_run(history, whole)
    for (k, p), q in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(p, q), k  # bit for bit
    assert history.adversarial == whole.adversarial and history.held_out == whole.held_out


def test_a_finished_state_trains_nothing_more(small, tmp_path, monkeypatch):
    train, test = small
    path = tmp_path / "m.resume"
    first = fresh_model()
    done = fit(first, train, test, resume=path, **SETTINGS)
    calls = []
    monkeypatch.setattr("robustkit.train.random_affine",
                        lambda *a, **k: calls.append(1) or a[0])
    again = fresh_model()
    history = fit(again, train, test, resume=path, **SETTINGS)
    assert not calls  # no batch was drawn
    same_run(history, done)
    assert all(torch.equal(p, q) for p, q in zip(again.state_dict().values(),
                                                 first.state_dict().values()))


def test_a_state_of_another_configuration_is_refused(small, tmp_path):
    train, test = small
    path = tmp_path / "m.resume"
    fit(fresh_model(), train, test, resume=path, **{**SETTINGS, "epochs": 1})
    with pytest.raises(RobustkitError, match=r"another training run \(training:"):
        fit(fresh_model(), train, test, resume=path, **{**SETTINGS, "epochs": 2})
    with pytest.raises(RobustkitError, match=r"\(seed:"):
        fit(fresh_model(), train, test, resume=path, **{**SETTINGS, "epochs": 1, "seed": 4})
    path.write_bytes(b"not a state")
    with pytest.raises(RobustkitError, match="cannot be read"):
        fit(fresh_model(), train, test, resume=path, **SETTINGS)


def test_the_cli_resumes_and_removes_the_state_when_done(tmp_path, capsys, monkeypatch):
    from tests.test_cli import run_main

    out, state = tmp_path / "m.pt", tmp_path / "m.pt.resume"
    args = ["train", "--model", "logistic", "--epochs", "3", "--train-size", "200",
            "--out", out]
    with monkeypatch.context() as m:
        killed_after(1, m)  # Ctrl-C after the first epoch
        code, _, _ = run_main(args, capsys)
    assert code == 130 and state.exists() and not out.exists()
    code, stdout, _ = run_main(args, capsys)
    assert code == 0 and "1 of 3 epochs done" in stdout
    assert out.exists() and not state.exists()  # the state goes once the model is saved
    assert len(models.load(out).robustkit_metadata["history"]) == 3
    torch.save({"format": 0}, state)  # a state it cannot use is refused, by name
    code, _, err = run_main(args, capsys)
    assert code == 2 and "m.pt.resume" in err
    code, _, _ = run_main([*args, "--fresh"], capsys)
    assert code == 0 and not state.exists()
