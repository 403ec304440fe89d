"""TrainConfig: everything that defines a training run, its defaults, and the range of every setting.

This is the one source of the training defaults: `loafing train`'s options are generated from these
fields (help text, choices, ranges in each field's metadata), and `validate_config` checks a config
built in Python against the same metadata.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from loafing.errors import LoafingError


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: bounds (None: unbounded), each open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    text: str = ""  # how the range reads in an error message, where the bounds alone say it badly

    def contains(self, value: float) -> bool:
        """Whether `value` lies in the range."""
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def __str__(self) -> str:
        if self.text:
            return self.text
        if self.high is None and self.low is not None:
            return f"{'greater than' if self.low_open else 'at least'} {self.low:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"in {left}{low}, {high}{right}"


AMP_DTYPES = {"none": None, "bf16": "bfloat16", "fp16": "float16"}  # --amp -> torch dtype name
AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
SEED = Range(0, 2**63 - 1, text="an integer from 0 to 2^63 - 1")


def check_number(flag: str, value: float, allowed: Range | None) -> None:
    """Raise a one-line LoafingError unless `value` is finite and in `allowed`."""
    if isinstance(value, float) and not math.isfinite(value):
        raise LoafingError(f"{flag} must be a finite number, got {value}")
    if allowed is not None and not allowed.contains(value):
        raise LoafingError(f"{flag} must be {allowed}, got {value}")


def check_choice(what: str, value: str, names: list[str]) -> None:
    """Raise a one-line LoafingError naming the valid choices unless `value` is one of `names`."""
    if value not in names:
        raise LoafingError(f"unknown {what} {value!r}; valid choices: {', '.join(names)}")


def _registry(name: str) -> Callable[[], list[str]]:
    """The names registered in one of the toolkit's registries, looked up when asked (imports stay lazy)."""
    def names() -> list[str]:
        if name == "models":
            from loafing.models import MODELS
            return list(MODELS)
        if name == "datasets":
            from loafing.data import DATASETS
            return list(DATASETS)
        if name == "methods":
            from loafing.methods import METHODS
            return list(METHODS)
        if name == "sampling":
            from loafing.plans import SAMPLING_RULES
            return list(SAMPLING_RULES)
        if name == "sd_modes":
            from loafing.baselines import SD_MODES
            return list(SD_MODES)
        from loafing.methods import ST_LOSSES
        return list(ST_LOSSES)
    return names


