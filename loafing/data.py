"""Data sets: embedded digits, CIFAR-10/100 and image folders; calibration and probe subsets.

Image data sets apply the model's input recipe (`loafing.recipes`): a CIFAR ResNet sees 32x32
images, an ImageNet-style network 224x224 crops, whatever the files hold. Small images (CIFAR-like,
at most 64 pixels a side) are decoded once into one in-memory uint8 tensor and augmented as tensors,
so an epoch costs what the model costs; larger ones are decoded on every access, in `--workers`
processes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from loafing.errors import LoafingError
from loafing.image_files import IMAGE_EXTENSIONS, class_files, decode_image, usual_shape
from loafing.recipes import RECIPES, Transform

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.25
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
SMALL_IMAGE_SIDE = 64  # images up to this size are decoded once and kept in memory


@dataclass
class DataSplits:
    """Train split (augmented), train split without augmentation (for BN calibration), test split.

    Images arrive in [0, 1] at `image_size`; `mean`/`std` is the normalization a model trained on them
    uses (None: the model's own default).
    """

    name: str
    train: Dataset
    train_plain: Dataset
    test: Dataset
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    image_size: int


class ImageSource:
    """uint8 CHW images with integer labels: given as one tensor, or files decoded when first needed.

    Small files of the folder's usual size are kept in one uint8 tensor; a file of another size is kept apart
    (`strays`) at its own size, so that the recipe frames it alone, as it frames every image it is given."""

    def __init__(self, labels: Sequence[int], images: torch.Tensor | None = None,
                 files: Sequence[str] | None = None) -> None:
        self.labels = list(labels)
        self.files = list(files) if files is not None else None
        self.memory = images
        self.decoded = torch.ones(len(self.labels), dtype=torch.bool) if images is not None else None
        self.strays: dict[int, torch.Tensor] = {}
        if self.files is not None:
            self.shape = usual_shape(self.files)
            if max(self.shape[1:]) <= SMALL_IMAGE_SIDE:  # small: one uint8 tensor, filled as images are used
                self.memory = torch.empty((len(self.files), *self.shape), dtype=torch.uint8)
                self.decoded = torch.zeros(len(self.files), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> torch.Tensor:
        """Image `index` as uint8 CHW."""
        if self.memory is None:
            return decode_image(self.files[index])
        if index in self.strays:
            return self.strays[index]
        if not self.decoded[index]:
            image = decode_image(self.files[index])
            if tuple(image.shape) != self.shape:
                self.strays[index] = image
            else:
                self.memory[index] = image
            self.decoded[index] = True
            return image
        return self.memory[index]


class Images(Dataset):
    """(transformed image, label) pairs of an ImageSource."""

    def __init__(self, source: ImageSource, transform: Transform) -> None:
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.source.image(index)), self.source.labels[index]


def load_digits_splits(data_dir: str | None = None, download: bool = False, recipe: str = "cifar",
                       image_size: int | None = None) -> DataSplits:
    """scikit-learn's bundled 8x8 digits, resized to 32x32 RGB (for every model), fixed stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if image_size is not None:
        raise LoafingError("--image-size applies to image data sets (cifar10, cifar100, imagefolder), "
                           "not to digits, which every model sees at 32x32")
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
    return DataSplits("digits", train, train, TensorDataset(images[test_idx], labels[test_idx]), 10, mean, std, 32)


def _require_dir(data_dir: str | None, name: str) -> Path:
    if not data_dir:
        raise LoafingError(f"--data-dir is required for dataset {name!r}")
    path = Path(data_dir)
    if not path.is_dir():
        raise LoafingError(f"data folder {data_dir!r} does not exist")
    return path


def _splits(name: str, train: ImageSource, test: ImageSource, num_classes: int, recipe: str,
            image_size: int | None, mean: tuple[float, ...] | None = None,
            std: tuple[float, ...] | None = None) -> DataSplits:
    """Train, plain train and test splits of two sources with the recipe's transforms."""
    if image_size is not None and image_size < 1:
        raise LoafingError(f"--image-size must be at least 1, got {image_size}")
    augment, plain = RECIPES[recipe].transforms(image_size)
    return DataSplits(name, Images(train, augment), Images(train, plain), Images(test, plain), num_classes, mean, std,
                      image_size or RECIPES[recipe].image_size)


def _load_cifar(name: str, data_dir: str | None, download: bool, recipe: str,
                image_size: int | None) -> DataSplits:
    from torchvision import datasets

    root = Path(data_dir) if (download and data_dir) else _require_dir(data_dir, name)
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    created = [folder for folder in (root, *root.parents) if not folder.exists()]  # a failed download removes them
    before = set(root.iterdir()) if root.is_dir() else set()
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except BaseException as err:
        if download:
            _remove_new(root, before, created)
        if isinstance(err, OSError):  # urllib's URLError among them
            reason = getattr(err, "reason", None) or err.strerror or type(err).__name__
            raise LoafingError(f"cannot download {name} from {cls.url}: {reason}; check the network, or put "
                               f"{cls.filename} in {str(root)!r} yourself") from None
        if isinstance(err, RuntimeError):  # torchvision's "Dataset not found or corrupted"
            raise LoafingError(f"{name} not found in {str(root)!r} ({err}); pass --download to fetch it") from None
        raise

    def source(split) -> ImageSource:
        return ImageSource(split.targets, images=torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous())
    return _splits(name, source(train), source(test), len(train.classes), recipe, image_size, CIFAR_MEAN, CIFAR_STD)


def _remove_new(root: Path, before: set[Path], created: list[Path]) -> None:
    """Remove what a failed download left: the entries of `root` not in `before`, then the emptied folders it
    created."""
    import shutil

    for entry in set(root.iterdir()) - before if root.is_dir() else ():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for folder in created:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


def load_cifar10_splits(data_dir: str | None = None, download: bool = False, recipe: str = "cifar",
                        image_size: int | None = None) -> DataSplits:
    """torchvision's CIFAR-10 files, framed and augmented by the model's recipe."""
    return _load_cifar("cifar10", data_dir, download, recipe, image_size)


def load_cifar100_splits(data_dir: str | None = None, download: bool = False, recipe: str = "cifar",
                         image_size: int | None = None) -> DataSplits:
    """torchvision's CIFAR-100 files, framed and augmented by the model's recipe."""
    return _load_cifar("cifar100", data_dir, download, recipe, image_size)


def folder_source(folder: Path, classes: list[str] | None = None) -> tuple[ImageSource, list[str]]:
    """The images of `folder/<class>/*` and the sorted class names; one-line errors for empty folders."""
    found = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not found:
        raise LoafingError(f"image folder {str(folder)!r}: Couldn't find any class folder in it")
    if classes is not None and found != classes:
        raise LoafingError(f"image folder {str(folder)!r} has other classes than the training folder")
    per_class = [class_files(folder / name) for name in found]
    empty = [name for name, files in zip(found, per_class) if not files]
    if empty:
        raise LoafingError(f"image folder {str(folder)!r}: Found no valid file for the classes {', '.join(empty)} "
                           f"(image files end in {', '.join(IMAGE_EXTENSIONS)})")
    labels = [label for label, files in enumerate(per_class) for _ in files]
    return ImageSource(labels, files=[path for files in per_class for path in files]), found


def load_imagefolder_splits(data_dir: str | None = None, download: bool = False, recipe: str = "imagenet",
                            image_size: int | None = None) -> DataSplits:
    """`data_dir/train` and `data_dir/test` (or `val`), one folder per class, in the model's recipe."""
    root = _require_dir(data_dir, "imagefolder")
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise LoafingError(f"image folder {data_dir!r} must hold train/ and test/ (or val/) subfolders")
    train, classes = folder_source(root / "train")
    test, _ = folder_source(test_dir, classes)
    return _splits("imagefolder", train, test, len(classes), recipe, image_size)


DATASETS: dict[str, Callable[..., DataSplits]] = {
    "digits": load_digits_splits,
    "cifar10": load_cifar10_splits,
    "cifar100": load_cifar100_splits,
    "imagefolder": load_imagefolder_splits,
}


def load_dataset(name: str, data_dir: str | None = None, download: bool = False, recipe: str = "cifar",
                 image_size: int | None = None, train_image_size: int | None = None,
                 eval_resize: int | None = None, eval_interpolation: str = "bilinear") -> DataSplits:
    """Load a registered data set by name, in a model's input recipe (`image_size` overrides its size; the training
    crops may be smaller, `train_image_size`, and evaluation may resize to another side first, `eval_resize`, with
    another interpolation, `eval_interpolation`)."""
    if name not in DATASETS:
        raise LoafingError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    data = DATASETS[name](data_dir=data_dir, download=download, recipe=recipe, image_size=image_size)
    if train_image_size is None and eval_resize is None and eval_interpolation == "bilinear":
        return data
    if not isinstance(data.train, Images):
        raise LoafingError("--train-image-size and --eval-resize apply to image data sets (cifar10, cifar100, "
                           f"imagefolder), not to {name}")
    augment, plain = RECIPES[recipe].transforms(image_size, train_image_size, eval_resize, eval_interpolation)
    return dataclasses.replace(data, train=Images(data.train.source, augment),
                               train_plain=Images(data.train_plain.source, plain), test=Images(data.test.source, plain))


def seeded_subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    """A fixed random subset of `size` examples (all of them if fewer), chosen by `seed`."""
    n = len(dataset)
    if size >= n:
        return dataset
    generator = torch.Generator().manual_seed(seed)
    return Subset(dataset, torch.randperm(n, generator=generator)[:size].tolist())


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                workers: int = 0, drop_last: bool = False, sampler: Sampler | None = None) -> DataLoader:
    """A DataLoader whose shuffling order is fixed by `seed` (or given by `sampler`, e.g. a DistributedSampler)."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, sampler=sampler,
                      num_workers=workers, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      persistent_workers=workers > 0)


class SeededDraws(Dataset):
    """`dataset` with the random draws of its transform fixed per index by `seed`: every pass over it yields the
    same tensors, and the global random state is left as it was."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + index)
            return self.dataset[index]


def calibration_images(data: DataSplits, size: int, seed: int, augmented: bool = True) -> Dataset:
    """A seeded subset of `size` training images for BN recalibration, fixed across passes.

    `augmented`: with the training augmentation (each image's crop and flip drawn once from `seed`), the
    distribution BN's running statistics are gathered on in training, as the paper's recalibration (Appendix C.2,
    after US-Nets) and its official code take it; otherwise as evaluated. On the CIFAR-10 JPEGs, calibrating
    on images as evaluated cost trained ResNets 2-4 points of top-1 against their own running statistics.
    """
    if not augmented:
        return seeded_subset(data.train_plain, size, seed)
    return SeededDraws(seeded_subset(data.train, size, seed), seed)


def images_only(loader: DataLoader):
    """Iterate the images of a loader of (image, label) batches."""
    return (x for x, _ in loader)
