"""Table r4: training time, throughput and peak memory per scheme, with ratios to CT (train_log.csv).

Usage: python figures/tabler4_cost.py --results results/quick --out figures/quick
"""
from __future__ import annotations

from loafing.figures import script_main

if __name__ == "__main__":
    script_main("tabler4")
