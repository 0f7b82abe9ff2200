"""The check that a function left a model as it found it: modes, parameters (values,
memory, gradients), buffers, attributes and hooks."""

from __future__ import annotations

import torch
from torch import nn


def snapshot(model: nn.Module) -> dict:
    """What :func:`assert_as_found` compares against, taken before the call."""
    return {"modes": {n: m.training for n, m in model.named_modules()},
            "params": {k: p.detach().clone() for k, p in model.named_parameters()},
            "storage": {k: (p.data_ptr(), p.stride()) for k, p in model.named_parameters()},
            "buffers": {k: b.clone() for k, b in model.named_buffers()},
            "attrs": {n: set(vars(m)) for n, m in model.named_modules()}}


def assert_as_found(model: nn.Module, before: dict) -> None:
    assert {n: m.training for n, m in model.named_modules()} == before["modes"]
    for k, p in model.named_parameters():
        assert torch.equal(p, before["params"][k]) and p.grad is None, k
        assert (p.data_ptr(), p.stride()) == before["storage"][k], k  # same memory, layout
    for k, b in model.named_buffers():
        assert torch.equal(b, before["buffers"][k]), k
    for n, m in model.named_modules():
        assert set(vars(m)) == before["attrs"][n], n  # no attribute left behind
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                      "_backward_pre_hooks"):
            assert not getattr(m, hooks), (n, hooks)
