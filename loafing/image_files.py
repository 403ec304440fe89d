"""Image files: decoding any mode PIL reads to 8-bit RGB (or refusing it by name), and walking a class folder
without following a symbolic link back into itself.

Every problem with a file is a one-line `LoafingError` naming it: not an image, a mode with no 8-bit RGB
meaning, a header claiming more pixels than PIL's decompression-bomb limit, a FIFO or device where an image
should be.
"""
from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import torch

from loafing.errors import LoafingError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # 16-bit grey: scaled to 8 bits, not clipped to white
REFUSED_MODES = {  # what PIL's convert("RGB") gets wrong for them: it clips or misreads the values
    "I": "32-bit integer pixels, whose 8-bit scale the file does not say",
    "F": "32-bit float pixels, whose 8-bit scale the file does not say",
    "LAB": "CIE L*a*b* pixels, which PIL does not convert to RGB",
}


@contextlib.contextmanager
def opened_image(path: str) -> Iterator:
    """PIL's image of `path`, opened with anything wrong with the file (or found while decoding it inside the
    block) turned into a one-line LoafingError naming the file; PIL's other warnings are not the user's."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. corrupt EXIF, palette transparency: the pixels do not depend on it
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LoafingError(f"cannot decode image {path!r}: {reason}") from None


def decode_image(path: str) -> torch.Tensor:
    """An image file as a uint8 RGB CHW tensor: 16-bit grey scaled to 8 bits, modes with no 8-bit RGB meaning
    refused; a file that is not an image is a one-line error naming it."""
    import numpy as np

    with opened_image(path) as image:
        if image.mode in REFUSED_MODES:
            raise ValueError(f"mode {image.mode} ({REFUSED_MODES[image.mode]}); save it as 8-bit RGB")
        if image.mode in SIXTEEN_BIT_MODES:
            grey = np.asarray(image).astype(np.uint32)
            grey = ((grey * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535), exact for v = 257 k
            pixels = np.repeat(grey[:, :, None], 3, axis=2)
        else:
            pixels = np.asarray(image.convert("RGB"))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def stored_shape(path: str) -> tuple[int, int, int]:
    """(3, height, width) of an image file, read from its header."""
    with opened_image(path) as image:
        return 3, image.height, image.width


def usual_shape(files: Sequence[str], samples: int = 17) -> tuple[int, int, int]:
    """The most common stored shape among `samples` files spread over `files` (on a tie, the earliest's)."""
    picks = sorted({round(k * (len(files) - 1) / (samples - 1)) for k in range(samples)})
    return Counter(stored_shape(files[i]) for i in picks).most_common(1)[0][0]


def _regular_file(path: str) -> str:
    """`path`, unless it is a broken link, a FIFO, a device or anything else that is not a file to read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise LoafingError(f"image {path!r} cannot be read: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        raise LoafingError(f"image {path!r} is not a regular file (a FIFO, device or socket); remove it from the "
                           "folder")
    return path


def class_files(folder: Path) -> list[str]:
    """The image files under a class folder, in torchvision's order (folders sorted, then names); a folder
    reached again through a symbolic link (a loop such as `loop -> .`) is not walked twice."""
    seen, found = set(), []
    for root, folders, names in os.walk(folder, followlinks=True):
        info = os.stat(root)
        if (info.st_dev, info.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        found.append((root, sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS))))
    return [_regular_file(os.path.join(root, name)) for root, names in sorted(found) for name in names]
