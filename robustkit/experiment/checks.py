"""The checks of an experiment config that need robustkit's registries: attacks and their
options (through the one option binder), datasets, models and their options, explanation
methods, checkpoints and the device. Each raises :class:`RobustkitError` whose message
starts with the field's dotted path (``experiment.attacks[1].options.steps: ...``).

They take plain values, not the config's dataclasses, so :mod:`robustkit.experiment.config`
can call them without an import cycle.

Example:
    >>> attack_options("fgsm", {"steps": 5}, "experiment.attacks[0]", grid=True)
    Traceback (most recent call last):
    ...
    robustkit.errors.RobustkitError: experiment.attacks[0].options.steps: ...
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from robustkit import data, explain, models
from robustkit.attacks import check_options, spec
from robustkit.autoattack import VERSIONS
from robustkit.core import pick_device
from robustkit.errors import RobustkitError
from robustkit.models.building import check as check_build
from robustkit.models.checkpoint import read as read_checkpoint
from robustkit.models.foreign import LIBRARIES
from robustkit.models.wrap import check_mean_std

#: ``package.module:function``, both sides Python names.
_IMPORT = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def is_library(spec: str) -> bool:
    """Whether ``spec`` is ``torchvision:NAME`` or ``timm:NAME``."""
    return spec.partition(":")[0] in LIBRARIES


def dataset(name: str, where: str) -> data.DatasetSpec:
    """The registered dataset ``name``."""
    try:
        return data.spec(name)
    except RobustkitError as err:
        raise RobustkitError(f"{where}: {err}") from None


def device(name: str, where: str) -> None:
    """``auto``, ``cpu``, ``cuda[:N]`` or ``mps``, and present on this machine."""
    try:
        pick_device(name)
    except (RobustkitError, RuntimeError, ValueError) as err:
        raise RobustkitError(f"{where}: {err}") from None


def attack_options(attack: str, options: Mapping[str, Any], where: str, *,
                   eps: float | None = None, grid: bool = False) -> None:
    """``attack`` exists, takes ``eps`` (one radius) or an eps grid, and takes each of
    ``options`` with a value in range; errors name ``WHERE.attack``, ``WHERE.eps`` or
    ``WHERE.options.KEY``.

    Configs score untargeted attacks against the true labels and seed them from the
    run's ``seeds``, so ``targeted = true`` and ``seed`` are refused here.
    """
    if attack == AUTOATTACK:
        _autoattack_options(options, where, grid=grid)
        return
    if ":" in attack and not _IMPORT.fullmatch(attack):
        raise RobustkitError(f"{where}.attack: {attack!r} is not 'package.module:function'")
    try:
        spec(attack)
    except RobustkitError as err:
        raise RobustkitError(f"{where}.attack: {err}") from None
    check_options(attack, {}, eps=eps, grid=grid, what=f"{where}.eps")
    for k, value in options.items():
        field = f"{where}.options.{k}"
        if not isinstance(value, (bool, int, float, str)):
            raise RobustkitError(f"{field}: expected a number, string or boolean, got "
                                 f"{type(value).__name__}")
        if k == "seed":
            raise RobustkitError(f"{field}: the run seeds every attack from `seeds`; remove it")
        if k == "targeted" and value is not False:
            raise RobustkitError(f"{field}: a run scores untargeted attacks against the true "
                                 "labels; targeted attacks are not supported in a config")
        check_options(attack, {k: value}, what=field)


#: The attack name a config gives for AutoAttack (:func:`robustkit.evaluate.autoattack`),
#: with the options it takes there.
AUTOATTACK = "autoattack"
AUTOATTACK_OPTIONS = {"version": VERSIONS, "norm": ("linf", "l2")}


def _autoattack_options(options: Mapping[str, Any], where: str, *, grid: bool) -> None:
    """``attack = "autoattack"`` takes an eps grid (one unit per eps) and the options
    ``version`` and ``norm``; it is no attack for sections that need adversarial images."""
    if not grid:
        raise RobustkitError(f"{where}.attack: autoattack gives robust accuracy, not images; "
                             "use it in [[attacks]]")
    for k, value in options.items():
        if k not in AUTOATTACK_OPTIONS:
            raise RobustkitError(f"{where}.options.{k}: autoattack takes "
                                 f"{', '.join(sorted(AUTOATTACK_OPTIONS))}")
        if value not in AUTOATTACK_OPTIONS[k]:
            raise RobustkitError(f"{where}.options.{k}: must be one of "
                                 f"{', '.join(AUTOATTACK_OPTIONS[k])}, got {value!r}")


def model(arch: str, options: Mapping[str, Any], ds: data.DatasetSpec, where: str, *,
          mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
          output: str | int | None = None, weights: str | None = None) -> None:
    """``arch`` (a registered name or a spec) exists, takes each of ``options``, and builds
    with them for the dataset's shape; the model is built on the ``meta`` device (no
    memory is allocated, however large the options ask it to be), and a foreign one run
    there on the dataset's shape. With ``weights``, the file is read and every weight's
    name and shape compared with the model's (``mean``, ``std``, ``output`` as in
    :func:`robustkit.models.build`)."""
    try:
        kind = models.check_spec(arch)
    except RobustkitError as err:
        raise RobustkitError(f"{where}.arch: {err}") from None
    if kind == "registered":
        _registered_options(arch, options, where)
    else:
        try:
            models.check_options(arch, options)
        except RobustkitError as err:
            raise RobustkitError(f"{where}.options: {err}") from None
    if mean is not None or std is not None:
        try:
            check_mean_std(mean, std, channels=ds.in_shape[0])
        except RobustkitError as err:
            raise RobustkitError(f"{where}.mean: {err}") from None
    if kind == "registered" and weights is None:
        _meta_build(arch, options, ds, where)
        return
    # A model the run trains normalizes with the dataset's mean and std (train_and_save).
    norm = (mean, std) if weights is not None else (ds.mean, ds.std)
    try:
        check_build(arch, ds.in_shape, ds.num_classes, *norm, options, output=output)
    except RobustkitError as err:
        raise RobustkitError(f"{where}: {err}") from None
    if weights is not None:
        try:
            check_build(arch, ds.in_shape, ds.num_classes, mean, std, options, output=output,
                        weights=weights)
        except RobustkitError as err:
            raise RobustkitError(f"{where}.weights: {err}") from None


def _registered_options(arch: str, options: Mapping[str, Any], where: str) -> None:
    """Each option is a parameter of the registered factory (unless it takes any)."""
    factory = models.MODELS.get(arch).factory
    params = list(inspect.signature(factory).parameters.values())[4:]  # after (shape, K, mean, std)
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        valid = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for k in options:
            if k not in valid:
                raise RobustkitError(f"{where}.options.{k}: model {arch!r} takes no option "
                                     f"{k!r}; its options: {', '.join(valid) or 'none'}")


def _meta_build(arch: str, options: Mapping[str, Any], ds: data.DatasetSpec, where: str) -> None:
    """Build the registered model on the ``meta`` device with ``options``."""
    try:
        with torch.device("meta"):
            models.create(arch, ds.in_shape, ds.num_classes, ds.mean, ds.std, **options)
    except RobustkitError as err:
        raise RobustkitError(f"{where}.options: {err}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError, IndexError, KeyError,
            ZeroDivisionError, AttributeError) as err:  # a factory given values it cannot use
        raise RobustkitError(f"{where}.options: model {arch!r} cannot be built with "
                             f"{dict(options)}: {err}") from None


def checkpoint(path: str, ds: data.DatasetSpec, where: str, trust: str | None = None) -> None:
    """An existing robustkit checkpoint of a model for the dataset's images and classes;
    a checkpoint of a ``package.module:factory`` model only when ``trust`` (the entry's
    ``arch``) names that factory, and ``trust`` only for one."""
    p = Path(path)
    try:
        found = p.is_file()
    except (OSError, ValueError) as err:  # a name too long for the file system, say
        raise RobustkitError(f"{where}: checkpoint {p} cannot be read: {err}") from None
    if not found:
        raise RobustkitError(f"{where}: checkpoint {p} does not exist"
                             + (" (it is a folder)" if p.is_dir() else ""))
    try:
        payload = read_checkpoint(p)
    except RobustkitError as err:
        raise RobustkitError(f"{where}: {err}") from None
    shape, classes = payload.get("in_shape"), payload.get("num_classes")
    if list(shape or []) != list(ds.in_shape) or classes != ds.num_classes:
        raise RobustkitError(
            f"{where}: checkpoint {p} is a model of {shape} images and {classes} classes; "
            f"{ds.name} has {list(ds.in_shape)} and {ds.num_classes}")
    name = payload.get("name")
    factory = bool(_IMPORT.fullmatch(str(name))) and not is_library(str(name))
    arch = where.rsplit(".", 1)[0] + ".arch"
    if factory and trust != name:
        raise RobustkitError(
            f"{where}: checkpoint {p} holds a model built by calling {name}, code that the "
            f"file names; set arch = {json.dumps(name)} beside it to trust that factory")
    if trust is not None and not factory:
        raise RobustkitError(f"{arch}: does not apply to a model read from a checkpoint "
                             f"(only to trust the factory of a factory model); remove it")


def methods(names: Sequence[str], where: str) -> None:
    """Every name is a registered explanation method."""
    valid = explain.names()
    for i, name in enumerate(names):
        if name not in valid:
            raise RobustkitError(f"{where}[{i}]: unknown method {name!r}; valid methods: "
                                 f"{', '.join(valid)}")
