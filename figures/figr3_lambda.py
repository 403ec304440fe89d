"""Fig. r3: main and mean sub-network top-1 of full-space ST against λ, CT dashed (measure.csv).

Usage: python figures/figr3_lambda.py --results results/quick --out figures/quick
"""
from __future__ import annotations

from loafing.figures import script_main

if __name__ == "__main__":
    script_main("figr3")
