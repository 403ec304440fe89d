"""How the figures name, colour and order training schemes: read from the rows themselves (the `method_label`,
`method_colour`, `method_role` and `method_order` columns every writer fills from the method registry), so the
figures need neither the registry nor torch. A method whose rows carry no style gets a default one."""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from loafing.method_styles import FOREIGN_METHOD
from loafing.schema import is_blank  # noqa: F401  (the figures' test of an empty cell)

CONVENTIONAL, STIMULATIVE = "conventional", "stimulative"  # the roles figures give a method (see loafing.schema)
ALONE = "alone"
ALONE_LABEL = "trained alone"
ALONE_COLOUR = "#55a868"
# A stimulative method's restricted spaces (e.g. ST-K) get a colour from K itself, so ST-48 looks alike everywhere.
RESTRICTED_COLOURS = ("#dd8452", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
# A stimulative method with another sampling rule than the paper's ordered one: 'ST (raw)', 'ST (stochastic)'.
SAMPLING_COLOURS = {"stochastic": "#e17c05", "raw": "#7f3c8d"}
# A method's variants ('ST++ [subnets=4]'): one colour per variant present, by the order of their texts.
VARIANT_COLOURS = ("#e377c2", "#17becf", "#bcbd22", "#9467bd", "#8c564b", "#1f77b4", "#d62728", "#2ca02c",
                   "#ff7f0e", "#7f7f7f")
# Methods whose rows carry no colour (written by a method that was not registered then), in order of their labels.
DEFAULT_COLOURS = ("#64b5cd", "#ccb974", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def is_blank_cell(value: object) -> bool:
    """True for one empty CSV cell (NaN after reading, or an empty string)."""
    return bool(pd.isna(value)) or str(value).strip() == ""


@dataclass(frozen=True)
class MethodStyle:
    """A method as the figures show it: its label, colour, role and position in the registry."""

    label: str
    colour: str
    role: str
    order: float  # inf for methods without a registry position (drawn after the registered ones)


def _cell(row: pd.Series, column: str) -> object:
    return row[column] if column in row.index and not is_blank_cell(row[column]) else None


def method_styles(df: pd.DataFrame) -> dict[str, MethodStyle]:
    """Each method in `df` (by name) with the style its rows carry, or a default one (its name, a default colour)."""
    firsts = df.drop_duplicates("method")
    styles: dict[str, MethodStyle] = {}
    unstyled = []
    for _, row in firsts.iterrows():
        label, colour = _cell(row, "method_label"), _cell(row, "method_colour")
        if label is None or colour is None:
            unstyled.append(str(row["method"]))
            continue
        order = _cell(row, "method_order")
        styles[str(row["method"])] = MethodStyle(str(label), str(colour), str(_cell(row, "method_role") or ""),
                                                 math.inf if order is None else float(order))
    for i, method in enumerate(sorted(unstyled)):
        styles[method] = MethodStyle(method, DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)], "", math.inf)
    return styles


