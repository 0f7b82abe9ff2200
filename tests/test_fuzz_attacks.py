"""hypothesis fuzzing of every attack's entry point: 200 examples each.

Each example draws images, labels and options that are valid or broken in one of many
ways (NaN pixels, values outside [0, 1], wrong shapes and dtypes, labels out of range,
unknown option names, negative, infinite or non-numeric option values, a model left in
train mode). The only acceptable outcomes are:

- a :class:`RobustkitError` (the user's mistake, named), or
- a result that lies in [0, 1], has the input's shape, lies in the eps-ball for bounded
  attacks, and leaves the model (parameters, buffers, modes, ``.grad``) and the input
  exactly as they were.

Anything else (another exception type, a broken invariant) fails the test.
"""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustkit import attacks, evaluate, models
from robustkit.attacks.threat import flat_norm
from robustkit.errors import RobustkitError

SHAPE = (1, 6, 6)
ENTRY_POINTS = ["fgsm", "bim", "pgd", "mifgsm", "apgd", "fab", "deepfool", "cw_l2",
                "minimal_targeted", "robust_accuracy", "square", "hop_skip_jump"]
FUNCTIONS = {**{n: attacks.ATTACKS.get(n) for n in attacks.names()},
             "minimal_targeted": attacks.minimal_targeted}

# Valid values per option, kept small so every call is quick.
VALID = {
    "eps": st.floats(0, 0.5), "alpha": st.one_of(st.none(), st.floats(0, 0.2)),
    "steps": st.integers(1, 3), "restarts": st.integers(1, 2),
    "norm": st.sampled_from(["linf", "l2"]), "random_start": st.booleans(),
    "targeted": st.booleans(), "seed": st.one_of(st.none(), st.integers(0, 2**31 - 1)),
    "decay": st.floats(0, 2), "diversity_prob": st.floats(0, 1),
    "diversity_scale": st.floats(0, 0.3), "overshoot": st.floats(0, 0.1),
    "candidates": st.one_of(st.none(), st.integers(2, 4)), "c": st.floats(0.01, 10),
    "kappa": st.floats(0, 1), "lr": st.floats(0.001, 0.1),
    "binary_search_steps": st.integers(1, 2), "search_steps": st.integers(1, 2),
    "max_eps": st.floats(0.01, 1),
    "loss": st.sampled_from(["ce", "dlr", "margin"]), "rho": st.floats(0, 1),
    "eot": st.integers(1, 2),
    "alpha_max": st.floats(0, 1), "eta": st.floats(1, 2), "beta": st.floats(0.01, 0.99),
    "queries": st.integers(1, 30), "p_init": st.floats(0.01, 1), "gamma": st.floats(0.1, 10),
    "init_evals": st.integers(1, 20), "max_evals": st.integers(1, 40),
}
BROKEN = st.sampled_from([-1, -0.5, 0, float("nan"), float("inf"), "x", None, True, [1],
                          2.5, 10**6 + 0.5])
LIMITS = {"steps": {"cw_l2": (2, 4), "minimal_targeted": (2, 4), "apgd": (1, 4),
                    "fab": (1, 4)},
          "target_classes": {"apgd": (1, 2), "fab": (1, 2)}}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return models.create("mlp", SHAPE, 3, hidden=(5,), dropout=0.2).eval()


def _params(name: str) -> list[str]:
    if name == "robust_accuracy":
        return ["eps", "steps", "norm", "seed", "alpha", "random_start", "restarts", "step"]
    sig = inspect.signature(FUNCTIONS[name])
    return [p for p in list(sig.parameters)[3:]]


@st.composite
def calls(draw, name: str):
    """(x, y, options, train_mode): mostly valid, each part sometimes broken."""
    n = draw(st.integers(1, 4))
    x = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    fault = draw(st.sampled_from(["none"] * 6 + ["nan", "above", "below", "shape", "dtype",
                                                  "int", "labels", "ylen", "yfloat"]))
    y = torch.tensor(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    if fault == "nan":
        x[0, 0, 0, 0] = float("nan")
    elif fault == "above":
        x = x + 1.0
    elif fault == "below":
        x = x - 1.0
    elif fault == "shape":
        x = x[:, :, :4]
    elif fault == "dtype":
        x = x.double()
    elif fault == "int":
        x = (x * 255).to(torch.uint8)
    elif fault == "labels":
        y = y + 3
    elif fault == "ylen":
        y = torch.cat([y, y])
    elif fault == "yfloat":
        y = y.float()
    options = {}
    for key in draw(st.lists(st.sampled_from(_params(name)), unique=True, max_size=4)):
        lo_hi = LIMITS.get(key, {}).get(name)
        valid = st.integers(*lo_hi) if lo_hi else VALID.get(key, BROKEN)
        options[key] = draw(st.one_of(valid, valid, BROKEN))
    if name in ("apgd", "fab"):
        options.setdefault("steps", draw(st.integers(1, 4)))
    if name == "fab":  # the fuzzed model has 3 classes: at most 2 targets
        options.setdefault("target_classes", draw(st.integers(1, 2)))
    if name in ("square", "hop_skip_jump"):  # small budgets: every call stays quick
        options.setdefault("queries", draw(st.integers(1, 30)))
    if name in ("fgsm", "bim", "pgd", "mifgsm", "apgd", "fab", "square", "hop_skip_jump") \
            and "eps" not in options:
        options["eps"] = draw(st.floats(0, 0.5))
    if name == "minimal_targeted":
        options.setdefault("steps", draw(st.integers(2, 4)))
        options.setdefault("search_steps", draw(st.integers(1, 2)))
    if name == "cw_l2":
        options.setdefault("steps", 2)
        options.setdefault("binary_search_steps", 1)
    return x, y, options, draw(st.booleans())


def _state(model: nn.Module) -> dict:
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "modes": [m.training for m in model.modules()],
            "grads": [p.grad for p in model.parameters()]}


def _run(name: str, model: nn.Module, x, y, options):
    if name == "robust_accuracy":
        return evaluate.robust_accuracy(model, x, y, "pgd", progress=False, **options)
    out = FUNCTIONS[name](model, x, y, **options)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_fuzzed_calls_are_refused_or_sound(name, model):
    @settings(max_examples=200, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(call=calls(name))
    def check(call):
        x, y, options, train_mode = call
        model.train(train_mode)
        before = _state(model)
        x_before = x.clone()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # train mode and probabilities warn
                result = _run(name, model, x, y, options)
        except RobustkitError as err:
            assert str(err)
            result = None
        after = _state(model)
        assert after["modes"] == before["modes"]
        assert all(g is None for g in after["grads"])
        for k, v in before["params"].items():
            assert torch.equal(v, after["params"][k]), k
        assert torch.equal(x, x_before) or (torch.isnan(x) == torch.isnan(x_before)).all()
        if result is None:
            return
        if name == "robust_accuracy":
            assert isinstance(result, float) and 0.0 <= result <= 1.0
            return
        assert result.shape == x.shape
        assert torch.isfinite(result).all()
        assert result.min() >= 0 and result.max() <= 1
        eps = options.get("eps")
        if name in ("fgsm", "bim", "pgd", "mifgsm", "apgd", "fab", "square", "hop_skip_jump"):
            p = math.inf if options.get("norm", "linf") == "linf" else 2
            size = flat_norm(result.double() - x.to(result.device).double(), p)
            assert (size <= eps * (1 + 1e-5) + 1e-5).all()

    model.eval()
    try:
        check()
    finally:
        model.eval()
