"""What each kind of unit computes. Each returns ``(record, arrays)``.

A record is plain JSON (the tidy row for ``results.json``); arrays are numpy arrays the
report draws (images, attribution maps). Every unit seeds torch itself, so its result does
not depend on the units that ran before it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from robustkit import data, metrics, models
from robustkit.train import predict

if TYPE_CHECKING:
    from robustkit.experiment.config import AttackEntry, ModelEntry
    from robustkit.experiment.runner import Planner

Result = tuple[dict[str, Any], dict[str, np.ndarray] | None]


def _np(t: torch.Tensor) -> np.ndarray:
    """A tensor on any device as a numpy array (for the stored arrays)."""
    return t.detach().cpu().numpy()


def _balanced(planner: Planner, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` class-balanced images from the run's test subset (the same for every model)."""
    x, y = planner.test_set()
    n = min(n, len(y))
    keep = torch.from_numpy(np.sort(data.stratified_indices(_np(y), n, seed=0)))
    return x[keep], y[keep]


def train(planner: Planner, entry: ModelEntry, seed: int) -> Result:
    """Train ``entry`` with ``seed`` (or read its checkpoint) and score it on the test subset."""
    from robustkit.adversarial import checkpoint_metadata
    from robustkit.experiment.config import adversarial_config, train_config
    from robustkit.train import fit

    cfg = planner.cfg
    path = planner.checkpoint(entry.name, seed)
    if not path.exists():  # a checkpoint without its record: a run killed just after saving
        if entry.checkpoint:
            raise FileNotFoundError(f"model {entry.name!r}: checkpoint {path} does not exist")
        ds = data.spec(cfg.dataset)
        tc = train_config(entry)
        train_set = data.load_tensors(cfg.dataset, "train", train_size=entry.train_size,
                                      seed=seed)
        torch.manual_seed(seed)
        model = models.create(entry.architecture, ds.in_shape, ds.num_classes, ds.mean,
                              ds.std, **entry.options)
        # Adversarial entries train on adversarial examples (None: clean images).
        # A run killed during training goes on from the last finished epoch.
        resume = path.with_name(f"{path.name}.resume")
        history = fit(model, train_set, planner.test_set(), config=tc, device=cfg.device,
                      seed=seed, quiet=True, adversarial=adversarial_config(entry),
                      resume=resume)
        models.save(model, path, dataset=cfg.dataset, train_size=len(train_set[1]), seed=seed,
                    training=dataclasses.asdict(tc), train_seconds=history.seconds,
                    device=history.device, amp=history.amp, history=history.epochs,
                    **checkpoint_metadata(history))
        resume.unlink(missing_ok=True)
    model = planner.model(entry.name, seed)
    x, y = planner.test_set()
    meta = model.robustkit_metadata
    spec = model.robustkit_spec
    return {
        "kind": "model", "model": entry.name, "seed": seed, "arch": spec["name"],
        "options": spec.get("options", {}), "checkpoint": str(path),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_size": meta.get("train_size"), "training": meta.get("training"),
        "train_seconds": meta.get("train_seconds"), "history": meta.get("history"),
        "training_method": meta.get("training_method", "standard"),
        "threat_model": meta.get("threat_model"), "guard": meta.get("guard"),
        "clean_accuracy": (predict(model, x).argmax(1) == y).float().mean().item(),
        "architecture": str(model),
    }, None


def attack(planner: Planner, entry: AttackEntry, name: str, seed: int, eps: float) -> Result:
    """One attack at one eps on one model: accuracy, error, confidence, perceptibility."""
    from robustkit.evaluate import adversarial_examples
    from robustkit.experiment.runner import attack_options

    model = planner.model(name, seed)
    x, y = planner.test_set()
    kw = attack_options(entry.attack, entry.options, seed, eps)
    torch.manual_seed(seed)
    x_adv = adversarial_examples(model, x, y, entry.attack, planner.cfg.batch_size, False, **kw)
    return {"kind": "attack", "model": name, "seed": seed, "attack": entry.label,
            "method": entry.attack, "eps": eps, "options": entry.options,
            **_scores(model, x, x_adv, y)}, None


