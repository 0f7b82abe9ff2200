"""The config surface: every mistake in an experiment config is refused when it is loaded,
before anything trains, with the config file and the field's dotted path in the message.

- BAD: a table of broken configs, each a small edit of a valid one, and the phrase its
  error must hold (the field path first);
- accepted configs: the valid one, a ``module:function`` attack, every shipped experiment;
- a hypothesis fuzz of ``load_experiment`` over TOML files built from the real keys with
  random values: it returns a config or raises RobustkitError, nothing else.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustkit.config import tomllib
from robustkit.errors import RobustkitError
from robustkit.experiment import ExperimentConfig, load_experiment

REPO = Path(__file__).resolve().parents[1]

VALID = """
name = "base"
dataset = "mnist-5k"
seeds = [0]
n_test = 20
batch_size = 50

[[models]]
name = "lin"
arch = "logistic"

[[models]]
name = "net"
arch = "mlp"
options = { hidden = [8] }
train = { epochs = 1 }

[[attacks]]
attack = "pgd"
eps = [0.1, 0.2]
options = { steps = 2 }

[[attacks]]
name = "fast"
attack = "fgsm"
eps = [0.1]

[transfer]
sources = ["lin"]
targets = ["net"]
eps = [0.1]
options = { steps = 3 }

[examples]
attack = "pgd"
eps = 0.1
n = 2
options = { steps = 4 }

[minimal]
n = 4
steps = 5
target = 3

[explain]
methods = ["saliency"]
n = 2
eps = 0.1
options = { steps = 5 }

[validity]
eps = 0.1
steps = 2
n = 10

