"""Every committed figure is what its study's committed CSVs draw today, and no text of a figure is cut off.

`figures/<study>/` must hold exactly the files `loafing figures --results results/<study> --out figures/<study>` writes,
with the same tables (.md) and study page (index.html), word for word. The figures are laid out without their pixels
(`make_figures(..., png=False)`, about 20 s for every study instead of 33 s with PNGs on 2 cores), which places every
text where the PNG has it; the layout's warnings and texts past the canvas fail the test.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from loafing.figures import make_figures  # noqa: E402
from loafing.figures.canvas import DPI, fit_titles, lay_out, texts_outside  # noqa: E402
from loafing.figures.tables import render_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p.name for p in (ROOT / "results").iterdir() if (ROOT / "figures" / p.name).is_dir())


def test_every_committed_figures_folder_has_its_results():
    """A figures folder without a results twin could never be redrawn (and this test would not see it)."""
    folders = sorted(p.name for p in (ROOT / "figures").iterdir() if p.is_dir())
    assert folders == STUDIES and "quick" in STUDIES


@pytest.mark.parametrize("study", STUDIES)
def test_committed_figures_are_what_the_committed_csvs_draw(study, tmp_path):
    redraw = f"loafing figures --results results/{study} --out figures/{study}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcomes = make_figures(ROOT / "results" / study, tmp_path, png=False)
    # Seaborn's use of matplotlib's deprecated arguments is theirs; any other warning is a layout that failed
    # (constrained_layout collapsing an axes), a text off the canvas or a results file that is no table.
    said = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert not said, said
    assert [(o.name, o.group, o.clipped) for o in outcomes if o.clipped] == []
    drawn = {p.name for o in outcomes for p in o.paths} | {"index.html"}
    committed = {p.name for p in (ROOT / "figures" / study).iterdir()}
    assert sorted(committed - drawn) == [], f"stale: delete them (`{redraw}` no longer draws them)"
    assert sorted(drawn - committed) == [], f"missing: run `{redraw}` and commit them"
    for name in sorted(n for n in drawn if n.endswith((".md", ".html"))):
        assert (tmp_path / name).read_text() == (ROOT / "figures" / study / name).read_text(), \
            f"figures/{study}/{name} differs from what its CSVs draw: run `{redraw}`"


@pytest.mark.parametrize("png", [True, False])
def test_a_title_wider_than_its_figure_is_found_and_wrapping_fits_it(png, tmp_path):
    """Both ways of placing the texts (drawing the PNG, laying out without pixels) find a cut-off title."""
    def figure() -> plt.Figure:
        fig, ax = plt.subplots(figsize=(3, 2), layout="constrained")
        ax.plot([0, 1], [0, 1])
        fig.suptitle("a title of about a hundred and twenty characters, which a figure three inches wide cannot "
                     "hold on one line")
        return fig

    def place(fig: plt.Figure) -> list[str]:
        if png:
            fig.savefig(tmp_path / "f.png", dpi=DPI)
        else:
            lay_out(fig)
        return texts_outside(fig)

    fig = figure()
    fig.set_dpi(DPI)
    try:
        [clipped] = place(fig)
        assert clipped.startswith("'a title of about") and clipped.endswith("(left, right)")
        fit_titles(fig)
        assert place(fig) == [] and fig.get_suptitle().count("\n") >= 2
    finally:
        plt.close(fig)


def test_tick_labels_outside_the_view_and_of_hidden_axes_are_not_counted():
    fig, (ax, hidden) = plt.subplots(1, 2, figsize=(4, 2), layout="constrained")
    try:
        ax.plot([0, 100], [0, 1])
        lay_out(fig)
        ax.set_xlim(40, 60)  # the ticks at 0 and 100 keep their old places; they are not drawn
        hidden.set_xticks([-1000, 1000], ["far left", "far right"])
        hidden.axis("off")
        lay_out(fig)
        assert texts_outside(fig) == []
        note = ax.annotate("off the canvas", (0.5, 0.5), xycoords="figure fraction", xytext=(400, 0),
                           textcoords="offset points")
        note.set_in_layout(False)  # else the layout squeezes the panels to make room for it
        lay_out(fig)
        assert texts_outside(fig) == ["'off the canvas' (right)"]
    finally:
        plt.close(fig)


def test_a_one_row_table_is_as_tall_as_its_title_table_and_note_need():
    table = pd.DataFrame({"scheme": ["CT"], "seeds": [1], "main top-1": [91.234]})
    table.attrs["note"] = "One run: no interval over seeds. " * 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constrained_layout's collapse was a UserWarning
        fig = render_table(table, "Table 1: main network and sub-networks top-1 (%)\nresnet20-cifar, cifar10")
        try:
            fig.savefig(Path("/dev/null"), format="png", dpi=DPI)
            assert texts_outside(fig) == []
            renderer = fig._get_renderer()
            title = fig.get_suptitle()
            [note] = [t for t in fig.texts if t.get_text().startswith("One run")]
            top = fig._suptitle.get_window_extent(renderer)
            cells = fig.axes[0].tables[0].get_window_extent(renderer)
            bottom = note.get_window_extent(renderer)
            assert title.count("\n") == 1 and "91.23" in [c.get_text().get_text() for c in
                                                          fig.axes[0].tables[0].get_celld().values()]
            assert bottom.y1 < cells.y0 < cells.y1 < top.y0  # note below the table, title above: none overlap
            assert note.get_text().count("\n") >= 1  # the note wraps to the table's width
        finally:
            plt.close(fig)
