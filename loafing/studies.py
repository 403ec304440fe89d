"""Studies as files: a study's TOML file (the runs to train; what to measure, destruct and record; the evaluation
settings; the figures; the rough cost) read into the `Preset` that `loafing.reproduce` runs.

The built-in studies are the files of the repository's top-level `analyses/` folder, shipped inside the package
(as `loafing/analyses/*.toml`); `analyses/README.md` describes the format.
"""
from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import loafing
import loafing.methods  # noqa: F401  (registers the methods, whose own options a run may set)
from loafing.config import OptionSpec, TrainConfig, check_choice, check_value, make_train_config, train_option_specs
from loafing.destruct import MODES
from loafing.errors import LoafingError
from loafing.eval_config import MAX_COMBOS, EvalConfig, eval_option_specs


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study, and which evaluations follow it."""

    name: str
    config: TrainConfig  # `out` and `run` are set by the study's output folder and `name`
    destruct: bool = False
    measure: bool = True  # every plan of the evaluation's space measured (the trained plan, for a run of one)
    influence: bool = False  # block influence and each block's delete-one drop (`loafing influence`)


@dataclass(frozen=True)
class InsideSpec:
    """Fig. 1 / Tables r5, r6: every smaller network measured inside every bigger one, and each on its own."""

    runs: tuple[str, ...] = ()  # this study's runs, by name
    checkpoints: tuple[str, ...] = ()  # other checkpoint files, "PATH" (loafing's own) or "MODEL=PATH" (foreign)
    dataset: str | None = None  # default: the first network's


@dataclass(frozen=True)
class Preset:
    """A study definition: the runs, how they are evaluated, which figures follow, and what they roughly cost."""

    name: str
    description: str
    runs: tuple[RunSpec, ...]
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    max_combos: int = MAX_COMBOS
    destruct_modes: tuple[str, ...] = MODES
    inside: InsideSpec | None = None
    figures: tuple[str, ...] | None = None  # None: every figure its tables allow
    train_images: int = 0  # size of the training split, for the rough cost of --dry-run
    ct_hours: float | None = None  # the paper's hours for one CT run of this setting (Table r4), if reported


TOP_KEYS = ("name", "description", "train_images", "ct_hours", "figures", "defaults", "runs", "measure", "destruct",
            "influence", "record", "inside", "evaluation")
SECTION_KEYS = {"measure": ("runs",), "destruct": ("runs", "modes", "max_combos"), "influence": ("runs",),
                "record": ("kl_every",), "inside": ("runs", "checkpoints", "dataset")}
# Run settings a study sets elsewhere, and where.
NOT_RUN_SETTINGS = {"kl_every": "set it per run in [record.kl_every]", "out": "each run's folder is out/runs/NAME",
                    "device": "give `loafing reproduce --device`"}
KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _fail(path: Path, where: str, problem: str) -> LoafingError:
    """The one-line error of a study file: which file, where in it, what is wrong."""
    return LoafingError(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")


def _check_keys(path: Path, where: str, table: Any, valid: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`table` itself, once it is a table holding only keys of `valid`."""
    if not isinstance(table, dict):
        raise _fail(path, where, f"must be a table, got {table!r}")
    for key in table:
        if key not in valid:
            raise _fail(path, where, f"unknown key {key!r}; valid keys: {', '.join(valid)}")
    return table


def _typed(path: Path, where: str, key: str, value: Any, kind: type) -> Any:
    """`value` as `kind` (an integer is a number too), or a one-line error naming the key and the kind."""
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        raise _fail(path, where, f"{key} must be {KINDS.get(kind, kind.__name__)}, got {value!r}")
    return value


def _setting(path: Path, where: str, spec: OptionSpec, value: Any) -> Any:
    """One setting checked against its option: type, range, choices."""
    value = _typed(path, where, spec.name, value, spec.kind)
    try:
        check_value(spec.name, value, spec.range, spec.choices, spec.what)
    except LoafingError as error:
        raise _fail(path, where, str(error)) from None
    return value


