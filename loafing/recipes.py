"""Input recipes: the image size a model family takes and how its images are augmented (training) or framed
(evaluation). A model's spec names its recipe; every image data set applies it, so CIFAR images stay 32x32
for CIFAR ResNets and are framed to 224x224 for ImageNet-style networks.

Transforms work on uint8 CHW tensors (decoded once, see `loafing.data`) and return float32 in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Transform = Callable[[torch.Tensor], torch.Tensor]
CIFAR_CROP_PADDING = 4  # the cifar recipe's random crop: zero padding on each side before cropping back
SMALL_INPUT = 64  # inputs up to this side take the cifar recipe (a RandomResizedCrop of a 32x32 image is mostly blur)


@dataclass(frozen=True)
class Recipe:
    """An input recipe: its name, the side of the square images the model takes, and its transforms."""

    name: str
    image_size: int
    description: str
    train: Callable[[int], list]  # image size -> training transforms on uint8 CHW tensors
    # image size, side resized to first, interpolation of that resize -> transforms
    evaluate: Callable[[int, int, str], list]
    resize_ratio: float = 1.0  # by default evaluation resizes to this times the image side, then center-crops

    def eval_frame(self, image_size: int | None = None, eval_resize: int | None = None) -> tuple[int, int]:
        """The side evaluation crops to and the side it resizes to first: the given ones, else the recipe's."""
        size = image_size or self.image_size
        return size, eval_resize or round(size * self.resize_ratio)

    def transforms(self, image_size: int | None = None, train_image_size: int | None = None,
                   eval_resize: int | None = None,
                   eval_interpolation: str = "bilinear") -> tuple[Transform, Transform]:
        """(training, evaluation) transforms to float [0, 1] at `image_size` (default: the recipe's), the training
        crops at `train_image_size` if given, evaluation resizing to `eval_resize` before its center crop if given,
        with `eval_interpolation`."""
        from torchvision.transforms import v2  # here: reading a recipe's image size needs no torchvision

        size, resize = self.eval_frame(image_size, eval_resize)
        to_float = v2.ToDtype(torch.float32, scale=True)
        return (v2.Compose([*self.train(train_image_size or size), to_float]),
                v2.Compose([*self.evaluate(size, resize, eval_interpolation), to_float]))

    def frame(self, image_size: int | None = None) -> Transform:
        """The evaluation framing at `image_size` on a uint8 image, kept uint8 (for the cifar recipe also the
        deterministic start of its training transforms)."""
        from torchvision.transforms import v2

        return v2.Compose(self.evaluate(*self.eval_frame(image_size), "bilinear"))


def _cifar_train(size: int) -> list:
    from torchvision.transforms import v2

    return [v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.RandomCrop(size, padding=CIFAR_CROP_PADDING),
            v2.RandomHorizontalFlip()]


def _cifar_evaluate(size: int, resize: int, interpolation: str) -> list:
    from torchvision.transforms import v2

    return [v2.Resize(resize, v2.InterpolationMode(interpolation), antialias=True), v2.CenterCrop(size)]


def _imagenet_train(size: int) -> list:
    from torchvision.transforms import v2

    return [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]


def _imagenet_evaluate(size: int, resize: int, interpolation: str) -> list:
    from torchvision.transforms import v2

    return [v2.Resize(resize, v2.InterpolationMode(interpolation), antialias=True), v2.CenterCrop(size)]


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("cifar", 32, "32x32; training: pad-4 random crop + horizontal flip", _cifar_train, _cifar_evaluate),
    Recipe("imagenet", 224, "224x224; training: RandomResizedCrop + flip; evaluation: Resize 256 + CenterCrop 224",
           _imagenet_train, _imagenet_evaluate, resize_ratio=256 / 224),
)}


def recipe_for(model_recipe: str, image_size: int | None) -> str:
    """The recipe of a run: the cifar recipe when its images are small (at most SMALL_INPUT a side, e.g. a timm
    ConvNeXt given --image-size 32), else the model's own."""
    return "cifar" if image_size is not None and image_size <= SMALL_INPUT else model_recipe
