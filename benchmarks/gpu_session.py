"""One call on a machine with a GPU: the throughput benchmark, a short SyncBatchNorm run and the ResNet-56 study,
everything written under one folder (and packed into one archive) to bring back.

    python benchmarks/gpu_session.py --data-dir cifar10-jpg --out gpu-session [--minutes 10] [--dry-run]

`--data-dir` is the CIFAR-10 JPEG folder (train/, test/); `--data-tar` unpacks the tarball there first. The
steps run in order, each with what is left of the `--minutes` budget; a step cut short by it is reported as
such and the next is skipped, never hidden. The study (analyses/resnet56-cifar10-gpu-10ep.toml) resumes where
it stopped when the script runs again with the same --out. `--dry-run` prints the steps and runs nothing.

What comes back, under --out: machine.txt (GPU, torch), throughput.txt, sync_bn/ (train_log.csv), the study's
results/ and figures/, steps.csv (each step's wall seconds and exit status) and gpu-session.tar.gz of it all.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
LOAFING = str(Path(sys.executable).parent / "loafing")
STUDY = "resnet56-cifar10-gpu-10ep"


def steps(data_dir: str, out: Path) -> list[tuple[str, list[str]]]:
    """The commands of a session, in order: (name, argv)."""
    data = ["--dataset", "imagefolder", "--data-dir", data_dir]
    return [
        ("machine", [sys.executable, "-c", "import torch; print(torch.__version__, torch.version.cuda, "
                     "torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"]),
        ("throughput", [sys.executable, str(HERE / "throughput.py"), "--device", "cuda", "--data-dir", data_dir,
                        "--models", "resnet56-cifar", "--processes", "1", "--train-size", "8192",
                        "--batch-size", "64", "--epochs", "2", "--workers", "8"]),
        # One GPU: no process group, so SyncBatchNorm normalizes like BatchNorm; this checks that the swap in and
        # out of SyncBatchNorm around ST's simple step trains and checkpoints on CUDA, not the synchronisation.
        ("sync_bn", [LOAFING, "train", "--model", "resnet56-cifar", *data, "--method", "st", "--st-step", "simple",
                     "--sync-bn", "--device", "cuda", "--epochs", "1", "--train-size", "8192", "--batch-size", "64",
                     "--lr", "0.05", "--data-on-device", "--quiet", "--overwrite", "--out", str(out / "sync_bn")]),
        ("study", [LOAFING, "reproduce", "--preset", STUDY, "--data-dir", data_dir, "--device", "cuda",
                   "--out", str(out / STUDY), "--quiet"]),
    ]


def run_steps(plan: list[tuple[str, list[str]]], out: Path, budget_s: float) -> pd.DataFrame:
    """Run each step with the time left, its output in OUT/NAME.txt; after a step that fails or is cut short,
    the rest are skipped."""
    start, rows, stopped = time.monotonic(), [], ""
    for name, argv in plan:
        left = budget_s - (time.monotonic() - start)
        if stopped or left <= 1:
            rows.append({"step": name, "seconds": 0.0, "status": f"skipped: {stopped or 'no time left'}"})
            continue
        began = time.monotonic()
        with open(out / f"{name}.txt", "w") as log:
            try:
                code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=left).returncode
                status = "ok" if code == 0 else f"failed (exit {code})"
            except subprocess.TimeoutExpired:
                status = "cut short by the budget"
        rows.append({"step": name, "seconds": round(time.monotonic() - began, 1), "status": status})
        print(f"{name}: {status} in {rows[-1]['seconds']} s", flush=True)
        if status != "ok":
            stopped = f"{name} did not finish"
    return pd.DataFrame(rows)


def main() -> None:
    """Run (or list) the session's steps and pack what they wrote."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 as image folders (train/, test/)")
    parser.add_argument("--data-tar", default=None, help="unpack this tarball into --data-dir first")
    parser.add_argument("--out", required=True, help="the folder to bring back")
    parser.add_argument("--minutes", type=float, default=10.0, help="budget for all steps together")
    parser.add_argument("--dry-run", action="store_true", help="print the steps; run nothing")
    args = parser.parse_args()
    out = Path(args.out)
    plan = steps(args.data_dir, out)
    if args.dry_run:
        for name, argv in plan:
            print(f"{name}: {' '.join(argv)}")
        print(f"budget: {args.minutes:g} minutes; output: {out}/ and {out}/gpu-session.tar.gz")
        return
    out.mkdir(parents=True, exist_ok=True)
    if args.data_tar and not Path(args.data_dir, "train").is_dir():
        Path(args.data_dir).mkdir(parents=True, exist_ok=True)
        with tarfile.open(args.data_tar) as tar:
            tar.extractall(args.data_dir, filter="data")
    table = run_steps(plan, out, args.minutes * 60)
    table.to_csv(out / "steps.csv", index=False)
    print(table.to_string(index=False))
    with tarfile.open(out / "gpu-session.tar.gz", "w:gz") as tar:
        for path in sorted(out.rglob("*")):
            if path.is_file() and path.suffix not in (".pt", ".gz") and path.name != ".lock":
                tar.add(path, arcname=str(path.relative_to(out)))


if __name__ == "__main__":
    main()
