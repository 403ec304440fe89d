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
from loafing.config import OptionSpec, TrainConfig, check_choice, make_train_config, train_option_specs
from loafing.destruct import MODES
from loafing.errors import LoafingError
from loafing.eval_config import MAX_COMBOS, EvalConfig, eval_option_specs
from loafing.study_checks import (check_keys, entry, fail, folder_name, model_args, read_study_text, run_names, setting,
                                  typed)


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


def _run_settings(path: Path, where: str, table: Any, specs: dict[str, OptionSpec]) -> dict[str, Any]:
    """The run settings of [defaults] or a [[runs]] entry (`where`), each checked; a list is one run per value."""
    settings = {}
    for key in table if isinstance(table, dict) else ():
        if key in NOT_RUN_SETTINGS:
            raise fail(path, entry(where, key), f"is not a run setting here: {NOT_RUN_SETTINGS[key]}")
    valid = [*specs, "model_args"] if where == "defaults" else ["name", *specs, "model_args"]
    for key, value in check_keys(path, where, table, valid).items():
        at = entry(where, key)
        if key == "name":
            continue
        if key == "model_args":  # a table of builder arguments, as --model-arg gives them (a list: one run each)
            settings[key] = ([model_args(path, entry(at, i), v) for i, v in enumerate(value)]
                             if isinstance(value, list) else model_args(path, at, value))
            continue
        if isinstance(value, list):
            if not value:
                raise fail(path, at, "is an empty list (a list means one run per value)")
            settings[key] = [setting(path, entry(at, i), specs[key], v) for i, v in enumerate(value)]
        else:
            settings[key] = setting(path, at, specs[key], value)
    return settings


def _expand(path: Path, where: str, table: Any, defaults: dict[str, Any],
            specs: dict[str, OptionSpec]) -> list[tuple[str, dict[str, Any]]]:
    """The runs of one [[runs]] entry: one per combination of its list values (the entry's own lists first, in file
    order, then the defaults' lists), named by its `name` template, e.g. "st-lam{lam:g}-seed{seed}"."""
    own = _run_settings(path, where, table, specs)
    if "name" not in table:
        raise fail(path, where, "needs a name (a template such as \"ct-seed{seed}\" where a setting is a list)")
    template = typed(path, entry(where, "name"), table["name"], str)
    merged = {**defaults, **own}
    varying = [k for k in own if isinstance(own[k], list)]
    varying += [k for k in defaults if k not in own and isinstance(defaults[k], list)]
    runs = []
    for values in itertools.product(*(merged[k] for k in varying)):
        flat = {**merged, **dict(zip(varying, values))}
        try:
            name = template.format(**{**{s.name: s.default for s in specs.values()}, **flat})
        except (KeyError, IndexError, ValueError) as error:
            problem = f"{{{error.args[0]}}} is not a setting" if isinstance(error, KeyError) else str(error)
            raise fail(path, entry(where, "name"), f"{template!r} cannot be filled in: {problem}") from None
        runs.append((folder_name(path, entry(where, "name"), name, "a run (its folder is out/runs/NAME)"), flat))
    return runs


def _inside(path: Path, table: Any, runs: list[str]) -> InsideSpec:
    """The [inside] table: the networks of one family, this study's runs and checkpoint files."""
    table = check_keys(path, "inside", table, SECTION_KEYS["inside"])
    checkpoints, entries = [], table.get("checkpoints", [])
    if not isinstance(entries, list):
        raise fail(path, "inside.checkpoints", f"must be a list of {{path, model}} tables, got {entries!r}")
    for i, item in enumerate(entries):
        where = entry("inside.checkpoints", i)
        item = check_keys(path, where, item, ("path", "model"))
        if "path" not in item:
            raise fail(path, where, "needs a path (relative to the folder `loafing reproduce` runs in)")
        model = typed(path, entry(where, "model"), item.get("model", ""), str)
        file = typed(path, entry(where, "path"), item["path"], str)
        checkpoints.append(f"{model}={file}" if model else file)
    spec = InsideSpec(run_names(path, "inside.runs", table.get("runs", []), runs), tuple(checkpoints),
                      table.get("dataset"))
    if spec.dataset is not None:
        setting(path, "inside.dataset", next(s for s in train_option_specs() if s.name == "dataset"), spec.dataset)
    if len(spec.runs) + len(spec.checkpoints) < 2:
        raise fail(path, "inside", "needs at least two networks (runs and checkpoints together)")
    return spec


def _evaluation(path: Path, table: Any) -> EvalConfig:
    """The [evaluation] table as an EvalConfig."""
    specs = {s.name: s for s in eval_option_specs()}
    values = {k: setting(path, entry("evaluation", k), specs[k], v)
              for k, v in check_keys(path, "evaluation", table, list(specs)).items()}
    try:
        return EvalConfig(**values)
    except LoafingError as error:
        raise fail(path, "evaluation", str(error)) from None


