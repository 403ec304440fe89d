"""Fig. 7: KL(main || sub-network) over sub-networks at each recorded epoch, CT vs ST (kl_trajectory.csv).

Usage: python figures/fig7_kl.py --results results/quick --out figures/quick
"""
from __future__ import annotations

from loafing.figures import script_main

if __name__ == "__main__":
    script_main("fig7")
