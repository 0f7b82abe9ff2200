"""The Python API's answer to bad input: a table of cases, each with its exact behaviour.

Every case is a call into the public API (attacks, evaluate, transfer, explain, metrics)
and the expected answer: ``("error", phrase)`` (a :class:`RobustkitError` whose message
holds the phrase), ``("warn", phrase)`` (a warning, and a result), or ``("ok", None)``.
The module also holds the issue's reproductions 2 and 3 (distance attacks on an eps grid;
NaN weights and a zero std) and the options that must reach user attacks (eps to a
``module:function``, a torchattacks object in curves and transfer).
"""

from __future__ import annotations

import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from robustkit import attacks, evaluate, explain, metrics, models, transfer
from robustkit.errors import RobustkitError


class DictOut(nn.Module):
    """A model that returns a dict, as HuggingFace-style models do."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return {"logits": self.inner(x)}


class TupleOut(DictOut):
    def forward(self, x):
        return self.inner(x), x.mean()


class Softmaxed(DictOut):
    def forward(self, x):
        return self.inner(x).softmax(1)


@pytest.fixture
def env(tiny_mlp, tiny_batch):
    model = tiny_mlp.eval()
    y = torch.arange(8) % 10
    nan_model = models.create("mlp", hidden=(16,))
    last = [m for m in nan_model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight[0, 0] = float("nan")
    zero_std = models.create("mlp", hidden=(16,))
    norm = [m for m in zero_std.modules() if isinstance(m, models.Normalize)][0]
    norm.std.zero_()
    return {"m": model, "x": tiny_batch, "y": y, "nan": nan_model.eval(),
            "zero_std": zero_std.eval()}


def _nan(x):
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    return x


CASES = {
    # -- images and labels
    "x with one NaN pixel": (lambda e: attacks.fgsm(e["m"], _nan(e["x"]), e["y"], eps=0.1),
                             "error", "NaN or Inf"),
    "x above 1": (lambda e: attacks.pgd(e["m"], e["x"] * 2, e["y"], eps=0.1, steps=1),
                  "error", "must lie in [0, 1]"),
    "x normalized (negative)": (lambda e: evaluate.robust_accuracy(
        e["m"], e["x"] - 0.5, e["y"], "fgsm", eps=0.1, progress=False), "error", "[0, 1]"),
    "x rank 3": (lambda e: attacks.fgsm(e["m"], e["x"][0], e["y"][:1], eps=0.1),
                 "error", "rank 4"),
    "x integer dtype": (lambda e: attacks.fgsm(e["m"], (e["x"] > 0.5).long(), e["y"], eps=0.1),
                        "error", "floating point"),
    "x empty": (lambda e: attacks.fgsm(e["m"], e["x"][:0], e["y"][:0], eps=0.1),
                "error", "empty batch"),
    "x is a list": (lambda e: attacks.fgsm(e["m"], e["x"].tolist(), e["y"], eps=0.1),
                    "error", "x must be a tensor"),
    "y float": (lambda e: attacks.fgsm(e["m"], e["x"], e["y"].float(), eps=0.1),
                "error", "integer labels"),
    "y bool": (lambda e: attacks.fgsm(e["m"], e["x"], e["y"] > 3, eps=0.1),
               "error", "integer labels"),
    "y wrong length": (lambda e: attacks.pgd(e["m"], e["x"], e["y"][:5], eps=0.1),
                       "error", "batch-size mismatch"),
    "y = num_classes": (lambda e: attacks.fgsm(e["m"], e["x"], e["y"] + 10, eps=0.1),
                        "error", "label out of range"),
    "y = -1": (lambda e: attacks.deepfool(e["m"], e["x"], e["y"] - 9),
               "error", "label out of range"),
    "target out of range": (lambda e: attacks.minimal_targeted(
        e["m"], e["x"], torch.full((8,), 12), steps=20), "error", "label out of range"),
    "wrong image shape": (lambda e: attacks.fgsm(e["m"], e["x"][:, :, :14, :14], e["y"],
                                                 eps=0.1), "error", "takes images of shape"),
    "float64 images are cast": (lambda e: attacks.pgd(e["m"], e["x"].double(), e["y"], eps=0.1,
                                                      steps=2), "ok", None),
    "float16 images are cast": (lambda e: evaluate.robust_accuracy(
        e["m"], e["x"].half(), e["y"], "fgsm", eps=0.1, progress=False), "ok", None),
    # -- numbers
    "eps negative": (lambda e: attacks.fgsm(e["m"], e["x"], e["y"], eps=-0.1),
                     "error", "finite number >= 0"),
    "eps inf": (lambda e: attacks.pgd(e["m"], e["x"], e["y"], eps=float("inf")),
                "error", "finite number >= 0"),
    "eps nan": (lambda e: evaluate.robust_accuracy(e["m"], e["x"], e["y"], "pgd",
                                                   eps=float("nan"), progress=False),
                "error", "finite number >= 0"),
    "eps a string": (lambda e: attacks.fgsm(e["m"], e["x"], e["y"], eps="big"),
                     "error", "must be a finite number"),
    "steps 0": (lambda e: attacks.pgd(e["m"], e["x"], e["y"], eps=0.1, steps=0),
                "error", "integer >= 1"),
    "steps 2.5 via options": (lambda e: evaluate.robust_accuracy(
        e["m"], e["x"], e["y"], "pgd", eps=0.1, steps=2.5, progress=False),
        "error", "steps must be an integer >= 1"),
    "unknown norm": (lambda e: attacks.pgd(e["m"], e["x"], e["y"], eps=0.1, norm="l3"),
                     "error", "norm must be one of"),
    "random_start not a bool": (lambda e: evaluate.robust_accuracy(
        e["m"], e["x"], e["y"], "pgd", eps=0.1, random_start="yes", progress=False),
        "error", "true or false"),
    "seed not an int": (lambda e: attacks.bind("pgd", e["m"], {"seed": "a"}, eps=0.1),
                        "error", "seed must be an integer"),
    "batch_size 0": (lambda e: evaluate.robust_accuracy(e["m"], e["x"], e["y"], "fgsm",
                                                        batch_size=0, eps=0.1, progress=False),
                     "error", "batch_size must be an integer"),
    "curve without radii": (lambda e: evaluate.robustness_curve(e["m"], e["x"], e["y"], eps=[],
                                                                progress=False),
                            "error", "at least one value"),
    "curve eps inf": (lambda e: evaluate.robustness_curve(
        e["m"], e["x"], e["y"], eps=[0.1, float("inf")], progress=False),
        "error", "finite number >= 0"),
    "validity steps 0": (lambda e: evaluate.validity_checks(e["m"], e["x"], e["y"], steps=0,
                                                            progress=False),
                         "error", "steps must be an integer"),
    "validity norm l3": (lambda e: evaluate.validity_checks(e["m"], e["x"], e["y"], norm="l3",
                                                            progress=False),
                         "error", "norm must be one of"),
    # -- options: one way in, nothing dropped
    "fgsm takes no steps": (lambda e: evaluate.robust_accuracy(
        e["m"], e["x"], e["y"], "fgsm", eps=0.1, steps=5, progress=False),
        "error", "'fgsm' takes no option 'steps'; its options:"),
    "fgsm takes no norm": (lambda e: evaluate.adversarial_examples(
        e["m"], e["x"], e["y"], "fgsm", eps=0.1, norm="l2", progress=False),
        "error", "takes no option 'norm'"),
    "option typo": (lambda e: evaluate.robust_accuracy(
        e["m"], e["x"], e["y"], "pgd", eps=0.1, step=5, progress=False),
        "error", "takes no option 'step'"),
    "deepfool given eps": (lambda e: evaluate.robust_accuracy(
        e["m"], e["x"], e["y"], "deepfool", eps=0.3, progress=False),
        "error", "measures a distance"),
    "deepfool curve (repro 2)": (lambda e: evaluate.robustness_curve(
        e["m"], e["x"], e["y"], attack="deepfool", eps=[0.001, 0.3], progress=False),
        "error", "measures a distance"),
    "deepfool transfer (repro 2)": (lambda e: transfer.transfer_matrix(
        {"a": e["m"]}, {"b": e["m"]}, e["x"], e["y"], attack="deepfool", eps=[0.001, 0.3],
        progress=False), "error", "measures a distance"),
    "cw_l2 curve": (lambda e: evaluate.robustness_curve(
        e["m"], e["x"], e["y"], attack="cw_l2", eps=[0.1], progress=False),
        "error", "measures a distance"),
    "deepfool without eps works": (lambda e: evaluate.robust_accuracy(
        e["m"], e["x"], e["y"], "deepfool", steps=3, progress=False), "ok", None),
    "curve option pgd does not bisect": (lambda e: evaluate.robustness_curve(
        e["m"], e["x"], e["y"], eps=[0.1], restarts=2, progress=False),
        "error", "not restarts"),
    "unknown attack": (lambda e: evaluate.robust_accuracy(e["m"], e["x"], e["y"], "pdg",
                                                          eps=0.1, progress=False),
                       "error", "unknown attack 'pdg'; valid names"),
    "module:function missing": (lambda e: evaluate.robust_accuracy(
        e["m"], e["x"], e["y"], "robustkit.attacks:nope", eps=0.1, progress=False),
        "error", "cannot import attack"),
    "callable without eps given one": (lambda e: evaluate.robust_accuracy(
        e["m"], e["x"], e["y"], lambda a, b: a, eps=0.1, progress=False),
        "error", "takes no eps"),
    "callable on every source": (lambda e: transfer.transfer_matrix(
        {"a": e["m"]}, {"b": e["m"]}, e["x"], e["y"], attack=lambda a, b, eps: a, eps=0.1,
        progress=False), "error", "bound to its own model"),
    "attack returns numpy": (lambda e: evaluate.adversarial_examples(
        e["m"], e["x"], e["y"], lambda a, b: a.numpy(), progress=False),
        "error", "not a tensor"),
    "not an attack": (lambda e: evaluate.robust_accuracy(e["m"], e["x"], e["y"], 3,
                                                         progress=False),
                      "error", "an attack must be"),
    # -- the model contract
    "dict output": (lambda e: attacks.fgsm(DictOut(e["m"]), e["x"], e["y"], eps=0.1),
                    "error", "returned a dict with keys ['logits']"),
    "tuple output": (lambda e: evaluate.robust_accuracy(TupleOut(e["m"]), e["x"], e["y"],
                                                        "pgd", eps=0.1, progress=False),
                     "error", "returned a tuple"),
    "dict output in transfer": (lambda e: transfer.transfer_matrix(
        {"a": e["m"]}, {"b": DictOut(e["m"])}, e["x"], e["y"], eps=0.1, progress=False),
        "error", "returned a dict"),
    "probabilities": (lambda e: attacks.deepfool(Softmaxed(e["m"]).eval(), e["x"], e["y"], steps=2),
                      "warn", "look like probabilities"),
    "probabilities in robust_accuracy": (lambda e: evaluate.robust_accuracy(
        Softmaxed(e["m"]).eval(), e["x"], e["y"], "fgsm", eps=0.1, progress=False),
        "warn", "look like probabilities"),
    "NaN weights (repro 3)": (lambda e: evaluate.robust_accuracy(
        e["nan"], e["x"], e["y"], "pgd", eps=0.1, steps=2, progress=False),
        "error", "non-finite logits"),
    "NaN weights, attack": (lambda e: attacks.pgd(e["nan"], e["x"], e["y"], eps=0.1, steps=2),
                            "error", "non-finite logits"),
    "zero std (repro 3)": (lambda e: attacks.fgsm(e["zero_std"], e["x"], e["y"], eps=0.1),
                           "error", "non-finite logits"),
    "NaN weights, curve": (lambda e: evaluate.robustness_curve(
        e["nan"], e["x"], e["y"], eps=[0.1], progress=False), "error", "non-finite logits"),
    "NaN weights, explain": (lambda e: explain.attribute(e["nan"], e["x"], e["y"],
                                                         method="saliency"),
                             "error", "non-finite logits"),
    # -- explanations and metrics
    "explain unknown method": (lambda e: explain.attribute(e["m"], e["x"], e["y"],
                                                           method="salency"),
                               "error", "salency"),
    "explain x above 1": (lambda e: explain.attribute(e["m"], e["x"] * 3, e["y"],
                                                      method="saliency"),
                          "error", "[0, 1]"),
    "explain dict output": (lambda e: explain.attribute(DictOut(e["m"]), e["x"], e["y"],
                                                        method="saliency"),
                            "error", "returned a dict"),
    "norms of different shapes": (lambda e: metrics.perturbation_norms(e["x"], e["x"][:4]),
                                  "error", "shapes differ"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_answered_exactly(case, env):
    call, kind, phrase = CASES[case]
    if kind == "error":
        with pytest.raises(RobustkitError) as err:
            call(env)
        assert phrase in str(err.value), str(err.value)
        assert "\n" not in str(err.value)
    elif kind == "warn":
        with pytest.warns(UserWarning, match=phrase):
            call(env)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = call(env)
        if isinstance(result, torch.Tensor):
            assert result.min() >= 0 and result.max() <= 1
        else:
            assert 0.0 <= result <= 1.0


def test_every_refusal_is_a_value_error_too(env):
    # Callers that catch ValueError keep working: RobustkitError subclasses it.
    with pytest.raises(ValueError):
        attacks.fgsm(env["m"], env["x"], env["y"], eps=-1)


# ------------------------------------------------------------------ options reach user attacks

@pytest.fixture
def user_attack_module(tmp_path, monkeypatch):
    (tmp_path / "myattacks.py").write_text(textwrap.dedent("""
        import torch
        SEEN = []

        def shift(model, x, y, *, eps, steps=1):
            SEEN.append({"eps": eps, "steps": steps})
            return (x + eps * torch.sign(torch.randn_like(x))).clamp(0, 1)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("myattacks", None)
    import myattacks
    yield myattacks
    sys.modules.pop("myattacks", None)


