"""Transfer study on mnist-5k: which source attack transfers, how much surrogate data it
takes, and whether an ensemble of surrogates beats its members.

Three questions, each answered on the 1,000 test images, Linf, with the transfer success
rate among the examples that both the source and the target classify correctly:

A. Source attacks: PGD-20 (random start), MI-FGSM (Dong et al. 2018) and DI-MI-FGSM
   (Xie et al. 2019), 20 steps each, crafted on mlp and on an alexnet surrogate
   trained on 2,000 examples with seed 1, scored on the other models.
B. Surrogate data size: alexnet and mlp surrogates trained on 500, 1,000, 2,000 and
   4,000 examples with seeds 1 and 2 (the target's seed is 0), PGD-20 and DI-MI-FGSM
   at eps 0.2, scored on the alexnet and mlp trained on all 4,000 with seed 0.
C. Ensembles (Liu et al. 2017): mlp + alexnet-2k, and logistic + mlp, as one source,
   against the better of their members on a held-out target (alexnet, seed 0).

Checkpoints live in ``reports/transfer-study/models/`` and are reused, and each part's
results are stored when it finishes, so an interrupted run picks up where it stopped.
Writes ``results.json``, ``README.md`` and heatmaps to ``reports/transfer-study/``.

Usage:
    python experiments/transfer_study.py [--out reports/transfer-study] [--n 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import torch

from robustkit import data, models
from robustkit.report.figures import transfer_heatmaps
from robustkit.train import fit
from robustkit.transfer import Ensemble, transfer_matrix

ATTACKS = {
    "pgd": ("pgd", {"steps": 20, "seed": 0}),
    "mifgsm": ("mifgsm", {"steps": 20, "decay": 1.0, "seed": 0}),
    "di-mifgsm": ("mifgsm", {"steps": 20, "decay": 1.0, "diversity_prob": 0.5, "seed": 0}),
}
SIZES = (500, 1000, 2000, 4000)
SEEDS = (1, 2)


def surrogate(out: Path, arch: str, size: int, seed: int) -> torch.nn.Module:
    """``arch`` trained with its default settings on ``size`` examples (seed ``seed``)."""
    path = out / "models" / f"{arch}-n{size}-s{seed}.pt"
    if path.exists():
        return models.load(path)
    ds = data.spec("mnist-5k")
    train = data.load_tensors("mnist-5k", "train", train_size=size, seed=seed)
    test = data.load_tensors("mnist-5k", "test")
    torch.manual_seed(seed)
    model = models.create(arch, ds.in_shape, ds.num_classes, ds.mean, ds.std)
    cfg = models.default_training(arch)
    print(f"training {path.stem} ...", flush=True)
    history = fit(model, train, test, config=cfg, seed=seed, quiet=True)
    models.save(model, path, dataset="mnist-5k", train_size=size, seed=seed,
                training=dataclasses.asdict(cfg), test_accuracy=history.final_test_accuracy,
                train_seconds=history.seconds)
    return models.load(path)


def stored(results: dict, key: str, path: Path, compute) -> dict:
    """``results[key]``, computed and written to ``path`` (atomically) if missing."""
    if key not in results:
        start = time.perf_counter()
        results[key] = {**compute(), "seconds": time.perf_counter() - start}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, path)
    return results[key]


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="reports/transfer-study")
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    x, y = data.load_tensors("mnist-5k", "test")
    keep = torch.from_numpy(data.stratified_indices(y.numpy(), args.n, seed=0))
    x, y = x[keep], y[keep]

    full = {a: surrogate(out, a, 4000, 0) for a in ("logistic", "mlp", "alexnet")}
    alexnet_2k = surrogate(out, "alexnet", 2000, 1)
    everyone = {**full, "alexnet-2k": alexnet_2k}

    def run(sources, targets, attack, eps):
        name, kw = ATTACKS[attack]
        return transfer_matrix(sources, targets, x, y, attack=name, eps=eps, progress=False,
                               **kw)

    # A. Which source attack transfers best.
    def part_a():
        sources = {"mlp": full["mlp"], "alexnet-2k": alexnet_2k}
        rows = {}
        for attack in ATTACKS:
            for eps, m in run(sources, everyone, attack, [0.1, 0.2]).items():
                rows[f"{attack}@{eps:g}"] = {"accuracy": dict(m), "success": m.success}
        return {"rows": rows}

    a = stored(results, "A_source_attacks", results_path, part_a)

    # B. Surrogate data size.
    def part_b():
        targets = {"alexnet": full["alexnet"], "mlp": full["mlp"]}
        rows = []
        for arch in ("alexnet", "mlp"):
            for size in SIZES:
                for seed in SEEDS:
                    model = surrogate(out, arch, size, seed)
                    acc = model.robustkit_metadata["test_accuracy"]
                    for attack in ("pgd", "di-mifgsm"):
                        m = run({"s": model}, targets, attack, 0.2)
                        rows.append({"arch": arch, "size": size, "seed": seed, "attack": attack,
                                     "surrogate_accuracy": acc,
                                     **{f"success_{t}": m.success["s"][t] for t in targets},
                                     **{f"accuracy_{t}": m["s"][t] for t in targets}})
        return {"rows": rows}

    b = stored(results, "B_surrogate_size", results_path, part_b)

    # C. Ensembles against the better member, on a held-out target.
    def part_c():
        pairs = {"mlp + alexnet-2k": ("mlp", "alexnet-2k"), "logistic + mlp": ("logistic", "mlp")}
        rows = {}
        for label, (p, q) in pairs.items():
            sources = {p: everyone[p], q: everyone[q],
                       label: Ensemble([everyone[p], everyone[q]]).eval()}
            for attack in ("pgd", "di-mifgsm"):
                for eps, m in run(sources, {"alexnet": full["alexnet"]}, attack,
                                  [0.1, 0.2]).items():
                    rows[f"{label} | {attack}@{eps:g}"] = {
                        s: {"success": m.success[s]["alexnet"], "accuracy": m[s]["alexnet"]}
                        for s in sources}
        return {"rows": rows}

    c = stored(results, "C_ensembles", results_path, part_c)

    transfer_heatmaps({float(k.split("@")[1]): v["accuracy"] for k, v in a["rows"].items()
                       if k.startswith("pgd@")}, out / "source_attacks_pgd.png",
                      title="PGD-20 from mlp and alexnet-2k: target accuracy")
    write_readme(out, full, a, b, c)
    print(f"report: {(out / 'README.md').resolve()}")


def write_readme(out: Path, full: dict, a: dict, b: dict, c: dict) -> None:
    lines = ["# Transfer study on mnist-5k", "",
             "Transfer success = share of the test images that both source and target "
             "classify correctly whose adversarial example (crafted on the source) the target "
             "misclassifies. Linf, 20 steps.", "",
             "Clean accuracy of the targets: " + ", ".join(
                 f"{k} {100 * m.robustkit_metadata['test_accuracy']:.1f}%" for k, m in full.items()),
             "", "## A. Which source attack transfers best", ""]
    targets = ["logistic", "mlp", "alexnet", "alexnet-2k"]
    rows = []
    for key, r in a["rows"].items():
        for s, row in r["success"].items():
            rows.append([key.replace("@", " eps "), s,
                         *("white-box " + f"{100 * row[t]:.1f}" if t == s else f"{100 * row[t]:.1f}"
                           for t in targets)])
    lines += table(rows, ["attack", "source", *targets])
    lines += ["", "## B. Surrogate data size (eps 0.2; mean over seeds 1, 2)", ""]
    groups: dict[tuple, list[dict]] = {}
    for r in b["rows"]:
        groups.setdefault((r["arch"], r["attack"], r["size"]), []).append(r)
    rows = []
    for (arch, attack, size), rs in groups.items():
        def ms(key):
            v = [100 * r[key] for r in rs]
            return f"{statistics.mean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0:.1f}"
        rows.append([arch, attack, str(size), ms("surrogate_accuracy"),
                     ms("success_alexnet"), ms("success_mlp")])
    lines += table(rows, ["surrogate", "attack", "train size", "surrogate acc %",
                          "success on alexnet %", "success on mlp %"])
    lines += ["", "## C. Ensembles against their better member (target: alexnet, held out)", ""]
    rows = []
    for key, r in c["rows"].items():
        label = key.split(" | ")[0]
        members = [s for s in r if s != label]
        best = max(members, key=lambda s: r[s]["success"])
        verdict = "yes" if r[label]["success"] >= r[best]["success"] else "**no**"
        rows.append([key.split(" | ")[1].replace("@", " eps "), label,
                     *(f"{100 * r[s]['success']:.1f}" for s in members),
                     f"{100 * r[label]['success']:.1f}", verdict])
    lines += table(rows, ["attack", "ensemble", "member 1 %", "member 2 %", "ensemble %",
                          "ensemble >= better member"])
    (out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
