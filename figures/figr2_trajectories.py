"""Fig. r2: training loss and test top-1 per epoch, CT vs ST, best top-1 starred (train_log.csv).

Usage: python figures/figr2_trajectories.py --results results/quick --out figures/quick
"""
from __future__ import annotations

from loafing.figures import script_main

if __name__ == "__main__":
    script_main("figr2")
