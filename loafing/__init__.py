"""loafing: measure and fix the loafing of residual networks (Stimulative Training, NeurIPS'22)."""

__version__ = "0.1.0"
