"""Study: the lambda ablation of Appendix E (Fig. r3), with seeds, on any model and data set.

    python analyses/lambda_ablation.py --out runs/lambda --lams 0.5 1 2 5 --seeds 0 1 [--epochs 30]

Trains one CT run per seed and one ST run per (lambda, seed) (completed runs are reused, interrupted
ones resumed), measures every ordered sub-network of each, and writes the tidy table
`results.csv` (one row per run x plan, carrying method, lam and seed) to --out.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from loafing.io import write_csv
from loafing.studies import grid, measure_runs, train_once
from loafing.train import TrainConfig


def configs(out: str, lams: list[float], seeds: list[int], **base_options) -> list[TrainConfig]:
    """CT once per seed, ST for every lambda and seed."""
    ct = grid(TrainConfig(method="ct", **base_options), out, seed=seeds)
    st = grid(TrainConfig(method="st", **base_options), out, lam=lams, seed=seeds)
    return ct + st


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--lams", type=float, nargs="+", default=[0.5, 1.0, 2.0, 5.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--model", default="mobilenet_v3_large")
    parser.add_argument("--width-mult", type=float, default=0.5)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    runs = configs(args.out, args.lams, args.seeds, model=args.model, width_mult=args.width_mult,
                   dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs, device=args.device)
    dirs = [train_once(c) for c in runs]
    table = measure_runs(dirs, device="cuda" if args.device == "cuda" else "cpu")
    write_csv(table, Path(args.out) / "results.csv")
    summary = table.groupby(["method", "lam"])["top1"].agg(["mean", "std", "min"])
    print(summary.to_string(float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