[[references]]
claim = "error rate"
value = 0.5
source = "a paper"
model = "lin"
attack = "fast"
eps = 0.1
metric = "error_rate"
"""

#: A module with an attack of robustkit's signature, for ``module:function`` configs.
ATTACK_MODULE = '''
def shift(model, x, y, *, eps, steps=1):
    """Move every pixel up by eps (clipped): inside the Linf ball of radius eps."""
    return (x + eps).clamp(0, 1)
'''


def edit(old: str, new: str, count: int = 1):
    """A change of the valid config: ``old`` (which must be there) replaced by ``new``."""
    def apply(text: str) -> str:
        assert old in text, f"the valid config has no {old!r}"
        return text.replace(old, new, count)
    return apply


def append(extra: str):
    return lambda text: text + textwrap.dedent(extra)


def prepend(extra: str):
    return lambda text: textwrap.dedent(extra) + text


ATTACK0 = 'attack = "pgd"\neps = [0.1, 0.2]\noptions = { steps = 2 }'
FAST = 'name = "fast"\nattack = "fgsm"\neps = [0.1]'
LIN = 'name = "lin"\narch = "logistic"'
NET_OPTIONS = "options = { hidden = [8] }"

#: (id, change of the valid config, phrase the error must hold).
BAD = [
    ("attack option typo", edit(ATTACK0, ATTACK0.replace("steps", "stepz")),
     "experiment.attacks[0].options.stepz: attack 'pgd' takes no option 'stepz'; its options:"),
    ("fgsm with steps", edit(FAST, FAST + "\noptions = { steps = 5 }"),
     "experiment.attacks[1].options.steps: attack 'fgsm' takes no option 'steps'"),
    ("deepfool with an eps list", edit(ATTACK0, ATTACK0.replace('"pgd"', '"deepfool"')),
     "experiment.attacks[0].eps: attack 'deepfool' measures a distance"),
    ("cw_l2 in transfer", edit("[transfer]\n", '[transfer]\nattack = "cw_l2"\n'),
     "experiment.transfer.eps: attack 'cw_l2' measures a distance"),
    ("deepfool in examples", edit('[examples]\nattack = "pgd"', '[examples]\nattack = "deepfool"'),
     "experiment.examples.eps: attack 'deepfool' measures a distance"),
    ("eps inf", edit("eps = [0.1, 0.2]", "eps = [0.1, inf]"),
     "experiment.attacks[0].eps[1]: must be a finite radius >= 0, got inf"),
    ("eps nan", edit("eps = [0.1, 0.2]", "eps = [nan, 0.2]"),
     "experiment.attacks[0].eps[0]: must be a finite radius >= 0, got nan"),
    ("eps negative", edit("eps = [0.1, 0.2]", "eps = [0.1, -0.2]"),
     "experiment.attacks[0].eps[1]: must be a finite radius >= 0, got -0.2"),
    ("eps empty", edit("eps = [0.1, 0.2]", "eps = []"),
     "experiment.attacks[0].eps: must hold at least one radius"),
    ("eps repeated", edit("eps = [0.1, 0.2]", "eps = [0.1, 0.1000000001]"),
     "experiment.attacks[0].eps: radii repeat"),
    ("eps in options", edit(ATTACK0, ATTACK0.replace("steps = 2", "steps = 2, eps = 0.3")),
     "experiment.attacks[0].options.eps: attack 'pgd': give eps as the radius"),
    ("seed in options", edit(ATTACK0, ATTACK0.replace("steps = 2", "seed = 3")),
     "experiment.attacks[0].options.seed: the run seeds every attack"),
    ("targeted attack", edit(ATTACK0, ATTACK0.replace("steps = 2", "targeted = true")),
     "experiment.attacks[0].options.targeted: a run scores untargeted attacks"),
    ("steps 0", edit(ATTACK0, ATTACK0.replace("steps = 2", "steps = 0")),
     "experiment.attacks[0].options.steps: attack 'pgd': steps must be an integer >= 1"),
    ("norm l3 in options", edit(ATTACK0, ATTACK0.replace("steps = 2", 'norm = "l3"')),
     "experiment.attacks[0].options.norm: attack 'pgd': norm must be one of"),
    ("option value is a table", edit(ATTACK0, ATTACK0.replace("steps = 2", "steps = { a = 1 }")),
     "experiment.attacks[0].options.steps: expected a number, string or boolean, got dict"),
    ("explain option typo", edit("options = { steps = 5 }", "options = { stepz = 5 }"),
     "experiment.explain.options.stepz: attack 'pgd' takes no option 'stepz'"),
    ("batch_size 0", edit("batch_size = 50", "batch_size = 0"),
     "experiment.batch_size: must be positive, got 0"),
    ("n_test -1", edit("n_test = 20", "n_test = -1"), "experiment.n_test: must be positive"),
    ("n_test 1.5", edit("n_test = 20", "n_test = 1.5"), "experiment.n_test: expected int"),
    ("seeds [-1]", edit("seeds = [0]", "seeds = [-1]"),
     "experiment.seeds[0]: must be an integer in [0, 2**32), got -1"),
    ("seeds ['a']", edit("seeds = [0]", 'seeds = ["a"]'), "experiment.seeds[0]: expected int"),
    ("seeds 2**40", edit("seeds = [0]", "seeds = [1099511627776]"), "experiment.seeds[0]"),
    ("seeds repeated", edit("seeds = [0]", "seeds = [1, 1]"),
     "experiment.seeds: must not repeat"),
    ("seeds empty", edit("seeds = [0]", "seeds = []"), "experiment.seeds: must hold at least one"),
    ("minimal target 10 for mnist", edit("target = 3", "target = 10"),
     "experiment.minimal.target: must be a class of mnist-5k, in [0, 10), got 10"),
    ("minimal target -1", edit("target = 3", "target = -1"),
     "experiment.minimal.target: must be a class >= 0"),
    ("minimal steps 0", edit("steps = 5\ntarget", "steps = 0\ntarget"),
     "experiment.minimal.steps: must be positive"),
    ("minimal norm l1", edit("[minimal]\n", '[minimal]\nnorms = ["l1"]\n'),
     "experiment.minimal.norms: must be l2 and/or linf"),
    ("experiment name ..", edit('name = "base"', 'name = ".."'),
     "experiment.name: '..' is not a safe folder name"),
    ("experiment name .", edit('name = "base"', 'name = "."'),
     "experiment.name: '.' is not a safe folder name"),
    ("experiment name empty", edit('name = "base"', 'name = ""'),
     "experiment.name: must be a non-empty name"),
    ("experiment name with a bell", edit('name = "base"', 'name = "a\\u0007b"'),
     "experiment.name: 'a\\x07b' is not a safe folder name"),
    ("experiment name with a backslash", edit('name = "base"', 'name = "a\\\\b"'),
     "experiment.name:"),
    ("model name with /", edit(LIN, LIN.replace('"lin"', '"a/b"')),
     "experiment.models[0].name: 'a/b' is not a safe folder name"),
    ("model name with NUL", edit(LIN, LIN.replace('"lin"', '"a\\u0000b"')),
     "experiment.models[0].name: 'a\\x00b' is not a safe folder name"),
    ("model name ..", edit(LIN, LIN.replace('"lin"', '".."')),
     "experiment.models[0].name: '..' is not a safe folder name"),
    ("model name of 200 bytes", edit(LIN, LIN.replace('"lin"', '"' + "m" * 200 + '"')),
     "experiment.models[0].name: 'mmmmmmmmmmmmmmmmmmmm'... is 200 bytes long; names are at most "
     "100 bytes"),
    ("model name that encodes too long", edit(LIN, LIN.replace('"lin"', '"' + "<" * 90 + '"')),
     "experiment.models[0].name: '<<<<<<<<<<<<<<<<<<<<'... takes 270 bytes as a file name"),
    ("duplicate model names", edit('name = "net"', 'name = "lin"'),
     "experiment.models: names must be unique, repeated: ['lin']"),
    ("duplicate attack names", edit('name = "fast"', 'name = "pgd"'),
     "experiment.attacks: names must be unique"),
    ("attack name ..", edit('name = "fast"', 'name = ".."'),
     "experiment.attacks[1].name: '..' is not a safe folder name"),
    ("unknown arch", edit('arch = "logistic"', 'arch = "resnet"'),
     "experiment.models[0].arch: unknown model 'resnet'"),
    ("unknown model option", edit(NET_OPTIONS, "options = { hiden = [8] }"),
     "experiment.models[1].options.hiden: model 'mlp' takes no option 'hiden'; its options: "
     "hidden, activation, dropout"),
    ("bad model option value", edit(NET_OPTIONS, "options = { dropout = 2.0 }"),
     "experiment.models[1].options: dropout must be in [0, 1), got 2.0"),
    ("huge model built on nothing", edit(NET_OPTIONS, 'options = { hidden = [1000000000000], '
                                         'activation = "nope" }'),
     "experiment.models[1].options: unknown activation 'nope'"),
    ("train typo", edit("train = { epochs = 1 }", "train = { epochz = 1 }"),
     "experiment.models[1].train.epochz: unknown key"),
    ("train lr inf", edit("train = { epochs = 1 }", "train = { lr = inf }"),
     "experiment.models[1].train.lr: learning rate must be positive and finite"),
    ("train_size 0", edit(LIN, LIN + "\ntrain_size = 0"),
     "experiment.models[0].train_size: must be positive"),
    ("adversarial eps inf", edit(NET_OPTIONS, NET_OPTIONS + "\nadversarial = { eps = inf }"),
     "experiment.models[1].adversarial.eps: must be a finite radius > 0"),
    ("missing checkpoint", edit(LIN, 'name = "lin"\ncheckpoint = "nope/lin.pt"'),
     "experiment.models[0].checkpoint: checkpoint nope/lin.pt does not exist"),
    ("checkpoint with arch", edit(LIN, LIN + '\ncheckpoint = "lin.pt"'),
     "experiment.models[0].arch: does not apply to a model read from a checkpoint"),
    ("unknown method", edit('methods = ["saliency"]', 'methods = ["saliency", "telepathy"]'),
     "experiment.explain.methods[1]: unknown method 'telepathy'; valid methods:"),
    ("unknown sanity method", edit('methods = ["saliency"]',
                                   'methods = ["saliency"]\nsanity_methods = ["x"]'),
     "experiment.explain.sanity_methods[0]: unknown method 'x'"),
    ("repeated method", edit('methods = ["saliency"]', 'methods = ["saliency", "saliency"]'),
     "experiment.explain.methods: must not repeat"),
    ("unknown dataset", edit('dataset = "mnist-5k"', 'dataset = "imagenet"'),
     "experiment.dataset: unknown dataset 'imagenet'"),
    ("unknown device", edit('dataset = "mnist-5k"', 'dataset = "mnist-5k"\ndevice = "tpu"'),
     "experiment.device: device must be one of"),
    ("validity norm l3", edit("[validity]\n", '[validity]\nnorm = "l3"\n'),
     "experiment.validity.norm: must be one of linf, l2, got 'l3'"),
    ("validity eps inf", edit("eps = 0.1\nsteps = 2", "eps = inf\nsteps = 2"),
     "experiment.validity.eps: must be a finite radius > 0, got inf"),
    ("validity steps 0", edit("eps = 0.1\nsteps = 2", "eps = 0.1\nsteps = 0"),
     "experiment.validity.steps: must be positive"),
    ("examples n 0", edit("n = 2\noptions = { steps = 4 }", "n = 0\noptions = { steps = 4 }"),
     "experiment.examples.n: must be positive"),
    ("examples eps negative", edit("eps = 0.1\nn = 2\noptions = { steps = 4 }",
                                   "eps = -1\nn = 2\noptions = { steps = 4 }"),
     "experiment.examples.eps: must be a finite radius >= 0"),
    ("unknown top-level key", prepend("bogus = 1\n"), "experiment.bogus: unknown key"),
    ("unknown section key", edit("[validity]\n", "[validity]\nbogus = 1\n"),
     "experiment.validity.bogus: unknown key"),
    ("unknown model in a section", edit('targets = ["net"]', 'targets = ["ghost"]'),
     "experiment.transfer.targets[0]: unknown model 'ghost'"),
    ("repeated model in a section", edit('targets = ["net"]', 'targets = ["net", "net"]'),
     "experiment.transfer.targets: must not repeat"),
    ("module:function that does not exist", edit(FAST, FAST.replace('"fgsm"', '"no_such_mod:f"')),
     "experiment.attacks[1].attack: cannot import attack 'no_such_mod:f'"),
    ("module:function malformed", edit(FAST, FAST.replace('"fgsm"', '"a:b:c"')),
     "experiment.attacks[1].attack: 'a:b:c' is not 'package.module:function'"),
    ("module:function relative", edit(FAST, FAST.replace('"fgsm"', '".mod:f"')),
     "experiment.attacks[1].attack: '.mod:f' is not 'package.module:function'"),
    ("unknown attack", edit(FAST, FAST.replace('"fgsm"', '"fsgm"')),
     "experiment.attacks[1].attack: unknown attack 'fsgm'"),
    ("reference value nan", edit("value = 0.5", "value = nan"),
     "experiment.references[0].value: must be finite"),
    ("reference to an unknown attack", edit('attack = "fast"\neps = 0.1\nmetric',
                                            'attack = "slow"\neps = 0.1\nmetric'),
     "experiment.references[0].attack: unknown attack 'slow'"),
    ("no models", lambda t: t.split("[[models]]")[0] + "[[attacks]]" + t.split("[[attacks]]", 1)[1],
     "experiment.models: required, but missing"),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_valid_config_loads(tmp_path):
    cfg = load_experiment(write(tmp_path, VALID))
    assert [m.name for m in cfg.models] == ["lin", "net"]
    assert cfg.attacks[0].eps == [0.1, 0.2] and cfg.minimal.target == 3


@pytest.mark.parametrize("change, phrase", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_config_is_refused_naming_the_field(tmp_path, change, phrase):
    path = write(tmp_path, change(VALID))
    with pytest.raises(RobustkitError) as info:
        load_experiment(path)
    message = str(info.value)
    assert message.startswith(f"{path}: experiment."), message
    assert phrase.split(": ", 1)[0] in message and phrase in message, message


def test_the_table_is_large_enough():
    assert len(BAD) >= 30


def test_a_module_function_attack_is_accepted_and_checked(tmp_path, monkeypatch):
    (tmp_path / "rk_user_attacks.py").write_text(ATTACK_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    fast = 'name = "fast"\nattack = "rk_user_attacks:shift"\neps = [0.1]\noptions = { steps = 2 }'
    cfg = load_experiment(write(tmp_path, VALID.replace(FAST, fast)))
    assert cfg.attacks[1].attack == "rk_user_attacks:shift"
    wrong = fast.replace("steps = 2", "stepz = 2")
    with pytest.raises(RobustkitError, match=r"experiment\.attacks\[1\]\.options\.stepz: .*"
                                             r"takes no option 'stepz'; its options: eps, steps"):
        load_experiment(write(tmp_path, VALID.replace(FAST, wrong)))


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_experiment_loads(path):
    assert isinstance(load_experiment(path), ExperimentConfig)


# -- fuzzing ---------------------------------------------------------------------------
def toml_value(value) -> str:
    """``value`` as a TOML value (inline tables and arrays; NaN and inf as TOML spells them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_string(str(k))} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(type(value))


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's, with characters outside the BMP written as themselves
    (JSON would write surrogate pairs) and DEL escaped (TOML forbids it raw)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_document(doc: dict) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


