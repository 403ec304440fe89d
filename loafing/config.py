"""TrainConfig: everything that defines a training run, its defaults, and the range of every setting.

This is the one source of the training defaults: `loafing train`'s options are generated from these
fields (help text, choices, ranges in each field's metadata) and from each registered method's own
options (`METHOD_OPTIONS`, filled by the method registry), and `make_train_config` / `validate_config`
check settings against the same declarations.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from loafing.errors import LoafingError
from loafing.plans import GRANULARITIES
# The option layer, also imported from here by older code.
from loafing.options import (AT_LEAST_1, NON_NEGATIVE, POSITIVE, SEED, OptionSpec, Range, check_choice,  # noqa: F401
                             check_number, check_typed, check_value, option, option_specs)

AMP_DTYPES = {"none": None, "bf16": "bfloat16", "fp16": "float16"}  # --amp -> torch dtype name
OPTIMIZERS = ("sgd", "adamw")  # --optimizer; built by loafing.training_run.make_optimizer
BUNDLED_DATASETS = ("digits",)  # read from a library (scikit-learn): no data folder, nothing to download
GRANULARITY_HELP = ("What a step of a plan is: block (a residual block) | unit (each of a transformer block's "
                    "residual units, attention and MLP, on its own; timm / torchvision ViT and Swin).")


def _registry(name: str) -> Callable[[], list[str]]:
    """The names registered in one of the toolkit's registries, looked up when asked (imports stay lazy)."""
    def names() -> list[str]:
        if name == "models":
            from loafing.models import model_choices
            return model_choices()
        from loafing.data import DATASETS
        return list(DATASETS)
    return names


def _no_kl(config: TrainConfig) -> str:
    return "" if config.kl_every else "KL is recorded only with --kl-every N (above 0)"


def _bundled(what: str) -> Callable[[TrainConfig], str]:
    return lambda c: f"--dataset {c.dataset} {what} (scikit-learn bundles it)" if c.dataset in BUNDLED_DATASETS else ""


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved next to its results. Defaults: paper Sec. 6 (CIFAR)."""

    model: str = option("mobilenet_v3_large", "Registered model, or a timm / torchvision network as timm:<name> / "
                        "torchvision:<name> (see `loafing models`).", choices=_registry("models"), what="model")
    # A timm / torchvision network's builder arguments (repeatable --model-arg key=value on the command line).
    model_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "Builder arguments of a timm / torchvision network.", "range": None, "choices": None, "what": "",
        "cli": False})
    width_mult: float = option(1.0, "Width multiplier (models that support it; see `loafing models`).",
                               range=Range(0, 16, low_open=True))
    weights: str | None = option(None, "Start from these weights of a timm / torchvision network: pretrained (its "
                                 "library's default, downloaded once and cached), another set its library names (a "
                                 "timm tag, a torchvision name such as IMAGENET1K_V1), or a state-dict file in its own "
                                 "key names; a classifier for other classes than the data set's is replaced by a fresh "
                                 "one. Named weights bring their input normalization and size.")
    granularity: str = option("block", GRANULARITY_HELP, choices=lambda: list(GRANULARITIES), what="granularity")
    dataset: str = option("digits", "Data set.", choices=_registry("datasets"), what="dataset")
    data_dir: str | None = option(None, "Folder holding the data set.", unread=_bundled("reads no folder"))
    download: bool = option(False, "Download the data set if missing (needs network).",
                            unread=_bundled("downloads nothing"))
    image_size: int | None = option(None, "Side of the input images; default: the model's recipe (32 for CIFAR-style "
                                    "models, 224 for ImageNet-style ones; digits are always 32).", range=Range(1, 1024))
    train_size: int | None = option(None, "Train on a seeded subset of this many training images (chosen by --seed).",
                                    range=Range(2, text="at least 2 (BatchNorm cannot train on one image)"))
    method: str = option("ct", "Training method (see `loafing methods`); its own options are listed there.",
                         choices=lambda: list(METHOD_OPTIONS), what="method")
    epochs: int = option(30, "Training epochs (the paper: 500 on CIFAR).", range=AT_LEAST_1)
    batch_size: int = option(64, "Mini-batch size (under torchrun: the global one, split evenly over the "
                             "processes).", range=Range(2, text="at least 2 (BatchNorm cannot train on one image)"))
    lr: float = option(0.05, "Initial learning rate (cosine decay to 0).", range=POSITIVE)
    optimizer: str = option("sgd", "sgd (the paper's) | adamw (decoupled weight decay; the usual choice for "
                            "vision transformers trained from scratch, with e.g. --lr 1e-3 --weight-decay 0.05).",
                            choices=lambda: list(OPTIMIZERS), what="optimizer")
    weight_decay: float = option(3e-5, "Weight decay (SGD's L2 term; AdamW's decoupled decay).", range=NON_NEGATIVE)
    momentum: float = option(0.9, "SGD momentum.", range=Range(0, 1, high_open=True), unread=lambda c: (
        "" if c.optimizer == "sgd" else f"--optimizer {c.optimizer} has no momentum"))
    nesterov: bool = option(False, "Nesterov momentum (the ST++ recipe).")
    lr_step: str = option("epoch", "When the cosine schedule steps: every epoch, or every iteration (the ST++ "
                          "recipe).", choices=lambda: ["epoch", "iteration"], what="schedule step")
    bn_reestimate: int = option(0, "After every epoch, re-estimate the main network's BN running statistics on this "
                                "many seeded training images, augmented as in training (0: never; the ST++ recipe: "
                                "2000).", range=NON_NEGATIVE)
    train_image_size: int | None = option(None, "Side of the training crops, if not --image-size (the ST++ ImageNet "
                                          "recipe: 200 for a 224 test crop).", range=Range(1, 1024))
    eval_resize: int | None = option(None, "Side the evaluation resizes to before its center crop; default: the "
                                     "recipe's (ImageNet: 256 for 224; the ST++ recipe: 240).", range=Range(1, 4096))
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
    monitor_calib_size: int = option(500, "Training images (augmented) recalibrating BN for the per-epoch test "
                                     "accuracy and the KL trajectory.",
                                     range=Range(2, text="at least 2 (BN statistics need two)"))
    plan: str | None = option(None, 'Train this sub-network alone (a method that can, e.g. common training), e.g. '
                              '"[1] [3,4] [6,7,8] [10] [12,13]".')
    kl_every: int = option(0, "Every N epochs (and at the end) record each plan's KL to the main network; 0: off.",
                           range=Range(0, text="0 (off) or a positive number of epochs"))
    kl_plans: int | None = option(None, "Record KL for a seeded sample of this many plans.", range=AT_LEAST_1,
                                  unread=_no_kl)
    kl_probe_size: int = option(500, "Test images of the fixed KL probe set.", range=AT_LEAST_1, unread=_no_kl)
    out: str = option("", "Run folder to write (required).")
    run: str = option("", "Run name in the tables (default: the --out folder's name).", cli=False)
    num_classes: int = option(0, "Set from the data set.", cli=False)
    world_size: int = option(1, "Processes that trained the run together (torchrun), set when it starts.", cli=False)
    # The chosen method's own options (see `METHOD_OPTIONS`), every one present: those not given take their defaults.
    method_options: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})

    def __post_init__(self) -> None:
        defaults = {spec.name: spec.default for spec in METHOD_OPTIONS.get(self.method, ())}
        self.method_options = {**defaults, **self.method_options}


def config_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields, in declaration order."""
    return list(dataclasses.fields(TrainConfig))


