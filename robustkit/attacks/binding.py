"""The one way in for attack options: (attack, options, eps) -> a checked call.

Every entry point (the Python API, the CLI, experiment configs, ``evaluate`` and
``transfer``) hands its attack and the user's options to :func:`bind`, which decides, by
the attack's own signature, what the attack receives:

- a registered name (``"pgd"``) or ``"package.module:function"``: a function
  ``f(model, x, y, *, ...options) -> x_adv``;
- a function whose first parameter is ``model``: the same;
- a torchattacks attack object: its model is set with ``set_model`` on a copy, and eps
  (and any option naming one of its attributes) is set on that copy;
- any other callable ``(x, y) -> x_adv`` (already bound to its model).

An option the attack does not take is an error naming the attack and its valid options;
nothing is dropped. ``eps`` reaches every attack whose signature takes it. Attacks that
measure a distance (DeepFool, C&W, minimal) take no eps and are refused where an eps grid
is asked for, so their results are never labelled with an eps. Results of attacks that
do not check themselves (user functions, callables, torchattacks) are checked at the exit
against [0, 1] and, when eps is known, the eps-ball.

Example:
    >>> run = bind("pgd", model, {"steps": 10}, eps=0.1, defaults={"seed": 0})  # doctest: +SKIP
    >>> x_adv = run(x, y)                                                       # doctest: +SKIP
    >>> run.at(0.2).record_options()                                            # doctest: +SKIP
    {'steps': 10, 'seed': 0, 'eps': 0.2}
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from robustkit.attacks.base import check_result, check_value
from robustkit.core import check_inputs, model_contract
from robustkit.core.seeding import ExampleSeeds
from robustkit.errors import RobustkitError
from robustkit.registry import Registry

Tensor = torch.Tensor

#: Name -> attack function ``(model, x, y, **options) -> x_adv``; filled by ``attacks``.
ATTACKS: Registry[Callable[..., Tensor]] = Registry("attack")

#: Registered attacks that measure a distance: no eps, never labelled with one.
DISTANCE = frozenset({"deepfool", "cw_l2", "minimal_targeted"})


@dataclass(frozen=True)
class AttackSpec:
    """An attack before any model: what it is and which options it takes.

    Attributes:
        name: its display name (the registered name, the ``module:function`` text, or
            the callable's name).
        kind: ``registered``, ``function`` (``(model, x, y, **options)``), ``object`` (a
            torchattacks attack) or ``callable`` (``(x, y)``, bound to its model).
        target: the function or object.
        params: the option names it takes; None when it takes any (``**kwargs``).
        takes_eps: whether eps reaches it.
    """

    name: str
    kind: str
    target: Any
    params: frozenset[str] | None
    takes_eps: bool
    required: frozenset[str] = frozenset()

    @property
    def measures_distance(self) -> bool:
        return not self.takes_eps

    def valid(self) -> str:
        if self.params is None:
            return "any keyword"
        return ", ".join(sorted(self.params)) or "none"


def _is_torchattacks(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "torchattacks" and hasattr(obj, "set_model")


def _keyword_params(fn: Callable[..., Any], skip: int) -> tuple[frozenset[str] | None, bool]:
    """The keyword options of ``fn`` after its first ``skip`` positional parameters, and
    whether it takes ``eps``. None when it takes ``**kwargs``."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None, True
    names = frozenset(p.name for p in params
                      if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    return names, "eps" in names


def _required(fn: Callable[..., Any], skip: int) -> frozenset[str]:
    """The options of ``fn`` (after ``skip`` positional parameters) without a default."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return frozenset(p.name for p in params if p.default is p.empty
                     and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def import_attack(text: str) -> Callable[..., Tensor]:
    """Import a user's attack ``"package.module:function"`` (robustkit's signature,
    ``function(model, x, y, **options) -> x_adv``)."""
    module_name, _, attr = text.partition(":")
    if not module_name or not attr:
        raise RobustkitError(f"attack {text!r}: expected 'package.module:function'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise RobustkitError(f"cannot import attack {text!r}: {err}") from None
    if not callable(obj):
        raise RobustkitError(f"attack {text!r} is not callable")
    return obj


def spec(attack: Any) -> AttackSpec:
    """What ``attack`` is: a registered name, ``module:function``, a function of
    ``(model, x, y, ...)``, a torchattacks object or a callable ``(x, y)``."""
    if isinstance(attack, str):
        if ":" in attack:
            fn = import_attack(attack)
            params, takes_eps = _keyword_params(fn, 3)
            return AttackSpec(attack, "function", fn, params, takes_eps, _required(fn, 3))
        fn = ATTACKS.get(attack)
        params, _ = _keyword_params(fn, 3)
        return AttackSpec(attack, "registered", fn, params, attack not in DISTANCE,
                          _required(fn, 3))
    if _is_torchattacks(attack):
        names = frozenset(k for k, v in vars(attack).items()
                          if not k.startswith("_") and isinstance(v, (bool, int, float))
                          and k not in ("training",))
        return AttackSpec(type(attack).__name__, "object", attack, names, hasattr(attack, "eps"))
    if not callable(attack):
        raise RobustkitError(
            f"an attack must be a registered name ({', '.join(ATTACKS.names())}), "
            f"'package.module:function', a torchattacks attack or a callable, got {attack!r}")
    name = getattr(attack, "__name__", type(attack).__name__)
    try:
        first = next(iter(inspect.signature(attack).parameters), None)
    except (TypeError, ValueError):  # a builtin without a signature: (x, y) only
        return AttackSpec(name, "callable", attack, frozenset(), False)
    skip = 3 if first == "model" else 2
    params, takes_eps = _keyword_params(attack, skip)
    return AttackSpec(name, "function" if skip == 3 else "callable", attack, params, takes_eps,
                      _required(attack, skip))


def check_options(attack: Any, options: Mapping[str, Any] | None = None, *,
                  eps: float | None = None, grid: bool = False,
                  what: str = "attack") -> AttackSpec:
    """Check ``options`` (and an eps, or an eps grid) against ``attack``'s signature,
    without a model: configs call this when they are loaded.

    Args:
        attack: a name, ``module:function``, function, torchattacks object or callable.
        options: the user's options, without eps.
        eps: a radius the attack will receive (None: none).
        grid: the attack will run at several radii (curves, transfer, configs).
        what: the entry point, for messages.

    Returns:
        The :class:`AttackSpec`.
    """
    s = spec(attack)
    opts = dict(options or {})
    where = f"{what}: attack {s.name!r}"
    if "eps" in opts:
        raise RobustkitError(
            f"{where}: give eps as the radius ({'the eps list' if grid else 'eps'}), "
            f"not among the options")
    if (grid or eps is not None) and not s.takes_eps:
        kind = ("measures a distance (it has no eps)" if s.kind == "registered"
                else "takes no eps")
        raise RobustkitError(
            f"{where} {kind}, so it cannot be run at a given radius"
            f"{' or over an eps grid' if grid else ''}; its options: {s.valid()}")
    for key, value in opts.items():
        if s.params is not None and key not in s.params:
            raise RobustkitError(
                f"{where} takes no option {key!r}; its options: {s.valid()}")
        check_value(key, value, where)
    if eps is not None:
        check_value("eps", eps, where)
    return s


@dataclass(frozen=True)
class BoundAttack:
    """An attack with its model, options and radius decided: ``bound(x, y) -> x_adv``.

    Attributes:
        spec: what the attack is.
        model: the attacked model (None for a callable bound to its own model).
        options: the options it receives, the run's defaults included, eps excluded.
        eps: the radius, or None for attacks that measure a distance.
        what: the entry point, for messages.
    """

    spec: AttackSpec
    model: nn.Module | None
    options: dict[str, Any] = field(default_factory=dict)
    eps: float | None = None
    what: str = "attack"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def norm(self) -> str:
        norm = self.options.get("norm")
        if norm is None and self.spec.kind == "object":
            norm = "l2" if type(self.spec.target).__name__.endswith("L2") else "linf"
        return str(norm or "linf")

    def at(self, eps: float) -> BoundAttack:
        """The same attack at radius ``eps`` (an eps grid runs one per radius)."""
        check_options(self.spec.target if self.spec.kind != "registered" else self.spec.name,
                      eps=eps, what=self.what)
        return replace(self, eps=float(eps))

    def on(self, model: nn.Module) -> BoundAttack:
        """The same attack against another model (transfer: one per source)."""
        if self.spec.kind == "callable":
            raise RobustkitError(
                f"{self.what}: the callable {self.name!r} is bound to its own model, so it "
                f"cannot attack each source; pass a name, a function (model, x, y, ...) "
                f"or a torchattacks attack")
        return replace(self, model=model)

    def record_options(self) -> dict[str, Any]:
        """The options as a record stores them: with eps where the attack took one."""
        return {**self.options, **({"eps": self.eps} if self.eps is not None else {})}

    def __call__(self, x: Tensor, y: Tensor, index: Tensor | None = None) -> Tensor:
        """The adversarial examples of ``x`` (B, C, H, W) with labels ``y`` (B,).

        ``index`` (B,): the examples' global indices. Given, a robustkit attack with an
        integer ``seed`` draws each example's randomness from a stream seeded by the seed
        and its index (:class:`~robustkit.core.seeding.ExampleSeeds`), so the result does
        not depend on the batch size or on the number of processes.
        """
        kind = self.spec.kind
        kw = self.record_options()
        seed = kw.get("seed")
        if index is not None and kind == "registered" and isinstance(seed, int) \
                and not isinstance(seed, bool):
            kw["seed"] = ExampleSeeds(seed, index)
        if kind == "registered":  # robustkit's attacks check inputs, model and result
            return self.spec.target(self.model, x, y, **kw)
        check_inputs(x, y, what=self.what)
        if self.model is not None:
            model_contract(self.model, x, self.what)
        if kind == "function":
            x_adv = self.spec.target(self.model, x, y, **kw)
        elif kind == "object":
            x_adv = self._torchattacks()(x, y)
        else:
            x_adv = self.spec.target(x, y, **kw)
        if not isinstance(x_adv, torch.Tensor):
            raise RobustkitError(f"{self.what}: attack {self.name!r} returned "
                                 f"{type(x_adv).__name__}, not a tensor")
        x_adv = x_adv.detach()
        return check_result(x_adv, x.detach().to(x_adv.device, x_adv.dtype), eps=self.eps,
                            norm=self.norm if self.eps is not None else None,
                            what=f"attack {self.name!r}")

    def _torchattacks(self) -> Any:
        """A copy of the torchattacks object, set to this model, eps and options (the
        user's object is never changed; the model is shared, not copied)."""
        obj = self.spec.target
        memo = {id(obj.model): obj.model} if getattr(obj, "model", None) is not None else {}
        run = copy.deepcopy(obj, memo)
        if self.model is not None:
            run.set_model(self.model)
        for key, value in self.record_options().items():
            setattr(run, key, value)
        return run


def bind(attack: Any, model: nn.Module | None, options: Mapping[str, Any] | None = None, *,
         eps: float | None = None, defaults: Mapping[str, Any] | None = None,
         what: str = "attack") -> BoundAttack:
    """Turn an attack, the user's options and a radius into ``(x, y) -> x_adv``.

    Args:
        attack: a registered name, ``"package.module:function"``, a function
            ``(model, x, y, **options)``, a torchattacks attack object, or a callable
            ``(x, y) -> x_adv``.
        model: the model to attack (a callable ``(x, y)`` may pass None).
        options: the attack's options, without eps; each must be in its signature.
        eps: the radius; it reaches every attack whose signature takes it, and is an
            error for one that does not.
        defaults: options the run supplies where the attack takes them and the user
            gave none (the run's ``seed``); ignored elsewhere.
        what: the entry point, for messages.

    Returns:
        A :class:`BoundAttack`.
    """
    s = check_options(attack, options, eps=eps, what=what)
    opts = dict(options or {})
    for key, value in (defaults or {}).items():
        if (s.params is not None and key in s.params) and key not in opts:
            opts[key] = value
    missing = sorted(s.required - set(opts) - ({"eps"} if eps is not None else set()))
    if missing:
        raise RobustkitError(
            f"{what}: attack {s.name!r} needs {', '.join(missing)}"
            f"{' (its radius)' if missing == ['eps'] else ''}; give "
            f"{' and '.join(f'{k}=...' for k in missing)}")
    if model is None and s.kind != "callable":
        raise RobustkitError(f"{what}: attack {s.name!r} needs the model to attack")
    return BoundAttack(s, model, opts, None if eps is None else float(eps), what)


__all__ = ["ATTACKS", "AttackSpec", "BoundAttack", "DISTANCE", "bind", "check_options",
           "import_attack", "spec"]