def _names(path: Path, where: str, value: Any, valid: list[str]) -> tuple[str, ...]:
    """A list of run names, each one of `valid`."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, where, f"must be a list of run names, got {value!r}")
    for name in value:
        if name not in valid:
            raise _fail(path, where, f"unknown run {name!r}; valid choices: {', '.join(valid)}")
    return tuple(value)


def _run_settings(path: Path, where: str, table: dict[str, Any], specs: dict[str, OptionSpec]) -> dict[str, Any]:
    """The run settings of a [defaults] table or a [[runs]] entry, each checked; a list is one run per value."""
    settings = {}
    for key in table if isinstance(table, dict) else ():
        if key in NOT_RUN_SETTINGS:
            raise _fail(path, where, f"{key} is not a run setting here: {NOT_RUN_SETTINGS[key]}")
    valid = [*specs, "model_args"] if where == "[defaults]" else ["name", *specs, "model_args"]
    for key, value in _check_keys(path, where, table, valid).items():
        if key == "name":
            continue
        if key == "model_args":  # a table of builder arguments, as --model-arg gives them (a list: one run each)
            settings[key] = ([_model_args(path, where, v) for v in value] if isinstance(value, list)
                             else _model_args(path, where, value))
            continue
        if isinstance(value, list):
            if not value:
                raise _fail(path, where, f"{key} is an empty list (a list means one run per value)")
            settings[key] = [_setting(path, where, specs[key], v) for v in value]
        else:
            settings[key] = _setting(path, where, specs[key], value)
    return settings


def _model_args(path: Path, where: str, value: Any) -> dict[str, Any]:
    """A run's model_args: a table of a timm / torchvision builder's keyword arguments, each checked."""
    from loafing.models.registry import check_model_args  # torch-free

    if not isinstance(value, dict):
        raise _fail(path, where, f"model_args must be a table such as {{ img_size = 32 }}, got {value!r}")
    try:
        return check_model_args(value)
    except LoafingError as error:
        raise _fail(path, where, str(error)) from None


def _expand(path: Path, where: str, entry: dict[str, Any], defaults: dict[str, Any],
            specs: dict[str, OptionSpec]) -> list[tuple[str, dict[str, Any]]]:
    """The runs of one [[runs]] entry: one per combination of its list values (the entry's own lists first, in file
    order, then the defaults' lists), named by its `name` template, e.g. "st-lam{lam:g}-seed{seed}"."""
    own = _run_settings(path, where, entry, specs)
    template = entry.get("name")
    if not isinstance(template, str) or not template:
        raise _fail(path, where, "needs a name (a template such as \"ct-seed{seed}\" where a setting is a list)")
    merged = {**defaults, **own}
    varying = [k for k in own if isinstance(own[k], list)]
    varying += [k for k in defaults if k not in own and isinstance(defaults[k], list)]
    runs = []
    for values in itertools.product(*(merged[k] for k in varying)):
        flat = {**merged, **dict(zip(varying, values))}
        try:
            name = template.format(**{**{s.name: s.default for s in specs.values()}, **flat})
        except (KeyError, IndexError, ValueError) as error:
            raise _fail(path, where, f"name {template!r} cannot be filled in: {error!r} is not a setting") from None
        runs.append((name, flat))
    return runs


def _inside(path: Path, table: Any, runs: list[str]) -> InsideSpec:
    """The [inside] table: the networks of one family, this study's runs and checkpoint files."""
    table = _check_keys(path, "[inside]", table, SECTION_KEYS["inside"])
    checkpoints, entries = [], table.get("checkpoints", [])
    if not isinstance(entries, list):
        raise _fail(path, "[inside] checkpoints", f"must be a list of {{path, model}} tables, got {entries!r}")
    for i, entry in enumerate(entries, 1):
        where = f"[inside] checkpoint {i}"
        entry = _check_keys(path, where, entry, ("path", "model"))
        if "path" not in entry:
            raise _fail(path, where, "needs a path (relative to the folder `loafing reproduce` runs in)")
        model = _typed(path, where, "model", entry.get("model", ""), str)
        checkpoints.append(f"{model}={_typed(path, where, 'path', entry['path'], str)}" if model else entry["path"])
    spec = InsideSpec(_names(path, "[inside] runs", table.get("runs", []), runs), tuple(checkpoints),
                      table.get("dataset"))
    if spec.dataset is not None:
        _setting(path, "[inside]", next(s for s in train_option_specs() if s.name == "dataset"), spec.dataset)
    if len(spec.runs) + len(spec.checkpoints) < 2:
        raise _fail(path, "[inside]", "needs at least two networks (runs and checkpoints together)")
    return spec


def _evaluation(path: Path, table: Any) -> EvalConfig:
    """The [evaluation] table as an EvalConfig."""
    specs = {s.name: s for s in eval_option_specs()}
    values = {k: _setting(path, "[evaluation]", specs[k], v)
              for k, v in _check_keys(path, "[evaluation]", table, list(specs)).items()}
    try:
        return EvalConfig(**values)
    except LoafingError as error:
        raise _fail(path, "[evaluation]", str(error)) from None


def _figures(path: Path, value: Any) -> tuple[str, ...]:
    """The figures a study draws, each a registered one."""
    from loafing.figures import FIGURES

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, "figures", f"must be a list of figure names, got {value!r}")
    for name in value:
        try:
            check_choice("figure", name, list(FIGURES))
        except LoafingError as error:
            raise _fail(path, "figures", str(error)) from None
    return tuple(value)


