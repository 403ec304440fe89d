"""Fig. 6: top-1 drop after deleting one layer, several layers, or permuting layers (destruct.csv).

Usage: python figures/fig6_destruct.py --results results/quick --out figures/quick
"""
from __future__ import annotations

from loafing.figures import script_main

if __name__ == "__main__":
    script_main("fig6")
