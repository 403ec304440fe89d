"""Image folders that are not what they seem (issue 25, item 2), written as the user's command lines: each file is
read as what it is, or refused in one line that names it; never a silent wrong number, a traceback, a Python
warning or a wait on a FIFO."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from loafing.data import decode_image
from test_faults import one_line_error, weights  # noqa: F401 (a fixture: a random ResNet-20's state dict)

MAIN = "[1,2,3] [4,5,6] [7,8,9]"  # ResNet-20's whole network


def ten_classes(root: Path, per_class: int = 2) -> Path:
    """An image folder of ten classes (as the digits checkpoints classify), `per_class` 32x32 PNGs in each split."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k in range(10):
            (root / split / f"c{k}").mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{k}" / f"{i}.png")
    return root


def measure(run_cli, ckpt: Path, data_dir: Path, out: Path):
    return run_cli("measure", "--ckpt", ckpt, "--model", "resnet20-cifar", "--dataset", "imagefolder", "--data-dir",
                   data_dir, "--plan", MAIN, "--no-recalibrate", "--device", "cpu", "--out", out, "--quiet")


def test_a_symlink_loop_in_an_image_folder_counts_each_image_once(run_cli, weights, tmp_path):
    root = ten_classes(tmp_path / "data")
    (root / "test" / "c3" / "loop").symlink_to(".")  # walked naively: c3/loop/loop/... until the kernel says ELOOP
    code, _, err = measure(run_cli, weights, root, tmp_path / "m.csv")
    assert code == 0, err
    assert pd.read_csv(tmp_path / "m.csv")["n_examples"].tolist() == [20]


def test_a_fifo_in_an_image_folder_is_refused_not_waited_on(weights, tmp_path):
    root = ten_classes(tmp_path / "data")
    os.mkfifo(root / "test" / "c0" / "9.png")
    command = ["measure", "--ckpt", weights, "--model", "resnet20-cifar", "--dataset", "imagefolder", "--data-dir",
               root, "--plan", MAIN, "--device", "cpu", "--out", tmp_path / "m.csv", "--quiet"]
    done = subprocess.run([sys.executable, "-m", "loafing", *map(str, command)], capture_output=True, text=True,
                          timeout=60)
    one_line_error(done.returncode, done.stderr, "is not a regular file")
    assert "9.png" in done.stderr and not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize("mode", ["F", "I", "LAB"])
def test_an_image_mode_with_no_8_bit_rgb_meaning_is_refused_by_name(run_cli, weights, tmp_path, mode):
    from PIL import Image

    root = ten_classes(tmp_path / "data")
    Image.new(mode, (32, 32)).save(root / "test" / "c5" / "odd.tif")
    code, _, err = measure(run_cli, weights, root, tmp_path / "m.csv")
    one_line_error(code, err, "cannot decode image")
    assert "odd.tif" in err and f"mode {mode} " in err and not (tmp_path / "m.csv").exists()


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG that claims `width` x `height` 1-bit pixels (what a decompression bomb's header says) and holds one row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [10_000, 20_000])  # over PIL's limit (a warning there), over twice it (an error)
def test_a_decompression_bomb_header_is_one_line_naming_the_file(run_cli, weights, tmp_path, side):
    root = ten_classes(tmp_path / "data")
    png_header(root / "test" / "c7" / "bomb.png", side, side)
    code, _, err = measure(run_cli, weights, root, tmp_path / "m.csv")
    one_line_error(code, err, "cannot decode image")
    assert "bomb.png" in err and "decompression bomb" in err and "Warning" not in err


def test_sixteen_bit_and_palette_images_decode_as_their_8_bit_originals(tmp_path, recwarn):
    from PIL import Image

    grey = np.random.default_rng(1).integers(0, 256, (8, 12), dtype=np.uint8)
    expected = torch.from_numpy(grey)[None].repeat(3, 1, 1)
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # PIL reads it as mode I;16
    Image.fromarray((grey.astype(np.uint16) * 257).astype(">u2")).save(tmp_path / "grey16b.tif")  # mode I;16B
    for name in ("grey16.png", "grey16b.tif"):
        assert torch.equal(decode_image(str(tmp_path / name)), expected), name
    palette = Image.new("P", (12, 8))
    palette.putdata(grey.ravel().tolist())
    palette.putpalette([value for i in range(256) for value in (i, i, i)])
    palette.info["transparency"] = bytes(range(256))  # PIL warns about transparency so expressed when converting
    palette.save(tmp_path / "palette.png")
    assert torch.equal(decode_image(str(tmp_path / "palette.png")), expected)
    assert not [w for w in recwarn if "PIL" in w.filename]


def test_an_output_inside_the_data_folder_is_refused(run_cli, weights, tmp_path):
    root = ten_classes(tmp_path / "data")
    image = root / "test" / "c0" / "0.png"
    before = image.read_bytes()
    for out in (image, root / "new.csv", tmp_path / "link" / "m.csv"):
        if out.parent.name == "link":
            out.parent.symlink_to(root / "train")
        code, _, err = measure(run_cli, weights, root, out)
        one_line_error(code, err, "is inside the input folder")
    assert image.read_bytes() == before and not (root / "new.csv").exists() and not (root / "train" / "m.csv").exists()


def test_a_download_without_a_network_says_so_and_leaves_no_folder(weights, tmp_path):
    unreachable = "http://127.0.0.1:9"  # a proxy no one listens on: what a machine without a network gets
    env = {**os.environ, "http_proxy": unreachable, "https_proxy": unreachable, "HTTP_PROXY": unreachable,
           "HTTPS_PROXY": unreachable, "no_proxy": "", "NO_PROXY": ""}
    command = ["measure", "--ckpt", weights, "--model", "resnet20-cifar", "--dataset", "cifar10", "--data-dir",
               tmp_path / "new" / "cifar", "--download", "--out", tmp_path / "m.csv", "--quiet"]
    done = subprocess.run([sys.executable, "-m", "loafing", *map(str, command)], capture_output=True, text=True,
                          env=env, timeout=120)
    one_line_error(done.returncode, done.stderr, "cannot download cifar10 from https://")
    assert "check the network" in done.stderr
    assert list(tmp_path.iterdir()) == []
    # inside-vs-alone (the README's Fig. 1 command) takes --download too, and says the same
    shutil.copy(weights, tmp_path / "other.pt")
    command = ["inside-vs-alone", "--ckpt", f"resnet20-cifar={weights}", "--ckpt",
               f"resnet20-cifar={tmp_path / 'other.pt'}", "--dataset", "cifar10", "--data-dir",
               tmp_path / "new" / "cifar", "--download", "--out", tmp_path / "fig1", "--quiet"]
    done = subprocess.run([sys.executable, "-m", "loafing", *map(str, command)], capture_output=True, text=True,
                          env=env, timeout=120)
    one_line_error(done.returncode, done.stderr, "cannot download cifar10 from https://")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt"]