NAMES = ["lin", "net", "a", "..", ".", "", "a/b", "m" * 120, "x\u0000", "ok name"]
ATTACK_NAMES = ["fgsm", "pgd", "bim", "mifgsm", "deepfool", "cw_l2", "nope",
                "zz_fuzz_nomod:f", "a:b:c", ""]
OPTION_KEYS = ["steps", "alpha", "norm", "eps", "seed", "targeted", "restarts", "random_start",
               "decay", "c", "kappa", "overshoot", "bogus"]
scalars = st.one_of(st.integers(-3, 12), st.integers(), st.booleans(),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["linf", "l2", "l3", "relu", "", "x"]), st.text(max_size=8))
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
numbers = st.one_of(st.integers(-2, 50), st.floats(allow_nan=True, allow_infinity=True))
eps_lists = st.lists(st.one_of(st.floats(0, 1), numbers), max_size=4)
names = st.one_of(st.sampled_from(NAMES), st.text(max_size=12))
model_lists = st.lists(st.sampled_from(["lin", "net", "ghost"]), max_size=3)
attack_options = st.dictionaries(st.sampled_from(OPTION_KEYS), scalars, max_size=3)


def maybe_anything(strategy):
    """Mostly ``strategy``, sometimes any value at all (a wrong type)."""
    return st.one_of(strategy, strategy, strategy, anything)