def test_module_function_attack_receives_eps_and_options(env, user_attack_module):
    evaluate.robust_accuracy(env["m"], env["x"], env["y"], "myattacks:shift", eps=0.1, steps=3,
                             progress=False)
    assert user_attack_module.SEEN == [{"eps": 0.1, "steps": 3}]
    curve = evaluate.robustness_curve(env["m"], env["x"], env["y"], attack="myattacks:shift",
                                      eps=[0.05, 0.2], progress=False)
    assert [s["eps"] for s in user_attack_module.SEEN[1:]] == [0.05, 0.2][:len(
        user_attack_module.SEEN) - 1]
    assert [r["eps"] for r in curve] == [0.05, 0.2]
    with pytest.raises(RobustkitError, match="takes no option 'alpha'"):
        evaluate.robust_accuracy(env["m"], env["x"], env["y"], "myattacks:shift", eps=0.1,
                                 alpha=0.1, progress=False)


def test_torchattacks_pgd_works_in_curve_and_transfer(trained_mlp, mnist_1000):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = mnist_1000["test"][0][:64], mnist_1000["test"][1][:64]
    obj = torchattacks.PGD(trained_mlp, eps=0.3, alpha=0.02, steps=10, random_start=False)
    curve = evaluate.robustness_curve(trained_mlp, x, y, attack=obj, eps=[0.05, 0.2],
                                      progress=False)
    assert obj.eps == 0.3  # the user's object is left as it was
    # eps reached the object: each point equals torchattacks at that eps, run directly
    for point in curve:
        direct = torchattacks.PGD(trained_mlp, eps=point["eps"], alpha=0.02, steps=10,
                                  random_start=False)
        x_adv = direct(x, y)
        clean = trained_mlp(x).argmax(1) == y
        expected = (clean & (trained_mlp(x_adv).argmax(1) == y)).float().mean().item()
        assert point["accuracy"] == pytest.approx(expected, abs=1e-9)
    other = models.create("mlp", hidden=(8,)).eval()
    m = transfer.transfer_matrix({"mlp": trained_mlp, "other": other}, {"mlp": trained_mlp},
                                 x, y, attack=obj, eps=[0.2], progress=False)
    assert m[0.2]["mlp"]["mlp"] == pytest.approx(curve[1]["accuracy"], abs=1e-9)
    assert obj.model is trained_mlp  # set_model happened on a copy