def _scores(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
            ) -> dict[str, Any]:
    """Accuracy and error on the adversarial examples, confidence, and perceptibility."""
    clean_p = predict(model, x).softmax(1)
    adv_p = predict(model, x_adv).softmax(1)
    clean_ok = clean_p.argmax(1) == y
    adv_ok = adv_p.argmax(1) == y
    fooled = clean_ok & ~adv_ok
    conf = adv_p.max(1).values
    norms = metrics.perturbation_norms(x, x_adv)
    psnr, ssim = metrics.psnr(x, x_adv), metrics.ssim(x, x_adv)

    def median(t: torch.Tensor) -> float | None:
        return float(t[fooled].median()) if fooled.any() else None

    return {
        "n": len(y), "clean_accuracy": clean_ok.float().mean().item(),
        "robust_accuracy": (clean_ok & adv_ok).float().mean().item(),
        # Goodfellow et al. 2015's measures: error rate on the adversarial examples and the
        # mean confidence (top softmax probability) of the predictions on them.
        "error_rate": (~adv_ok).float().mean().item(),
        "mean_confidence": conf.mean().item(),
        "mean_confidence_wrong": conf[~adv_ok].mean().item() if (~adv_ok).any() else None,
        "success_rate": fooled.sum().item() / max(1, clean_ok.sum().item()),
        "median_l2": median(norms["l2"]), "median_linf": median(norms["linf"]),
        "median_psnr": median(psnr), "median_ssim": median(ssim),
    }


def examples(planner: Planner, name: str, seed: int) -> Result:
    """A few class-balanced images, attacked, for the imperceptibility grid."""
    from robustkit.evaluate import adversarial_examples
    from robustkit.experiment.runner import attack_options

    sec = planner.cfg.examples
    model = planner.model(name, seed)
    x, y = _balanced(planner, sec.n)
    kw = attack_options(sec.attack, sec.options, seed, sec.eps)
    torch.manual_seed(seed)
    x_adv = adversarial_examples(model, x, y, sec.attack, planner.cfg.batch_size, False, **kw)
    clean_p, adv_p = predict(model, x).softmax(1), predict(model, x_adv).softmax(1)
    arrays = {"x": _np(x), "x_adv": _np(x_adv), "y": _np(y),
              "clean_pred": _np(clean_p.argmax(1)), "clean_conf": _np(clean_p.max(1).values),
              "adv_pred": _np(adv_p.argmax(1)), "adv_conf": _np(adv_p.max(1).values)}
    return {"kind": "examples", "model": name, "seed": seed, "attack": sec.attack, "eps": sec.eps,
            **_scores(model, x, x_adv, y)}, arrays


def minimal(planner: Planner, name: str, seed: int, norm: str) -> Result:
    """Median minimal targeted perturbation per (class, target); images for one target."""
    from robustkit.attacks import minimal_targeted
    from robustkit.evaluate import minimal_table

    sec = planner.cfg.minimal
    model = planner.model(name, seed)
    x, y = _balanced(planner, sec.n)
    torch.manual_seed(seed)
    table = minimal_table(model, x, y, norm=norm, steps=sec.steps, progress=False)
    arrays = None
    if sec.target is not None:  # "turn every digit into a 3": one image per class
        keep = torch.from_numpy(np.unique(_np(y), return_index=True)[1])
        xs, ys = x[keep], y[keep]
        target = torch.full_like(ys, sec.target)
        x_adv, sizes = minimal_targeted(model, xs, target, norm=norm, steps=sec.steps)
        p = predict(model, x_adv).softmax(1)
        arrays = {"x": _np(xs), "x_adv": _np(x_adv), "y": _np(ys),
                  "norm": _np(sizes), "adv_pred": _np(p.argmax(1)),
                  "adv_conf": _np(p.max(1).values)}
    return {"kind": "minimal", "model": name, "seed": seed, "norm": norm, "n": len(y),
            "steps": sec.steps, "target": sec.target, **table}, arrays


