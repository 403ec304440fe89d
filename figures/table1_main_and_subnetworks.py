"""Table 1: main-network top-1 and sub-network mean/std top-1 per scheme (measure.csv).

Usage: python figures/table1_main_and_subnetworks.py --results results/quick --out figures/quick
"""
from __future__ import annotations

from loafing.figures import script_main

if __name__ == "__main__":
    script_main("table1")