def table(required: dict, optional: dict):
    return maybe_anything(st.fixed_dictionaries(
        {k: maybe_anything(v) for k, v in required.items()},
        optional={k: maybe_anything(v) for k, v in optional.items()}))


model_entry = table({"name": names}, {
    "arch": st.sampled_from(["logistic", "mlp", "alexnet", "resnet", ""]),
    "checkpoint": st.sampled_from(["", "missing.pt", "x" * 300]),
    "train_size": numbers,
    "options": st.dictionaries(st.sampled_from(["hidden", "dropout", "activation", "channels",
                                                "hiden"]), anything, max_size=2),
    "train": st.dictionaries(st.sampled_from(["epochs", "lr", "loss", "augment", "epochz"]),
                             scalars, max_size=2),
    "adversarial": st.dictionaries(st.sampled_from(["method", "eps", "steps", "norm"]),
                                   scalars, max_size=2)})
attack_entry = table({"attack": st.sampled_from(ATTACK_NAMES), "eps": eps_lists}, {
    "name": names, "options": attack_options, "models": model_lists})
single_attack = {"attack": st.sampled_from(ATTACK_NAMES), "eps": numbers,
                 "options": attack_options, "n": numbers, "models": model_lists}
sections = {
    "transfer": table({"sources": model_lists, "targets": model_lists, "eps": eps_lists},
                      {"attack": st.sampled_from(ATTACK_NAMES), "options": attack_options}),
    "examples": table({}, single_attack),
    "minimal": table({}, {"n": numbers, "steps": numbers, "target": numbers,
                          "norms": st.lists(st.sampled_from(["l2", "linf", "l1"]), max_size=3),
                          "models": model_lists}),
    "explain": table({"methods": st.lists(st.sampled_from(["saliency", "gradcam", "telepathy"]),
                                          max_size=3)},
                     {**single_attack, "faithfulness": st.booleans(), "sanity": st.booleans()}),
    "validity": table({}, {"eps": numbers, "steps": numbers, "norm": st.sampled_from(
        ["linf", "l2", "l3"]), "n": numbers, "models": model_lists}),
    "blackbox": table({}, {"oracles": model_lists, "seed_n": numbers, "rounds": numbers,
                           "lam": numbers, "eps": eps_lists, "square_queries": st.lists(numbers, max_size=2),
                           "attack": st.sampled_from(ATTACK_NAMES + ["autoattack"]),
                           "options": attack_options, "arch_options": anything,
                           "seed_labels": st.sampled_from(["attacker", "oracle", "x"])}),
    "references": st.lists(table({"claim": st.text(max_size=5), "value": numbers,
                                  "source": st.text(max_size=5)},
                                 {"model": names, "attack": names, "eps": numbers}), max_size=2),
}
random_configs = st.fixed_dictionaries(
    {"name": maybe_anything(names), "models": maybe_anything(st.lists(model_entry, max_size=3))},
    optional={"dataset": maybe_anything(st.sampled_from(["mnist-5k", "mnist", "imagenet"])),
              "seeds": maybe_anything(st.lists(numbers, max_size=3)),
              "n_test": maybe_anything(numbers), "batch_size": maybe_anything(numbers),
              "device": maybe_anything(st.sampled_from(["auto", "cpu", "cuda:x", "tpu", ""])),
              "description": maybe_anything(st.text(max_size=10)),
              "attacks": maybe_anything(st.lists(attack_entry, max_size=3)), **sections})

