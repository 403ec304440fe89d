"""A training run built from its configuration: the checks before any work, then the data, the model, the method's
step, the optimizer and schedule, each seeded by the configuration (`loafing.train` runs it)."""
from __future__ import annotations

import dataclasses
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from loafing.bn import set_bn_momentum
from loafing.config import TrainConfig, validate_config, with_method_defaults
from loafing.data import DataSplits, calibration_images, load_dataset, make_loader
from loafing.device_data import DeviceBatches, resident_split
from loafing.distributed import World, barrier
from loafing.errors import LoafingError, LoafingWarning
from loafing.evaluate import resolve_device
from loafing.methods import TrainingStep, check_method, get_method, trained_plan
from loafing.models import StagedModel, create_model, get_spec
from loafing.plans import Plan, ordered_space
from loafing.recipes import recipe_for
from loafing.weights import check_weights, input_framing, resolved_weights, start_from_weights


@dataclass
class Run:
    """A run being trained: its configuration and everything built from it."""

    config: TrainConfig
    world: World
    device: torch.device
    data: DataSplits
    model: StagedModel
    step: TrainingStep
    trained: nn.Module  # what computes a step's losses: the model and the method's modules, under DDP when distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # fp16's loss scaling; disabled otherwise
    train_loader: DataLoader | DeviceBatches  # this rank's share of each global batch
    test_loader: DataLoader
    calib_loader: DataLoader  # fixed training images that recalibrate BN for the per-epoch test accuracy
    rng: random.Random  # the method's sampler (ST plans)
    trained_plan: Plan | None
    kl_plans: list[Plan]
    memory_format: torch.memory_format

    @property
    def out(self) -> Path:
        """The run folder."""
        return Path(self.config.out)


class StepModule(nn.Module):
    """The model and a method's training-only modules as one module whose forward is the method's step: what DDP
    wraps, so that its gradient hooks see every step, whichever of the model's methods the step calls."""

    def __init__(self, model: StagedModel, step: TrainingStep) -> None:
        super().__init__()
        self.model, self.method_modules, self.step_loss = model, step.modules, step.loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        result = self.step_loss(x, y)
        return result.loss, result.ce, result.kl


def check_config(config: TrainConfig, world: World = World(), device: torch.device | None = None) -> None:
    """Reject bad settings before any work starts."""
    if not config.out:
        raise LoafingError("--out is required (or --resume DIR)")
    validate_config(config)
    if config.batch_size % world.size:
        raise LoafingError(f"--batch-size {config.batch_size} is the global batch; it must split evenly over the "
                           f"{world.size} processes")
    if world.size > 1 and min(config.batch_size, config.train_size or config.batch_size) < 2 * world.size:
        raise LoafingError(f"each of the {world.size} processes needs batches of 2 or more images (BatchNorm): pass "
                           f"--batch-size and --train-size of at least {2 * world.size}")
    if config.nesterov and config.momentum == 0:
        raise LoafingError("--nesterov needs a momentum: pass --momentum above 0 (e.g. 0.9)")
    if config.nesterov and config.optimizer != "sgd":
        raise LoafingError(f"--nesterov is SGD's; --optimizer {config.optimizer} has none (use --optimizer sgd)")
    if config.data_on_device and config.train_image_size is not None:
        raise LoafingError("--train-image-size does not combine with --data-on-device, whose crops keep the images' "
                           "stored size; drop one of them")
    if config.sync_bn:
        if device is not None and device.type != "cuda":
            raise LoafingError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm only runs on CUDA tensors (on the CPU, "
                               "each process normalizes its own share of the batch)")
    get_spec(config.model, config.model_args, config.granularity)  # a view the network has not: before training
    if config.weights is not None:
        check_weights(config.model, config.model_args, config.weights)
    check_method(config, device, world)


def kl_trajectory_plans(model: StagedModel, config: TrainConfig) -> list[Plan]:
    """The plans whose KL to the main network is recorded: the ordered space, or a seeded sample of it."""
    plans = ordered_space(model.layout)
    if config.kl_plans is not None and config.kl_plans < len(plans):
        plans = sorted(random.Random(config.seed).sample(plans, config.kl_plans), key=plans.index)
    return plans