def option(default: Any, help: str, *, range: Range | None = None, choices: Callable[[], list[str]] | None = None,
           what: str = "", cli: bool = True) -> Any:
    """A config field with the metadata the command line and `validate_config` read (`what` names its choices)."""
    return field(default=default, metadata={"help": help, "range": range, "choices": choices, "what": what,
                                            "cli": cli})


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved next to its results. Defaults: paper Sec. 6 (CIFAR)."""

    model: str = option("mobilenet_v3_large", "Registered model (see `loafing models`).",
                        choices=_registry("models"), what="model")
    width_mult: float = option(1.0, "Width multiplier (models that support it; see `loafing models`).",
                               range=POSITIVE)
    dataset: str = option("digits", "Data set.", choices=_registry("datasets"), what="dataset")
    data_dir: str | None = option(None, "Folder holding the data set.")
    download: bool = option(False, "Download the data set if missing (needs network).")
    image_size: int | None = option(None, "Side of the input images; default: the model's recipe (32 for CIFAR-style "
                                    "models, 224 for ImageNet-style ones; digits are always 32).", range=AT_LEAST_1)
    train_size: int | None = option(None, "Train on a seeded subset of this many training images (chosen by --seed).",
                                    range=AT_LEAST_1)
    method: str = option("ct", "Training method (see `loafing methods`).", choices=_registry("methods"), what="method")
    lam: float = option(1.0, "ST: weight of the KL loss (paper Eq. 1).", range=NON_NEGATIVE)
    epochs: int = option(30, "Training epochs (the paper: 500 on CIFAR).", range=AT_LEAST_1)
    batch_size: int = option(64, "Mini-batch size (under torchrun: the global one, split evenly over the "
                             "processes).", range=AT_LEAST_1)
    lr: float = option(0.05, "Initial learning rate (cosine decay to 0).", range=POSITIVE)
    weight_decay: float = option(3e-5, "SGD weight decay.", range=NON_NEGATIVE)
    momentum: float = option(0.9, "SGD momentum.", range=Range(0, 1, high_open=True))
    bn_momentum: float | None = option(None, "BN running-statistics momentum; default: the model's own "
                                       "(torchvision's MobileNetV3: 0.01).", range=Range(0, 1, low_open=True))
    channels_last: bool = option(False, "Train with NHWC activations (about 2x faster on CPU for MobileNetV3).")
    amp: str = option("none", "Mixed precision: none | bf16 | fp16 (autocast; fp16 with a gradient scaler). The "
                      "evaluations stay in float32.", choices=lambda: list(AMP_DTYPES), what="precision")
    data_on_device: bool = option(False, "Keep the whole training split on the device (uint8 images) and crop and flip "
                                  "there per batch, with no loader processes (digits, CIFAR and other small images "
                                  "at their stored size).")
    sync_bn: bool = option(False, "Under torchrun on GPUs: normalize with the batch statistics of all processes "
                           "(SyncBatchNorm); default: each process's own.")
    seed: int = option(0, "Seed of initialization, data order, ST sampling and the evaluation subsets.", range=SEED)
    device: str = option("auto", "auto | cpu | cuda | cuda:N.")
    workers: int = option(0, "DataLoader worker processes.", range=NON_NEGATIVE)
    eval_batch_size: int = option(256, "Batch size of the evaluations.", range=AT_LEAST_1)
    calib_size: int = option(500, "Training images recalibrating BN for the per-epoch test accuracy and the "
                             "KL trajectory.", range=AT_LEAST_1)
    plan: str | None = option(None, 'Train this sub-network alone (CT), e.g. "[1] [3,4] [6,7,8] [10] [12,13]".')
    space_size: int | None = option(None, "ST: sample from a seeded subset of this many ordered plans (always the "
                                    "smallest and the main).")
    space_seed: int = option(0, "ST: seed choosing the restricted space's plans.", range=SEED)
    st_step: str = option("shared", "ST: shared (common prefix once, then the blocks both networks run on the two "
                          "batches stacked) | simple (two full forwards).", choices=_registry("st_losses"),
                          what="ST step")
    sampling: str = option("ordered", "ST: sampling rule (paper Sec. 3.3): ordered (per stage the first d blocks) | "
                           "stochastic (per stage any subset of the skippable blocks, order kept) | raw (Veit et al.'s "
                           "paths: each skippable block runs its residual branch alone or not at all).",
                           choices=_registry("sampling"), what="sampling rule")
    sd_survival: float = option(0.9, "stochastic-depth: survival probability of the last block; it falls linearly "
                                "from 1 over the body's blocks (Appendix F.1: 0.9).", range=Range(0, 1, low_open=True))
    sd_mode: str = option("batch", "stochastic-depth: batch (drop a block for the whole mini-batch, as Huang et al.) | "
                          "row (per sample, torchvision.ops.stochastic_depth's row mode).",
                          choices=_registry("sd_modes"), what="stochastic-depth mode")
    kd_temperature: float = option(3.0, "self-distillation: softmax temperature of the KD loss (the paper gives none; "
                                   "3 is our choice, a usual KD temperature).", range=POSITIVE)
    kl_every: int = option(0, "Every N epochs (and at the end) record each plan's KL to the main network; 0: off.",
                           range=Range(0, text="0 (off) or a positive number of epochs"))
    kl_plans: int | None = option(None, "Record KL for a seeded sample of this many plans.", range=AT_LEAST_1)
    kl_probe_size: int = option(500, "Test images of the fixed KL probe set.", range=AT_LEAST_1)
    out: str = option("", "Run folder to write (required).")
    run: str = option("", "Run name in the tables (default: the --out folder's name).", cli=False)
    num_classes: int = option(0, "Set from the data set.", cli=False)
    world_size: int = option(1, "Processes that trained the run together (torchrun), set when it starts.", cli=False)


def config_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields, in declaration order."""
    return list(dataclasses.fields(TrainConfig))


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option: its name, type, default, help, range and choices (what `--help` and validation read)."""

    name: str
    kind: type  # int, float, str or bool (the base type of an optional setting)
    default: Any
    help: str
    range: Range | None = None
    choices: Callable[[], list[str]] | None = None
    what: str = ""  # what the choices are called in an error message

    @property
    def flag(self) -> str:
        """The option as typed on the command line."""
        return "--" + self.name.replace("_", "-")


def _base_type(annotation: Any) -> type:
    """int for `int | None`, and so on."""
    import types
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def option_specs(cls: type) -> list[OptionSpec]:
    """The command-line options of a config dataclass declared with `option(...)` fields, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [OptionSpec(f.name, _base_type(hints[f.name]), f.default, f.metadata["help"], f.metadata["range"],
                       f.metadata["choices"], f.metadata["what"])
            for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def train_option_specs() -> list[OptionSpec]:
    """Every option of `loafing train`: TrainConfig's, then the registered methods' own."""
    return option_specs(TrainConfig)


def make_train_config(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from flat settings (TrainConfig fields and the chosen method's own options), as the command
    line, a study file or an old config.json gives them."""
    return TrainConfig(**values)


def validate_config(config: TrainConfig) -> None:
    """Raise a one-line LoafingError for a setting out of its range, not finite, or not among its choices."""
    for f in config_fields():
        value = getattr(config, f.name)
        if value is None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_number("--" + f.name.replace("_", "-"), value, f.metadata["range"])
        if f.metadata["choices"] is not None:
            check_choice(f.metadata["what"], value, f.metadata["choices"]())


def config_from_dict(values: dict[str, Any], source: str = "a saved configuration") -> TrainConfig:
    """A TrainConfig from a saved dict; an unknown key or a value of the wrong type is an error naming it."""
    hints = typing.get_type_hints(TrainConfig)
    for name, value in values.items():
        if name not in hints:
            raise LoafingError(f"{source}: unknown setting {name!r}")
        allowed = typing.get_args(hints[name]) or (hints[name],)
        if float in allowed:
            allowed = (*allowed, int)
        if type(value) not in allowed and not (value is None and type(None) in allowed):
            kind = " | ".join("None" if t is type(None) else t.__name__ for t in typing.get_args(hints[name])) \
                or hints[name].__name__
            raise LoafingError(f"{source}: setting {name!r} is {value!r}, not {kind}")
    config = TrainConfig(**values)
    validate_config(config)
    return config