# What this module knows of each registered training method: its own options, in registry order. The method
# registry (`loafing.methods`) fills it, so that configurations need no method code and this module imports none.
METHOD_OPTIONS: dict[str, tuple[OptionSpec, ...]] = {}


def declare_method_options(method: str, options: Sequence[OptionSpec]) -> None:
    """Record a method's own options; a name shared with another method must agree on type and default."""
    fields = {f.name for f in config_fields()}
    for spec in options:
        if spec.name in fields:
            raise ValueError(f"method {method!r}: option {spec.name!r} is a TrainConfig setting")
        for other, specs in METHOD_OPTIONS.items():
            known = next((o for o in specs if o.name == spec.name), None)
            if known is not None and (known.kind, known.default) != (spec.kind, spec.default):
                raise ValueError(f"method {method!r}: option {spec.name!r} is {spec.kind.__name__} (default "
                                 f"{spec.default!r}) but {other!r} declares it {known.kind.__name__} (default "
                                 f"{known.default!r})")
    METHOD_OPTIONS[method] = tuple(options)


def forget_method_options(method: str) -> None:
    """Forget a method's options (for methods registered only for a while, e.g. in tests)."""
    METHOD_OPTIONS.pop(method, None)


def train_option_specs() -> list[OptionSpec]:
    """Every option of `loafing train`: TrainConfig's, then the registered methods' own (a shared one once)."""
    specs = option_specs(TrainConfig)
    seen = {s.name for s in specs}
    for options in METHOD_OPTIONS.values():
        for spec in options:
            if spec.name not in seen:
                specs.append(spec)
                seen.add(spec.name)
    return specs


def check_typed_train_options(config: TrainConfig, typed: Sequence[str]) -> None:
    """Refuse, in one line, an option typed on `loafing train`'s command line (`typed`: names) that `config` leaves
    unread: another method's own option, even at its default, or one the other settings leave unread."""
    for spec in train_option_specs():
        owners = [m for m, specs in METHOD_OPTIONS.items() if any(o.name == spec.name for o in specs)]
        if spec.name in typed and owners and config.method not in owners:
            raise LoafingError(f"{spec.flag} needs --method {' or '.join(owners)}")
    check_typed(config, typed, [*option_specs(TrainConfig), *METHOD_OPTIONS[config.method]])