def _choices(path: Path, where: str, value: Any, what: str, valid: list[str] | tuple[str, ...],
             empty: bool = False) -> tuple[str, ...]:
    """A list of names, each one of `valid` (figures, destruct modes); an empty one only where `empty` allows it."""
    if not isinstance(value, list) or not (value or empty):
        raise fail(path, where, f"must be a {'' if empty else 'non-empty '}list of {what}s; valid choices: "
                                f"{', '.join(valid)}")
    for i, name in enumerate(value):
        try:
            check_choice(what, name, list(valid))
        except LoafingError as error:
            raise fail(path, entry(where, i), str(error)) from None
    return tuple(value)


def _unique(path: Path, expanded: list[tuple[int, str, dict[str, Any]]]) -> None:
    """Refuse two runs of one name, naming the [[runs]] entries that make them."""
    first: dict[str, int] = {}
    for i, name, _ in expanded:
        if name in first:
            where = entry(entry("runs", i), "name")
            raise fail(path, where, f"two runs of this entry are named {name!r} (put the varying settings in the "
                                    "name template)" if first[name] == i else
                       f"two runs are named {name!r} (runs[{first[name]}] and runs[{i}])")
        first[name] = i


def load_study(path: str | Path) -> Preset:
    """The study a TOML file defines; anything wrong in it is a one-line LoafingError naming the file and the entry
    (`runs[2].lam`: arrays count from 0)."""
    path = Path(path)
    try:
        study = tomllib.loads(read_study_text(path))
    except tomllib.TOMLDecodeError as error:
        raise LoafingError(f"{path}: not valid TOML: {error}") from None
    check_keys(path, "", study, TOP_KEYS)
    name = typed(path, "name", study.get("name", path.stem), str)
    folder_name(path, "name", name, "a study (its default folder is reproduce/NAME"
                + ("; without a name key, the file's name is its name)" if "name" not in study else ")"))
    specs = {s.name: s for s in train_option_specs() if s.name not in NOT_RUN_SETTINGS}
    defaults = _run_settings(path, "defaults", study.get("defaults", {}), specs)
    entries = study.get("runs", [])
    if not isinstance(entries, list):
        raise fail(path, "runs", "must be an array of tables ([[runs]] entries)")
    expanded = [(i, run, flat) for i, table in enumerate(entries)
                for run, flat in _expand(path, entry("runs", i), table, defaults, specs)]
    _unique(path, expanded)
    names = [run for _, run, _ in expanded]
    sections = {key: check_keys(path, key, study.get(key, {}), SECTION_KEYS[key]) for key in SECTION_KEYS}
    record = check_keys(path, "record.kl_every", sections["record"].get("kl_every", {}), names)
    kl_spec = next(s for s in train_option_specs() if s.name == "kl_every")
    kl_every = {run: setting(path, entry("record.kl_every", run), kl_spec, value) for run, value in record.items()}
    measured = run_names(path, "measure.runs", sections["measure"]["runs"], names) \
        if "runs" in sections["measure"] else tuple(names)
    destructed = run_names(path, "destruct.runs", sections["destruct"].get("runs", []), names)
    influenced = run_names(path, "influence.runs", sections["influence"].get("runs", []), names)
    modes = _choices(path, "destruct.modes", sections["destruct"].get("modes", list(MODES)), "destruct mode", MODES)
    max_combos = typed(path, "destruct.max_combos", sections["destruct"].get("max_combos", MAX_COMBOS), int)
    if max_combos < 1:
        raise fail(path, "destruct.max_combos", f"must be at least 1, got {max_combos}")
    runs = []
    for i, run, flat in expanded:
        settings = {**flat, **({"kl_every": kl_every[run]} if run in kl_every else {})}
        where = entry("runs", i) + (f" (run {run!r})" if sum(j == i for j, _, _ in expanded) > 1 else "")
        try:
            config = make_train_config(settings)
        except LoafingError as error:
            raise fail(path, where, str(error)) from None
        if run in influenced and config.plan:
            raise fail(path, entry("influence.runs", influenced.index(run)),
                       f"run {run!r} trains a sub-network alone (plan {config.plan!r}); block influence is measured "
                       "on runs of the whole network")
        runs.append(RunSpec(run, config, destruct=run in destructed, measure=run in measured,
                            influence=run in influenced))
    inside = _inside(path, study["inside"], names) if "inside" in study else None
    if not runs and inside is None:
        raise fail(path, "", "a study needs [[runs]] to train or an [inside] evaluation of checkpoints")
    train_images = typed(path, "train_images", study.get("train_images", 0), int)
    if train_images < 0:
        raise fail(path, "train_images", f"must be at least 0, got {train_images}")
    ct_hours = study.get("ct_hours")
    if ct_hours is not None and typed(path, "ct_hours", ct_hours, float) <= 0:
        raise fail(path, "ct_hours", f"must be greater than 0, got {ct_hours}")
    figures = None
    if "figures" in study:
        from loafing.figures import FIGURES  # loads matplotlib: only for a study that names its figures

        figures = _choices(path, "figures", study["figures"], "figure", list(FIGURES), empty=True)
    return Preset(name=name, description=typed(path, "description", study.get("description", ""), str),
                  runs=tuple(runs), evaluation=_evaluation(path, study.get("evaluation", {})), max_combos=max_combos,
                  destruct_modes=modes, inside=inside, figures=figures,
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
