"""Data sets: embedded digits, CIFAR-10/100, image folders; calibration and probe subsets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from loafing.errors import LoafingError

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.25
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class DataSplits:
    """Train split (augmented), train split without augmentation (for BN calibration), test split.

    Images arrive in [0, 1]; `mean`/`std` is the normalization a model trained on them uses (None: the
    model's own default).
    """

    name: str
    train: Dataset
    train_plain: Dataset
    test: Dataset
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


def load_digits_splits(data_dir: str | None = None, download: bool = False) -> DataSplits:
    """scikit-learn's bundled 8x8 digits, resized to 32x32 RGB, fixed stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1).repeat(1, 3, 1, 1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        list(range(len(labels))), test_size=DIGITS_TEST_FRACTION, stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED)
    train = TensorDataset(images[train_idx], labels[train_idx])
    mean = tuple(images[train_idx].mean(dim=(0, 2, 3)).tolist())
    std = tuple(images[train_idx].std(dim=(0, 2, 3)).tolist())
    return DataSplits("digits", train, train, TensorDataset(images[test_idx], labels[test_idx]), 10, mean, std)


def _require_dir(data_dir: str | None, name: str) -> Path:
    if not data_dir:
        raise LoafingError(f"--data-dir is required for dataset {name!r}")
    path = Path(data_dir)
    if not path.is_dir():
        raise LoafingError(f"data folder {data_dir!r} does not exist")
    return path


def _load_cifar(name: str, data_dir: str | None, download: bool) -> DataSplits:
    from torchvision import datasets, transforms

    root = Path(data_dir) if (download and data_dir) else _require_dir(data_dir, name)
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    augment = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor()])
    plain = transforms.ToTensor()
    try:
        train = cls(str(root), train=True, transform=augment, download=download)
        train_plain = cls(str(root), train=True, transform=plain, download=False)
        test = cls(str(root), train=False, transform=plain, download=download)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise LoafingError(f"{name} not found in {str(root)!r} ({err}); pass --download to fetch it") from None
    return DataSplits(name, train, train_plain, test, len(train.classes), CIFAR_MEAN, CIFAR_STD)


def load_cifar10_splits(data_dir: str | None = None, download: bool = False) -> DataSplits:
    """torchvision CIFAR-10 with pad-4 random crop and horizontal flip for training."""
    return _load_cifar("cifar10", data_dir, download)


def load_cifar100_splits(data_dir: str | None = None, download: bool = False) -> DataSplits:
    """torchvision CIFAR-100 with pad-4 random crop and horizontal flip for training."""
    return _load_cifar("cifar100", data_dir, download)


def load_imagefolder_splits(data_dir: str | None = None, download: bool = False,
                            image_size: int = 224) -> DataSplits:
    """`data_dir/train` and `data_dir/test` (or `val`), one folder per class; ImageNet-style transforms."""
    from torchvision import datasets, transforms

    root = _require_dir(data_dir, "imagefolder")
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise LoafingError(f"image folder {data_dir!r} must hold train/ and test/ (or val/) subfolders")
    augment = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor()])
    plain = transforms.Compose([transforms.Resize(int(image_size * 256 / 224)), transforms.CenterCrop(image_size),
                                transforms.ToTensor()])
    train = datasets.ImageFolder(str(root / "train"), transform=augment)
    test = datasets.ImageFolder(str(test_dir), transform=plain)
    if train.classes != test.classes:
        raise LoafingError(f"image folder {data_dir!r}: train/ and {test_dir.name}/ have different classes")
    train_plain = datasets.ImageFolder(str(root / "train"), transform=plain)
    return DataSplits("imagefolder", train, train_plain, test, len(train.classes), None, None)


DATASETS: dict[str, Callable[..., DataSplits]] = {
    "digits": load_digits_splits,
    "cifar10": load_cifar10_splits,
    "cifar100": load_cifar100_splits,
    "imagefolder": load_imagefolder_splits,
}


def load_dataset(name: str, data_dir: str | None = None, download: bool = False) -> DataSplits:
    """Load a registered data set by name."""
    if name not in DATASETS:
        raise LoafingError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    return DATASETS[name](data_dir=data_dir, download=download)


def seeded_subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    """A fixed random subset of `size` examples (all of them if fewer), chosen by `seed`."""
    n = len(dataset)
    if size >= n:
        return dataset
    generator = torch.Generator().manual_seed(seed)
    return Subset(dataset, torch.randperm(n, generator=generator)[:size].tolist())


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                workers: int = 0, drop_last: bool = False) -> DataLoader:
    """A DataLoader whose shuffling order is fixed by `seed`."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=workers, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      persistent_workers=workers > 0)


def images_only(loader: DataLoader):
    """Iterate the images of a loader of (image, label) batches."""
    return (x for x, _ in loader)