def _check_type(source: str, name: str, value: Any, kinds: tuple[Any, ...]) -> None:
    """Raise a one-line LoafingError unless `value` is of one of `kinds` (an int passes for a float)."""
    allowed = (*kinds, int) if float in kinds else kinds
    if type(value) not in allowed and not (value is None and type(None) in kinds):
        text = " | ".join("None" if t is type(None) else t.__name__ for t in kinds)
        raise LoafingError(f"{source}setting {name!r} is {value!r}, not {text}")


def _chosen_options(method: str, values: dict[str, Any], source: str = "") -> dict[str, Any]:
    """The options of `method` among `values` (method options by name), type-checked, with defaults for the absent
    ones; another method's option set away from its default is an error, at its default it is dropped."""
    own = {spec.name: spec for spec in METHOD_OPTIONS.get(method, ())}
    for name, value in values.items():
        spec = own.get(name)
        if spec is not None:
            _check_type(source, name, value, (spec.kind, type(None)) if spec.default is None else (spec.kind,))
            continue
        owners = {m: next(o for o in specs if o.name == name) for m, specs in METHOD_OPTIONS.items()
                  if any(o.name == name for o in specs)}
        if not owners:
            raise LoafingError(f"{source}unknown setting {name!r}")
        spec = next(iter(owners.values()))
        if value != spec.default:
            raise LoafingError(f"{spec.flag} needs --method {' or '.join(owners)}")
    chosen = {name: values.get(name, spec.default) for name, spec in own.items()}
    # 2 and 2.0 are one λ: saved and compared (`reproduce.has_config`) alike.
    return {name: float(v) if own[name].kind is float and type(v) is int else v for name, v in chosen.items()}


def make_train_config(values: Mapping[str, Any], source: str = "") -> TrainConfig:
    """A TrainConfig from flat settings (TrainConfig fields and the chosen method's own options, or those nested
    as `method_options`), as the command line, a study file or an old config.json gives them; the method's options
    not given get their defaults. Raises a one-line LoafingError (prefixed by `source`) for anything wrong."""
    where = f"{source}: " if source else ""
    values = dict(values)
    nested = values.pop("method_options", None) or {}
    if not isinstance(nested, dict):
        raise LoafingError(f"{where}setting 'method_options' is {nested!r}, not a table of options")
    twice = sorted(set(nested) & set(values))
    if twice:
        raise LoafingError(f"{where}setting {twice[0]!r} is given twice")
    hints = typing.get_type_hints(TrainConfig)
    common = {name: value for name, value in values.items() if name in hints}
    for name, value in common.items():
        kinds = (dict,) if typing.get_origin(hints[name]) is dict else typing.get_args(hints[name]) or (hints[name],)
        _check_type(where, name, value, kinds)
    method = common.get("method", TrainConfig.method)
    if not METHOD_OPTIONS:  # a programming error, not a user's: the registry fills the table when imported
        raise LoafingError("no training method is registered: import loafing.methods first")
    check_choice("method", method, list(METHOD_OPTIONS))
    others = {name: value for name, value in values.items() if name not in hints}
    config = TrainConfig(**common, method_options=_chosen_options(method, {**others, **nested}, where))
    validate_config(config)
    return config


def flat_settings(config: TrainConfig) -> dict[str, Any]:
    """The flat settings of a config (what `make_train_config` takes): its fields, then its method's options."""
    values = {f.name: getattr(config, f.name) for f in config_fields() if f.name != "method_options"}
    return {**values, **config.method_options}


def with_method_defaults(config: TrainConfig) -> TrainConfig:
    """`config` with every option of its method present (the defaults of those it lacks)."""
    return dataclasses.replace(config, method_options=_chosen_options(config.method, config.method_options))


def validate_config(config: TrainConfig) -> None:
    """Raise a one-line LoafingError for a setting out of its range, not finite, or not among its choices, or an
    option its method does not read."""
    for f in config_fields():
        if f.name != "method_options":
            check_value("--" + f.name.replace("_", "-"), getattr(config, f.name), f.metadata["range"],
                        f.metadata["choices"], f.metadata["what"])
    from loafing.models.registry import check_model_args, is_library_model  # torch-free

    config.model_args = check_model_args(config.model_args, config.model)
    if config.weights is not None and not is_library_model(config.model):
        raise LoafingError(f"--weights starts a timm:<name> or torchvision:<name> network from its library's weights, "
                           f"not {config.model!r}")
    options = _chosen_options(config.method, config.method_options)
    for spec in METHOD_OPTIONS[config.method]:
        check_value(spec.flag, options[spec.name], spec.range, spec.choices, spec.what)


# Settings of config.json files written by older versions, under today's names.
RENAMED = {"calib_size": "monitor_calib_size"}


def config_from_dict(values: dict[str, Any], source: str = "a saved configuration") -> TrainConfig:
    """A TrainConfig from a saved dict (today's, or an older flat one with every method's options at the top level);
    an unknown key or a value of the wrong type is an error naming it."""
    values = dict(values)
    for old, new in RENAMED.items():
        if old in values and new not in values:
            values[new] = values.pop(old)
    return make_train_config(values, source)
