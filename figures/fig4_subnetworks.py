"""Fig. 4: top-1 of every ordered sub-network, CT vs each ST scheme, sub-networks trained alone as stars (measure.csv).

Usage: python figures/fig4_subnetworks.py --results results/quick --out figures/quick
"""
from __future__ import annotations

from loafing.figures import script_main

if __name__ == "__main__":
    script_main("fig4")
