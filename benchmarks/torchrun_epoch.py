"""What an epoch costs under `torchrun --nproc_per_node 2` against one process, evaluation included.

Each variant is the real command, `loafing train` (ST, KL records every epoch) in a fresh process or under
torchrun, run twice: for 1 epoch and for 1 + `--epochs` epochs. The difference of the two wall times is
the cost of `--epochs` epochs with their per-epoch evaluation and KL records, free of the start-up (Python,
torch, the data set) that both runs pay once. The training part of it comes from the run's own train_log
(`seconds`); the rest is evaluation (test accuracy twice, the KL plans) and the checkpoint.

On the CPU each of the two processes gets one thread (torchrun's OMP_NUM_THREADS=1), the one process all of them.

    python benchmarks/torchrun_epoch.py [--epochs 2] [--model resnet20-cifar] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

LOAFING = str(Path(sys.executable).parent / "loafing")


def command(processes: int, out: Path, epochs: int, args: argparse.Namespace) -> list[str]:
    """The `loafing train` command line of one variant."""
    data = ["--dataset", "imagefolder", "--data-dir", args.data_dir] if args.data_dir else ["--dataset", "digits"]
    train = ["train", "--model", args.model, *data, "--method", "st", "--epochs", str(epochs), "--device", "cpu",
             "--batch-size", "64", "--kl-every", "1", "--kl-probe-size", str(args.kl_probe_size),
             "--monitor-calib-size", "500", "--quiet", "--out", str(out)]
    if args.train_size:
        train += ["--train-size", str(args.train_size)]
    if processes == 1:
        return [LOAFING, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            LOAFING, *train]


def timed(cmd: list[str]) -> float:
    """Wall seconds of a command that must succeed."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    """Print per-epoch wall time, training time and the rest, for one process and for two."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed beyond the first")
    parser.add_argument("--model", default="resnet20-cifar")
    parser.add_argument("--data-dir", default=None, help="an image folder (train/, test/); default: digits")
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--kl-probe-size", type=int, default=450)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            short = timed(command(processes, Path(tmp) / f"p{processes}-short", 1, args))
            out = Path(tmp) / f"p{processes}-long"
            long = timed(command(processes, out, 1 + args.epochs, args))
            log = pd.read_csv(out / "train_log.csv")
            per_epoch = (long - short) / args.epochs
            training = float(log["seconds"].iloc[1:].mean())
            rows.append({"processes": processes, "wall s / epoch": per_epoch, "training s / epoch": training,
                         "evaluation + checkpoint s / epoch": per_epoch - training})
    table = pd.DataFrame(rows).set_index("processes")
    print(table.round(2).to_string())
    ratio = table["wall s / epoch"].loc[2] / table["wall s / epoch"].loc[1]
    print(f"2 processes / 1 process, wall time per epoch: {ratio:.2f}")


if __name__ == "__main__":
    main()
