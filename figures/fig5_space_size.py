"""Fig. 5: max, mean and std of sub-network top-1 against the sampling-space size, 0 = CT (measure.csv).

Usage: python figures/fig5_space_size.py --results results/quick --out figures/quick
"""
from __future__ import annotations

from loafing.figures import script_main

if __name__ == "__main__":
    script_main("fig5")
