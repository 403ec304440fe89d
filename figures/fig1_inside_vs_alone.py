"""Fig. 1: sub-networks inside bigger CT networks vs the same architectures trained alone (measure.csv).

Usage: python figures/fig1_inside_vs_alone.py --results results/quick --out figures/quick
"""
from __future__ import annotations

from loafing.figures import script_main

if __name__ == "__main__":
    script_main("fig1")