@dataclass(frozen=True)
class Schemes:
    """The colours and order of the schemes built from a set of methods' styles ('CT', 'ST-48', 'ST (raw)', ...)."""

    methods: dict[str, MethodStyle]
    variants: tuple[str, ...] = ()  # the method variants present, sorted: each gets its own colour

    def _by_label(self) -> dict[str, MethodStyle]:
        return {style.label: style for style in self.methods.values()}

    def role_label(self, role: str) -> str | None:
        """The label of the first method (in registry order) with this role, if any; foreign checkpoints are
        conventionally trained, but no method of ours."""
        styles = sorted((s for m, s in self.methods.items() if s.role == role and m != FOREIGN_METHOD),
                        key=lambda s: (s.order, s.label))
        return styles[0].label if styles else None

    def split_restricted(self, scheme: str) -> tuple[str, int] | None:
        """('ST', 48) for 'ST-48': a method's label and a space size; None otherwise."""
        base, _, size = scheme.rpartition("-")
        return (base, int(size)) if base in self._by_label() and size.isdigit() and int(size) > 0 else None

    @staticmethod
    def split_variant(scheme: str) -> tuple[str, str] | None:
        """('ST++', 'subnets=4') for 'ST++ [subnets=4]': a scheme and its method variant; None otherwise."""
        base, bracket, variant = scheme.rpartition(" [")
        return (base, variant[:-1]) if bracket and variant.endswith("]") else None

    def without_variant(self, scheme: str) -> str:
        """The scheme of a method variant's scheme ('ST++' for 'ST++ [subnets=4]'), else the scheme itself."""
        split = self.split_variant(scheme)
        return scheme if split is None else split[0]

    def split_sampling(self, scheme: str) -> tuple[str, str] | None:
        """('ST', 'raw') for 'ST (raw)': a method's label and a sampling rule; None otherwise."""
        base, _, rule = scheme.partition(" (")
        return (base, rule[:-1]) if base in self._by_label() and rule[:-1] in SAMPLING_COLOURS else None

    def colour(self, scheme: str) -> str:
        """The fixed colour of a scheme: its method's, one per space size for 'LABEL-K', green for 'alone'."""
        labels = self._by_label()
        if scheme == ALONE:
            return ALONE_COLOUR
        variant = self.split_variant(scheme)
        if variant is not None:
            known = variant[1] in self.variants
            rank = self.variants.index(variant[1]) if known else zlib.crc32(variant[1].encode())
            return VARIANT_COLOURS[rank % len(VARIANT_COLOURS)]
        if scheme in labels:
            return labels[scheme].colour
        restricted = self.split_restricted(scheme)
        if restricted is not None:
            return RESTRICTED_COLOURS[int(math.log2(restricted[1])) % len(RESTRICTED_COLOURS)]
        sampled = self.split_sampling(scheme)
        if sampled is not None:
            return SAMPLING_COLOURS[sampled[1]]
        return DEFAULT_COLOURS[-1]

    def palette(self, schemes: Sequence[str]) -> dict[str, str]:
        """Colour of each scheme."""
        return {scheme: self.colour(scheme) for scheme in schemes}

    def order(self, schemes: Sequence[str]) -> list[str]:
        """Schemes in registry order of their methods, restricted spaces by growing size before the full one,
        other sampling rules after it, then schemes of methods without a registry position by label."""
        labels = self._by_label()

        def key(scheme: str) -> tuple[float, float, str]:
            variant = self.split_variant(scheme)
            if variant is not None:  # after its scheme without the variant
                return (*key(variant[0])[:2], scheme)
            if scheme in labels:
                return (labels[scheme].order, math.inf, scheme)
            restricted = self.split_restricted(scheme)
            if restricted is not None:
                return (labels[restricted[0]].order, float(restricted[1]), scheme)
            sampled = self.split_sampling(scheme)
            if sampled is not None:
                return (labels[sampled[0]].order, math.inf, scheme)  # after the plain label: a prefix sorts first
            return (math.inf, math.inf, scheme)
        return sorted(set(schemes), key=key)


def schemes_of(df: pd.DataFrame) -> Schemes:
    """The schemes' styles of the methods in `df`, and its method variants."""
    variants = sorted({str(v) for v in df["variant"] if not is_blank_cell(v)}) if "variant" in df.columns else []
    return Schemes(method_styles(df), tuple(variants))


def use_style() -> None:
    """Apply the one plotting style every figure shares."""
    sns.set_theme(style="whitegrid", context="paper")


def figure_legend(fig: Figure, axes: Sequence[Axes], ncols: int | None = None,
                  entries: tuple[list, list[str]] | None = None) -> None:
    """Replace the axes' legends by one figure legend below the panels, of the first panel's entries (or of
    `entries`: handles and labels); the figure grows by the legend's height, so that the panels keep theirs."""
    handles, labels = entries if entries is not None else axes[0].get_legend_handles_labels()
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if not handles:
        return
    for columns in [ncols] if ncols else range(min(len(labels), 6), 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower center", ncols=columns, frameon=False)
        # Long labels in one row run off the figure's edges; fewer columns, more rows, until the legend fits.
        if ncols or columns == 1 or legend.get_window_extent().width <= fig.bbox.width:
            fig.set_figheight(fig.get_figheight() + legend.get_window_extent().height / fig.dpi)
            return
        legend.remove()