def load_study(path: str | Path) -> Preset:
    """The study a TOML file defines; anything wrong in it is a one-line LoafingError naming the file and the key."""
    path = Path(path)
    try:
        study = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise LoafingError(f"cannot read study file {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise LoafingError(f"{path}: not valid TOML: {error}") from None
    _check_keys(path, "", study, TOP_KEYS)
    specs = {s.name: s for s in train_option_specs() if s.name not in NOT_RUN_SETTINGS}
    defaults = _run_settings(path, "[defaults]", study.get("defaults", {}), specs)
    entries = study.get("runs", [])
    if not isinstance(entries, list):
        raise _fail(path, "runs", "must be an array of tables ([[runs]] entries)")
    expanded = [run for i, entry in enumerate(entries, 1) for run in _expand(path, f"[[runs]] {i}", entry, defaults,
                                                                             specs)]
    names = [name for name, _ in expanded]
    for name in names:
        if names.count(name) > 1:
            raise _fail(path, "runs", f"two runs are named {name!r} (put the varying settings in the name template)")
    sections = {key: _check_keys(path, f"[{key}]", study.get(key, {}), SECTION_KEYS[key]) for key in SECTION_KEYS}
    record = _check_keys(path, "[record.kl_every]", sections["record"].get("kl_every", {}), names)
    kl_spec = next(s for s in train_option_specs() if s.name == "kl_every")
    kl_every = {name: _setting(path, "[record.kl_every]", kl_spec, value) for name, value in record.items()}
    measured = _names(path, "[measure] runs", sections["measure"]["runs"], names) \
        if "runs" in sections["measure"] else tuple(names)
    destructed = _names(path, "[destruct] runs", sections["destruct"].get("runs", []), names)
    influenced = _names(path, "[influence] runs", sections["influence"].get("runs", []), names)
    modes = sections["destruct"].get("modes", list(MODES))
    if not isinstance(modes, list) or not modes or any(m not in MODES for m in modes):
        raise _fail(path, "[destruct] modes", f"must be a list of destruct modes; valid choices: {', '.join(MODES)}")
    max_combos = _typed(path, "[destruct]", "max_combos", sections["destruct"].get("max_combos", MAX_COMBOS), int)
    if max_combos < 1:
        raise _fail(path, "[destruct]", f"max_combos must be at least 1, got {max_combos}")
    runs = []
    for name, flat in expanded:
        settings = {**flat, **({"kl_every": kl_every[name]} if name in kl_every else {})}
        try:
            config = make_train_config(settings)
        except LoafingError as error:
            raise _fail(path, f"run {name!r}", str(error)) from None
        if name in influenced and config.plan:
            raise _fail(path, "[influence] runs", f"run {name!r} trains a sub-network alone (plan {config.plan!r}); "
                        "block influence is measured on runs of the whole network")
        runs.append(RunSpec(name, config, destruct=name in destructed, measure=name in measured,
                            influence=name in influenced))
    inside = _inside(path, study["inside"], names) if "inside" in study else None
    if not runs and inside is None:
        raise _fail(path, "", "a study needs [[runs]] to train or an [inside] evaluation of checkpoints")
    ct_hours = study.get("ct_hours")
    train_images = _typed(path, "", "train_images", study.get("train_images", 0), int)
    if train_images < 0 or (ct_hours is not None and _typed(path, "", "ct_hours", ct_hours, float) <= 0):
        raise _fail(path, "", "train_images must be at least 0 and ct_hours greater than 0")
    return Preset(name=_typed(path, "", "name", study.get("name", path.stem), str),
                  description=_typed(path, "", "description", study.get("description", ""), str),
                  runs=tuple(runs), evaluation=_evaluation(path, study.get("evaluation", {})), max_combos=max_combos,
                  destruct_modes=tuple(modes), inside=inside,
                  figures=_figures(path, study["figures"]) if "figures" in study else None,
                  train_images=train_images, ct_hours=None if ct_hours is None else float(ct_hours))


def studies_folder() -> Path:
    """Where the built-in studies are: inside the installed package, else in the source checkout's analyses/."""
    package = Path(loafing.__file__).resolve().parent
    for folder in (package / "analyses", package.parent / "analyses"):
        if any(folder.glob("*.toml")):
            return folder
    raise LoafingError(f"the built-in studies (analyses/*.toml) are missing from this installation ({package})")


def study_names() -> list[str]:
    """The names of the built-in studies (their files' names without .toml), sorted."""
    return sorted(p.stem for p in studies_folder().glob("*.toml"))


def builtin_study(name: str) -> Preset:
    """The built-in study called `name` (the file analyses/NAME.toml)."""
    names = study_names()
    if name not in names:
        raise LoafingError(f"unknown preset {name!r} (a built-in study); valid choices: {', '.join(names)}")
    return load_study(studies_folder() / f"{name}.toml")
