"""Text that fits its figure: titles wrapped to the canvas, and a check that no drawn text falls outside it.

A PNG is cut at the figure's edge, so a title or a legend wider than the figure loses its ends silently; every
figure is checked after it is drawn (`texts_outside`), and make_figures reports what runs off.
"""
from __future__ import annotations

import textwrap

from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.text import Text

DPI = 150  # every PNG is written at this resolution; the check measures the figure as drawn for it
TOLERANCE_PX = 1.0  # anti-aliasing may spill a pixel past the edge
TITLE_SHARE = 0.96  # of the figure's width, what a wrapped title may take


def _width(fig: Figure, text: Text, content: str) -> float:
    """Width in pixels of `text` if it held `content`."""
    shown = text.get_text()
    text.set_text(content)
    try:
        return text.get_window_extent(fig._get_renderer()).width  # private, as matplotlib's own legend uses it
    finally:
        text.set_text(shown)


def wrap_to_width(fig: Figure, text: Text, width_px: float) -> None:
    """Break each line of `text` at spaces so that none is wider than `width_px` (a word longer than that stays
    whole)."""
    lines = []
    for line in text.get_text().split("\n"):
        chars = len(line)
        wrapped = [line]
        while chars > 10 and max(_width(fig, text, part) for part in wrapped) > width_px:
            chars = int(chars * 0.9)
            wrapped = textwrap.wrap(line, chars, break_long_words=False) or [line]
        lines += wrapped
    text.set_text("\n".join(lines))


def fit_titles(fig: Figure) -> None:
    """Wrap the figure's title to the figure's width, and its panels' titles to their panels' (as placed before
    the layout, which only widens them)."""
    fig.set_dpi(DPI)
    if fig._suptitle is not None:  # the suptitle has no public accessor
        wrap_to_width(fig, fig._suptitle, fig.bbox.width * TITLE_SHARE)
    for ax in fig.axes:
        if ax.get_title():
            wrap_to_width(fig, ax.title, ax.get_position().width * fig.bbox.width * TITLE_SHARE)


def lay_out(fig: Figure) -> None:
    """Place every text of `fig` where drawing it would, without drawing its panels (most of a drawing's cost): the
    layout engine's work, then the legends and tables, whose texts are placed only as they are drawn."""
    fig.set_dpi(DPI)
    if fig.get_layout_engine() is not None:
        fig.get_layout_engine().execute(fig)
    renderer = fig._get_renderer()
    for artist in (*fig.legends, *(ax.get_legend() for ax in fig.axes), *(t for ax in fig.axes for t in ax.tables)):
        if artist is not None:
            artist.draw(renderer)


def _not_drawn(axis: Axis, shown: bool) -> set[int]:
    """ids of the texts of `axis` that are not drawn: all of them where the axis is not `shown`, else the labels of
    ticks outside the view (they keep stale positions)."""
    if not shown:
        return {id(text) for text in axis.findobj(Text)}
    drawn = {id(tick) for tick in axis._update_ticks()}  # the ticks Axis.draw draws
    return {id(label) for tick in (*axis.majorTicks, *axis.minorTicks) if id(tick) not in drawn
            for label in (tick.label1, tick.label2)}


def texts_outside(fig: Figure) -> list[str]:
    """Every drawn text of `fig` (titles, axis and tick labels, legends, annotations, table cells) that reaches past
    its canvas, as the figure was last drawn: each as its text and the edges it crosses."""
    renderer = fig._get_renderer()
    canvas = fig.bbox
    hidden = set()
    for ax in fig.axes:
        if not ax.get_visible():
            hidden |= {id(text) for text in ax.findobj(Text)}
        for axis in (ax.xaxis, ax.yaxis):
            hidden |= _not_drawn(axis, ax.axison and axis.get_visible())
    out = []
    for text in fig.findobj(Text):
        if id(text) in hidden or not text.get_visible() or not text.get_text().strip():
            continue
        box = text.get_window_extent(renderer)
        edges = [side for side, past in (("left", box.x0 < canvas.x0 - TOLERANCE_PX),
                                         ("right", box.x1 > canvas.x1 + TOLERANCE_PX),
                                         ("bottom", box.y0 < canvas.y0 - TOLERANCE_PX),
                                         ("top", box.y1 > canvas.y1 + TOLERANCE_PX)) if past]
        if edges:
            out.append(f"{text.get_text()!r} ({', '.join(edges)})")
    return out

