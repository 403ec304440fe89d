"""Block influence (ShortGPT's BI): per block of the main network, 1 - mean cosine(block input, block output) on the
evaluation data, beside the top-1 drop when that block alone is deleted (`destruct --mode delete-one`).

The cosine of one example is taken between its whole input and its whole output, each flattened over positions
(or tokens) and channels into one vector, then averaged over the examples. ShortGPT averages a cosine per token
instead; a StagedModel does not say which axis holds the channels (a ResNet's maps are [N,C,H,W], a Swin's
[N,H,W,C], a ViT's tokens [N,T,D]), and the flattened cosine is the same for every one of these layouts.
The main network is measured as `measure` and `destruct` measure it: BN recalibrated on the calibration images
(unless --no-recalibrate), so the influence and the drop describe the same network, and the drop is
`destruct --mode delete-one`'s own (each deletion recalibrated too).
"""
from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from loafing.bn import preserved_bn_state, recalibrate_bn
from loafing.checkpoint import LoadedModel
from loafing.data import DataSplits, images_only, make_loader
from loafing.destruct import deletable_layers, destruct
from loafing.distributed import World
from loafing.errors import LoafingError
from loafing.eval_config import EvalConfig
from loafing.measure import calibration_columns, calibration_loader, evaluation_device, trained_plan
from loafing.models import StagedModel
from loafing.schema import run_identifiers, with_run_identifiers


@torch.no_grad()
def mean_block_cosines(model: StagedModel, loader: DataLoader,
                       device: torch.device) -> tuple[dict[int, float], int]:
    """Per block of the main plan, the mean over `loader`'s examples of cosine(input, output), each example's
    tensors flattened into one vector (NaN for a block whose output has another shape than its input), and the
    number of examples; the model runs in eval mode with the BN statistics it holds."""
    model.eval()
    blocks = model.layout.main_plan.sequence()
    sums = {b: 0.0 for b in blocks}
    comparable = {b: True for b in blocks}
    n_seen = 0
    for x, _ in loader:
        h = model.stem(x.to(device, non_blocking=True))
        for b in blocks:
            out = model.run_step(b, h)
            if out.shape != h.shape:
                comparable[b] = False
            elif comparable[b]:
                cos = F.cosine_similarity(h.flatten(1).double(), out.flatten(1).double(), dim=1)
                sums[b] += cos.sum().item()
            h = out
        n_seen += len(x)
    if n_seen == 0:
        raise LoafingError("the evaluation split has no images to measure block influence on")
    return {b: sums[b] / n_seen if comparable[b] else math.nan for b in blocks}, n_seen


@torch.no_grad()
def shape_keeping_blocks(model: StagedModel, x: torch.Tensor, device: torch.device) -> list[int]:
    """The blocks of the main plan whose output has its input's shape, found by running the images `x` through it."""
    model.eval()
    kept, h = [], model.stem(x.to(device))
    for b in model.layout.main_plan.sequence():
        out = model.run_step(b, h)
        if out.shape == h.shape:
            kept.append(b)
        h = out
    return kept


def block_influence(loaded: LoadedModel, data: DataSplits, evaluation: EvalConfig, *, progress: bool = True,
                    world: World = World(), delete_one: pd.DataFrame | None = None) -> pd.DataFrame:
    """The influence table: per block of the main network its stage, whether it can be deleted, the mean cosine of
    its input and output on the test split, influence = 1 - cosine, and the delete-one top-1 drop (empty for a
    block that cannot be deleted). Under torchrun every process measures the cosines (one pass of the main network)
    and the deletions are shared out as `destruct` shares them. `delete_one`, this network's delete-one destruct
    table made with the same evaluation settings, saves running those deletions again."""
    if trained_plan(loaded) is not None:
        raise LoafingError("influence needs a run of the whole network, not a sub-network trained alone")
    model = loaded.model
    layout = model.layout
    device = evaluation_device(evaluation, world)
    model.to(device)
    probe = next(iter(make_loader(data.test, 2)), None)
    if probe is not None and not shape_keeping_blocks(model, probe[0], device):
        raise LoafingError(f"block influence compares each block's input with its output, and no block of "
                           f"{loaded.config['model']} keeps its input's shape (a DenseNet's dense layers add channels "
                           "to it): there is nothing to measure")
    calib = calibration_loader(model, data, evaluation)
    with preserved_bn_state(model):
        if calib is not None:
            recalibrate_bn(model, layout.main_plan, images_only(calib), device)
        cosines, n_examples = mean_block_cosines(model, make_loader(data.test, evaluation.batch_size), device)
    deletable = set() if layout.prefix_only else set(deletable_layers(layout))
    drops: dict[int, float] = {}
    if deletable:
        deleted = delete_one if delete_one is not None else destruct(loaded, data, "delete-one", evaluation,
                                                                     progress=progress, world=world)
        deleted = deleted[deleted["n"] == 1]
        if set(deleted["layers"].astype(int)) != deletable:
            raise ValueError("the delete-one table does not delete each deletable block of this network once")
        drops = dict(zip(deleted["layers"].astype(int), deleted["drop"]))
    stage_of = {b: s for s, stage in enumerate(layout.stages, start=1) for b in stage}
    df = pd.DataFrame({
        "block": list(cosines), "stage": [stage_of[b] for b in cosines],
        "deletable": [b in deletable for b in cosines], "cosine": list(cosines.values()),
        "influence": [1.0 - c for c in cosines.values()], "top1_drop": [drops.get(b, math.nan) for b in cosines],
        "n_examples": n_examples, "granularity": model.granularity, **calibration_columns(model, data, evaluation)})
    return with_run_identifiers(df, run_identifiers(loaded.config, data.name))
