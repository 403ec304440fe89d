"""Facts about tables written before every row carried its method's style (the `method_*` run columns) and before
methods declared their own run columns: frozen here, so that those files still read (see `schema.migrated`).

This is a record of what was true when those files were written, not a registry: new methods never appear here.
"""
from __future__ import annotations

from typing import Any

# The registry of then, in its order: method -> (label, colour, role); a row's method_order is the position here.
STYLES: dict[str, tuple[str, str, str]] = {
    "ct": ("CT", "#4c72b0", "conventional"),
    "st": ("ST", "#c44e52", "stimulative"),
    "stochastic-depth": ("Stochastic depth", "#55a868", ""),
    "self-distillation": ("Self-distillation", "#8172b2", ""),
    "layer-supervision": ("CT+layer supervision", "#ccb974", ""),
    "stage-supervision": ("CT+stage supervision", "#64b5cd", ""),
}

# Run columns that only one method's rows meant, although every row had them (CT rows carry lam=1.0):
# column -> (the method whose rows it describes, its value in that method's rows where a file lacks the column).
METHOD_COLUMNS: dict[str, tuple[str, Any]] = {
    "lam": ("st", 1.0),
    "space_size": ("st", None),
    "sampling": ("st", "ordered"),  # tables written before ST had other sampling rules
}
