"""Training throughput (images/s) of CT and ST epochs: float32 vs. mixed precision, the CPU loader vs. the
device-resident data, one process vs. two (DDP), for resnet56-cifar and mobilenet_v3_large at 32x32.

Every variant runs the toolkit's own training path (`build_run` + `train_one_epoch`, DDP under two
processes, its data loader or `--data-on-device`), one warm-up epoch and then `--epochs` timed ones;
images/s counts every process's images. The data are an image folder of 32x32 PNGs: the given one
(`--data-dir`, e.g. CIFAR-10 as JPEGs) or random images written to a temporary folder. Ratios are taken
within this one run: ST/CT time, AMP vs. float32, device data vs. the loader, two processes vs. one.

MobileNetV3's input recipe (RandomResizedCrop) has no device-resident version, so its device rows read
"n/a". Two processes need two GPUs on CUDA (one per process); on the CPU each of the two takes half the cores.

    python benchmarks/throughput.py [--device auto] [--amp bf16] [--train-size 512] [--batch-size 128]
                                    [--models resnet56-cifar,mobilenet_v3_large] [--processes 1,2]
"""
from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from loafing.config import TrainConfig
from loafing.distributed import World, process_group
from loafing.errors import LoafingError
from loafing.evaluate import resolve_device
from loafing.models import get_spec
from loafing.train import build_run, train_one_epoch


def write_random_folder(root: Path, images: int, seed: int = 0) -> Path:
    """train/ and test/ folders of random 32x32 RGB PNGs in 10 classes."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    for split, n in (("train", images), ("test", 20)):
        for i in range(n):
            folder = root / split / f"class{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=generator)
            Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


def images_per_second(config: TrainConfig, world: World, device: torch.device, epochs: int) -> float:
    """Images/s over `epochs` timed epochs after a warm-up one (every rank's images)."""
    run = build_run(config, world, device)
    train_one_epoch(run, 0, "warm-up", progress=False)
    examples, seconds = 0, 0.0
    for epoch in range(1, epochs + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        examples += train_one_epoch(run, epoch, "timed", progress=False)["examples"]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
    return examples / seconds


def _rank(rank: int, port: int, config: TrainConfig, epochs: int, threads: int, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    world = World(rank, 2, rank)
    device = resolve_device(config.device)
    device = torch.device("cuda", rank) if device.type == "cuda" else device
    with process_group(world, device):
        speed = images_per_second(config, world, device, epochs)
    if rank == 0:
        Path(result).write_text(str(speed))


def two_processes(config: TrainConfig, epochs: int) -> float:
    """Images/s of a two-process DDP run (spawned here, as torchrun would)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.NamedTemporaryFile() as result:
        threads = max(1, torch.get_num_threads() // 2)
        torch.multiprocessing.spawn(_rank, args=(port, config, epochs, threads, result.name), nprocs=2, join=True)
        return float(Path(result.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet56-cifar,mobilenet_v3_large")
    parser.add_argument("--methods", default="ct,st")
    parser.add_argument("--amp", default="bf16", help="the mixed precision compared with float32 (bf16 | fp16)")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--data-dir", default=None, help="an image folder of 32x32 images (default: random PNGs)")
    parser.add_argument("--train-size", type=int, default=512, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per variant (after one warm-up)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0, help="loader processes of the CPU-loader rows")
    args = parser.parse_args()
    device = resolve_device(args.device)
    processes = [int(p) for p in args.processes.split(",")]
    if device.type == "cuda" and 2 in processes and torch.cuda.device_count() < 2:
        print(f"two processes need two GPUs ({torch.cuda.device_count()} here): measuring one process only")
        processes = [1]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or str(write_random_folder(Path(tmp), args.train_size))
        print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, data {data_dir}, "
              f"{args.train_size} images per epoch, global batch {args.batch_size}")
        rows = []
        for model in args.models.split(","):
            for method in args.methods.split(","):
                for amp in ("none", args.amp):
                    for on_device in (False, True):
                        for n in processes:
                            config = TrainConfig(model=model, dataset="imagefolder", data_dir=data_dir, image_size=32,
                                                 train_size=args.train_size, batch_size=args.batch_size, method=method,
                                                 amp=amp, data_on_device=on_device, device=str(device),
                                                 workers=args.workers, monitor_calib_size=10,
                                                 out=str(Path(tmp) / "run"))
                            if on_device and get_spec(model).recipe != "cifar":
                                speed = float("nan")
                            else:
                                try:
                                    speed = (images_per_second(config, World(), device, args.epochs) if n == 1
                                             else two_processes(config, args.epochs))
                                except LoafingError as err:
                                    print(f"  {model} {method} {amp} {on_device} {n}: {err}")
                                    speed = float("nan")
                            rows.append((model, method, amp, "device" if on_device else "loader", n, speed))
                            print(f"  {model:20s} {method:3s} amp {amp:5s} {'device' if on_device else 'loader':6s} "
                                  f"x{n}: {speed:8.1f} images/s", flush=True)
    report(pd.DataFrame(rows, columns=["model", "method", "amp", "data", "processes", "images_per_s"]))


def report(df: pd.DataFrame) -> None:
    """The measured images/s, then each comparison as a ratio of two rows of this run (n/a rows left out)."""
    df = df.dropna()
    keys = ["model", "method", "amp", "data", "processes"]
    speed = df.set_index(keys)["images_per_s"]
    print("\nimages/s:")
    print(df.pivot_table(index=keys[:4], columns="processes", values="images_per_s").round(1).to_string())

    def ratio(title: str, level: str, new: str | int, old: str | int, invert: bool = False) -> None:
        values = set(speed.index.get_level_values(level))
        if new not in values or old not in values:
            return
        a, b = speed.xs(new, level=level), speed.xs(old, level=level)
        r = (b / a if invert else a / b).dropna()
        if len(r):
            print(f"\n{title}:")
            print(r.round(2).to_frame("ratio").reset_index().to_string(index=False))
    ratio("ST/CT time per image", "method", "st", "ct", invert=True)
    for amp in sorted(set(df["amp"]) - {"none"}):
        ratio(f"{amp}/float32 images/s", "amp", amp, "none")
    ratio("device-resident/loader images/s", "data", "device", "loader")
    ratio("two/one processes images/s", "processes", 2, 1)

if __name__ == "__main__":
    main()