def transfer(planner: Planner, source: str, seed: int) -> Result:
    """One source attacked once per eps, scored on every target."""
    import warnings

    from robustkit.experiment.runner import attack_options
    from robustkit.transfer import transfer_matrix

    sec = planner.cfg.transfer
    x, y = planner.test_set()
    targets = {t: planner.model(t, seed) for t in sec.targets}
    kw = attack_options(sec.attack, sec.options, seed, None)
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # judged across sources at report time
        warnings.simplefilter("ignore")
        results = transfer_matrix({source: planner.model(source, seed)}, targets, x, y,
                                  attack=sec.attack, eps=list(sec.eps),
                                  batch_size=planner.cfg.batch_size, progress=False, **kw)
    rows = [{"eps": eps, "accuracy": m[source], "success": m.success[source]}
            for eps, m in results.items()]
    first = next(iter(results.values()))
    clean = {k: v.float().mean().item() for k, v in first.correct.items()}
    return {"kind": "transfer", "source": source, "seed": seed, "attack": sec.attack,
            "options": sec.options, "clean_accuracy": clean, "rows": rows}, None


def explanation(planner: Planner, name: str, seed: int, method: str) -> Result:
    """Attributions on clean and attacked images, their shift, faithfulness, and how much
    the maps look like the digit (Tsipras et al. 2019's perceptual alignment)."""
    from robustkit import explain
    from robustkit.errors import RobustkitError
    from robustkit.evaluate import adversarial_examples
    from robustkit.experiment.runner import attack_options

    sec = planner.cfg.explain
    model = planner.model(name, seed)
    x, y = _balanced(planner, sec.n)
    base = {"kind": "explain", "model": name, "seed": seed, "method": method}
    try:
        clean_map = explain.attribute(model, x, y, method=method)
    except RobustkitError as err:  # e.g. Grad-CAM on a model without convolutions
        return {**base, "skipped": str(err)}, None
    kw = attack_options(sec.attack, sec.options, seed, sec.eps)
    torch.manual_seed(seed)
    x_adv = adversarial_examples(model, x, y, sec.attack, planner.cfg.batch_size, False, **kw)
    adv_map = explain.attribute(model, x_adv, y, method=method)
    shift = explain.explanation_shift(model, x, x_adv, y, method)
    shift.pop("per_example", None)
    record = {**base, "attack": sec.attack, "eps": sec.eps, "n": len(y), "shift": shift,
              # Both maps are judged against the clean digit: x_adv's background holds the
              # perturbation, which follows the gradient by construction.
              "alignment": explain.alignment(clean_map, x).to_dict(per_example=True),
              "alignment_adv": explain.alignment(adv_map, x).to_dict(per_example=True)}
    if sec.faithfulness:
        faith = explain.faithfulness(model, x, y, clean_map, seed=seed)
        record["faithfulness"] = {
            mode: {"auc": faith[mode]["auc"], "random_auc": faith["random"][mode]["auc"]}
            for mode in ("deletion", "insertion") if mode in faith}
    arrays = {"x": _np(x), "x_adv": _np(x_adv), "y": _np(y),
              "clean": _np(clean_map), "adv": _np(adv_map)}
    return record, arrays


def sanity(planner: Planner, name: str, seed: int) -> Result:
    """Adebayo et al. 2018's cascading model-parameter randomization."""
    from robustkit import explain
    from robustkit.errors import RobustkitError

    sec = planner.cfg.explain
    model = planner.model(name, seed)
    x, y = _balanced(planner, sec.n)
    methods = []
    for m in sec.sanity_methods or sec.methods:  # the methods this model supports
        try:
            explain.attribute(model, x[:1], y[:1], method=m)
            methods.append(m)
        except RobustkitError:
            pass
    result = explain.sanity_check(model, x, y, methods, mode="cascading", seed=seed)
    return {"kind": "sanity", "model": name, "seed": seed, "n": len(y),
            "table": {m: list(steps) for m, steps in result.items()},
            "baseline": result.baseline}, None


def validity(planner: Planner, name: str, seed: int) -> Result:
    """Carlini et al. 2019's checks that the evaluation is sound."""
    from robustkit.evaluate import validity_checks

    sec = planner.cfg.validity
    model = planner.model(name, seed)
    x, y = _balanced(planner, sec.n)
    torch.manual_seed(seed)
    report = validity_checks(model, x, y, eps=sec.eps, norm=sec.norm, steps=sec.steps,
                             seed=seed, progress=False)
    return {"kind": "validity", "model": name, "seed": seed, "eps": sec.eps, **report}, None