#: Places in the valid config and what may be put there (often a valid value).
small = st.one_of(st.integers(1, 8), numbers)
radii = st.one_of(st.floats(0, 0.5), numbers)
PLACES = {
    ("name",): names, ("dataset",): st.sampled_from(["mnist-5k", "fashion-mnist", "nope"]),
    ("seeds",): st.lists(st.one_of(st.integers(0, 5), numbers), max_size=3),
    ("n_test",): small, ("batch_size",): small,
    ("device",): st.sampled_from(["auto", "cpu", "cuda:x", "tpu"]),
    ("models", 0, "name"): names, ("models", 1, "arch"): st.sampled_from(["mlp", "alexnet", "x"]),
    ("models", 1, "options"): model_entry.map(lambda m: m.get("options", {})
                                              if isinstance(m, dict) else m),
    ("models", 1, "train"): st.dictionaries(st.sampled_from(["epochs", "lr", "augment"]),
                                            st.one_of(small, st.sampled_from(["shift", "no"]))),
    ("models", 0, "train_size"): small, ("models", 0, "checkpoint"): st.just("missing.pt"),
    ("models", 1, "adversarial"): st.dictionaries(st.sampled_from(["method", "eps", "steps"]),
                                                  st.one_of(radii, st.just("pgd"))),
    ("attacks", 0, "attack"): st.sampled_from(ATTACK_NAMES), ("attacks", 0, "eps"): eps_lists,
    ("attacks", 0, "options"): attack_options, ("attacks", 1, "name"): names,
    ("attacks", 0, "models"): model_lists,
    ("transfer", "attack"): st.sampled_from(ATTACK_NAMES), ("transfer", "eps"): eps_lists,
    ("transfer", "options"): attack_options, ("transfer", "sources"): model_lists,
    ("examples", "attack"): st.sampled_from(ATTACK_NAMES), ("examples", "eps"): radii,
    ("examples", "n"): small, ("examples", "options"): attack_options,
    ("minimal", "target"): st.integers(-2, 12), ("minimal", "steps"): small,
    ("minimal", "norms"): st.lists(st.sampled_from(["l2", "linf", "l1"]), max_size=3),
    ("explain", "methods"): st.lists(st.sampled_from(["saliency", "gradcam", "nope"]),
                                     max_size=3),
    ("explain", "eps"): radii, ("explain", "options"): attack_options,
    ("validity", "norm"): st.sampled_from(["linf", "l2", "l3"]), ("validity", "eps"): radii,
    ("validity", "steps"): small, ("references", 0, "value"): numbers,
    ("references", 0, "attack"): st.sampled_from(["fast", "pgd", "nope"]),
}


