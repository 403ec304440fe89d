"""The training split on the device: one tensor of all its images, shuffled, cropped and flipped there per batch.

For small images (digits, CIFAR) a GPU waits on a CPU loader more than it computes. Kept on the device as
uint8 (CIFAR-10's 50,000 images are 150 MB), a batch is an index into that tensor and its augmentation a
few tensor operations on the whole batch. The augmentation is the CPU recipe's, drawn per image the same
way: a zero-padded 4-pixel random crop (offsets uniform in 0..8 on each axis) and a horizontal flip with
probability 1/2, then scaling to [0, 1]. The order is DistributedSampler's (seed + epoch), so under
torchrun each process takes its share of one permutation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler, Subset, TensorDataset

from loafing.data import Images
from loafing.errors import LoafingError
from loafing.recipes import CIFAR_CROP_PADDING, RECIPES



@dataclass
class ResidentSplit:
    """A training split as tensors: images (uint8 to augment, or float already final), labels, and whether to
    crop and flip."""

    images: torch.Tensor
    labels: torch.Tensor
    augment: bool


def resident_split(dataset: Dataset, recipe: str, image_size: int) -> ResidentSplit:
    """The tensors of a training split the device path can hold: digits' float images (no augmentation), or an
    in-memory uint8 image source in the cifar recipe at its stored size (the images it holds decoded now; one of
    another size resized and cropped to it by the recipe)."""
    indices = None
    if isinstance(dataset, Subset):
        indices, dataset = torch.as_tensor(dataset.indices), dataset.dataset
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors
    elif (isinstance(dataset, Images) and dataset.source.memory is not None and recipe == "cifar"
          and tuple(dataset.source.memory.shape[2:]) == (image_size, image_size)):
        source = dataset.source
        used = indices if indices is not None else torch.arange(len(source))
        for i in used[~source.decoded[used]].tolist():  # only the images this split trains on
            source.image(i)
        images, labels = source.memory, torch.tensor(source.labels)
        if any(i in source.strays for i in used.tolist()):  # framed alone, as the CPU path's first transforms do
            frame = RECIPES[recipe].frame(image_size)
            images = images.clone()
            for i in set(used.tolist()) & set(source.strays):
                images[i] = frame(source.strays[i])
    else:
        raise LoafingError(f"--data-on-device needs small images used at their stored size in the cifar recipe "
                           f"(digits, cifar10, cifar100, folders of small images); this data set at {image_size} px "
                           f"in the {recipe} recipe is not: train without --data-on-device")
    if indices is not None:
        images, labels = images[indices], labels[indices]
    return ResidentSplit(images, labels.long(), augment=images.dtype == torch.uint8)


def crop_and_flip(images: torch.Tensor, generator: torch.Generator, padding: int = CIFAR_CROP_PADDING) -> torch.Tensor:
    """Each uint8 image of a batch zero-padded by `padding`, cropped back to its size at uniform random offsets and
    flipped horizontally with probability 1/2."""
    n, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    device = images.device
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    rows = (top[:, None] + torch.arange(height, device=device))[:, None, :, None]
    columns = torch.arange(width, device=device).expand(n, width)
    columns = torch.where(flip[:, None], columns.flip(1), columns) + left[:, None]
    return padded[torch.arange(n, device=device)[:, None, None, None],
                  torch.arange(channels, device=device)[None, :, None, None], rows, columns[:, None, None, :]]


class DeviceBatches:
    """Batches of a resident split on `device`, in DistributedSampler's order for this rank, augmented there."""

    def __init__(self, split: ResidentSplit, batch_size: int, device: torch.device, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.images, self.labels = split.images.to(device), split.labels.to(device)
        self.augment, self.batch_size, self.device = split.augment, batch_size, device
        self.sampler = DistributedSampler(range(len(self.labels)), num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.generator = torch.Generator(device=device).manual_seed(seed + rank)
        self.drop_last = len(self.sampler) > batch_size

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.tensor(list(self.sampler), device=self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start:start + self.batch_size]
            images = self.images[index]
            if self.augment:
                images = crop_and_flip(images, self.generator).float().div_(255)
            yield images, self.labels[index]
