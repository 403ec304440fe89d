"""Input recipes: the image size a model family expects and how its training images are augmented.

A model's spec names its recipe. CIFAR-style models take 32x32 images, augmented by a pad-4 random
crop and a horizontal flip; ImageNet-style models take 224x224 crops: RandomResizedCrop and a flip
for training, Resize + CenterCrop for evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """An input recipe: its name, the side of the square images the model takes, and a description."""

    name: str
    image_size: int
    description: str


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("cifar", 32, "32x32; training: pad-4 random crop + horizontal flip"),
    Recipe("imagenet", 224, "224x224; training: RandomResizedCrop + flip; evaluation: Resize 256 + CenterCrop 224"),
)}