@st.composite
def mutated_configs(draw):
    """The valid config with one to three places changed (or removed)."""
    doc = tomllib.loads(VALID)
    places = draw(st.lists(st.sampled_from(sorted(PLACES, key=str)), min_size=1, max_size=3,
                           unique=True))
    for place in places:
        parent = doc
        for step in place[:-1]:
            parent = parent[step]
        if draw(st.integers(0, 9)) == 0:
            parent.pop(place[-1], None)
        else:
            parent[place[-1]] = draw(maybe_anything(PLACES[place]))
    return doc


configs = st.one_of(mutated_configs(), mutated_configs(), mutated_configs(), random_configs)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=configs)
def test_fuzzed_configs_load_or_are_refused(tmp_path, doc):
    path = tmp_path / "fuzz.toml"
    path.write_text(toml_document(doc), encoding="utf-8")
    try:
        cfg = load_experiment(path)
    except RobustkitError as err:
        assert str(path) in str(err), err  # every refusal names the file
    else:
        assert isinstance(cfg, ExperimentConfig)
        names_ = [m.name for m in cfg.models]
        assert len(set(names_)) == len(names_) and all(n not in (".", "..") for n in names_)
        assert all(math.isfinite(e) and e >= 0 for a in cfg.attacks for e in a.eps)