def training_data(config: TrainConfig) -> DataSplits:
    """The run's data in its model's input recipe; with `train_size`, a seeded subset of the training split
    (its augmented and plain views holding the same images)."""
    recipe, image_size, eval_resize, interpolation = input_framing(
        config.model, config.model_args, config.weights, config.dataset, config.image_size, config.eval_resize)
    data = load_dataset(config.dataset, config.data_dir, config.download, recipe, image_size,
                        config.train_image_size, eval_resize, interpolation)
    if config.train_size is not None and config.train_size < len(data.train):
        chosen = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(config.seed))
        indices = chosen[:config.train_size].tolist()
        data = dataclasses.replace(data, train=Subset(data.train, indices), train_plain=Subset(data.train_plain, indices))
    return data


def train_batches(config: TrainConfig, data: DataSplits, world: World,
                  device: torch.device) -> DataLoader | DeviceBatches:
    """This rank's training batches: a seeded shuffling loader, DistributedSampler's share of the data under
    torchrun, or the device-resident split (`data_on_device`)."""
    batch_size = config.batch_size // world.size
    if config.data_on_device:
        split = resident_split(data.train, recipe_for(get_spec(config.model, config.model_args).recipe,
                                                      data.image_size), data.image_size)
        return DeviceBatches(split, batch_size, device, config.seed, world.rank, world.size)
    sampler = None
    if world.distributed:
        sampler = DistributedSampler(data.train, num_replicas=world.size, rank=world.rank, shuffle=True,
                                     seed=config.seed, drop_last=True)
    share = len(sampler) if sampler is not None else len(data.train)
    return make_loader(data.train, batch_size, shuffle=sampler is None, seed=config.seed, workers=config.workers,
                       drop_last=share > batch_size, sampler=sampler)


def make_optimizer(parameters: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer --optimizer names, with the run's learning rate and weight decay."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.nesterov)


def build_run(config: TrainConfig, world: World = World(), device: torch.device | None = None,
              resume: bool = False) -> Run:
    """The model, method step, data, optimizer and schedule of a run, seeded by `config.seed`; under torchrun,
    this rank's part of it (the model and the ST sampler alike on every rank, the data shared out). The model
    starts from `config.weights` unless `resume` (the run's checkpoint is loaded next)."""
    device = device or resolve_device(config.device)
    if config.amp == "fp16" and device.type == "cpu":
        warnings.warn("--amp fp16 on the CPU is many times slower than float32 (about 20x for ResNet-20 here); "
                      "bf16 is the CPU's mixed precision", LoafingWarning)
    if config.download and not world.is_main:
        barrier(world)  # rank 0 downloads alone, the others then read its files
    data = training_data(config)
    if config.download and world.is_main:
        barrier(world)
    config = dataclasses.replace(with_method_defaults(config), num_classes=data.num_classes,
                                 run=config.run or Path(config.out).name, world_size=world.size,
                                 weights=config.weights and resolved_weights(config.model, config.weights))
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = create_model(config.model, data.num_classes, config.width_mult, config.model_args, config.granularity)
    if config.weights is not None:  # with the input normalization the weights expect, not the data set's
        start_from_weights(model, config.model, config.model_args, config.weights, load=not resume)
    elif data.mean is not None:
        model.set_normalization(data.mean, data.std)
    if config.bn_momentum is not None:
        set_bn_momentum(model, config.bn_momentum)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    step = get_method(config.method).build(model, config, rng)
    parameters = list(model.parameters()) + (list(step.modules.parameters()) if step.modules is not None else [])
    if step.modules is not None:
        step.modules.to(device, memory_format=memory_format)
    optimizer = make_optimizer(parameters, config)
    train_loader = train_batches(config, data, world, device)
    steps = config.epochs * (len(train_loader) if config.lr_step == "iteration" else 1)
    trained: nn.Module = StepModule(model, step)
    if world.distributed:
        # The ST plan sampler (`rng`) stays seeded alike on every rank, so all ranks train the same sub-network;
        # what differs per rank (dropout masks, stochastic depth's row mode) draws from its own stream.
        torch.manual_seed(config.seed + world.rank)
        trained = DistributedDataParallel(trained, device_ids=[device] if device.type == "cuda" else None,
                                          find_unused_parameters=not step.uses_all_parameters)
    return Run(
        config=config, world=world, device=device, data=data, model=model, step=step, trained=trained,
        optimizer=optimizer, scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps),
        scaler=torch.amp.GradScaler(device.type, enabled=config.amp == "fp16"),
        train_loader=train_loader,
        test_loader=make_loader(data.test, config.eval_batch_size, workers=config.workers),
        calib_loader=make_loader(calibration_images(data, config.monitor_calib_size, config.seed),
                                 config.eval_batch_size),
        rng=rng, trained_plan=trained_plan(model, config),
        kl_plans=kl_trajectory_plans(model, config) if config.kl_every else [], memory_format=memory_format)
