"""What a user's first real measure costs: ResNet-56's 9 uniform sub-networks on a CIFAR-10 image folder.

Writes an akamaster-format ResNet-56 file (random weights: the cost does not depend on them; `module.`
keys, no `num_batches_tracked`, like the public files), then runs, as a user would,

    loafing measure --ckpt FILE --model resnet56-cifar --dataset imagefolder --data-dir DIR --space uniform
                    --calib-size 2000

in a child process, and prints its wall time and peak resident memory (decoding the 10,000 test and
2,000 calibration images included).

    python benchmarks/measure_resnet56.py --data-dir /tmp/cifar10
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from loafing.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="image folder with train/ and test/ (CIFAR-10 as files)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        net = create_model("resnet56-cifar", 10).net
        state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
        checkpoint, out = Path(folder) / "resnet56-random.th", Path(folder) / "measure.csv"
        torch.save({"best_prec1": 0.0, "state_dict": state}, checkpoint)
        command = [sys.executable, "-m", "loafing", "measure", "--ckpt", str(checkpoint), "--model", "resnet56-cifar",
                   "--dataset", "imagefolder", "--data-dir", args.data_dir, "--space", "uniform", "--calib-size",
                   "2000", "--quiet", "--out", str(out)]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - start
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        table = pd.read_csv(out)
    print(f"torch threads {torch.get_num_threads()}; {len(table)} uniform plans on {table['n_examples'].iloc[0]} "
          f"test images, calibration {table['calib_size'].iloc[0]} images")
    print(f"wall {seconds:.0f} s ({seconds / 60:.1f} min), peak resident memory {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
