"""The study page `loafing figures` writes beside its figures (index.html): its content, and in a real browser."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import html  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from html.parser import HTMLParser  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from loafing.figures import FIGURES, FigureOutcome, make_figures  # noqa: E402
from loafing.figures.report import CAPTIONS, markdown_html, study_page  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "results" / "quick"
# Figures and tables from each CSV the quick study wrote, and two it cannot draw (skipped, with their reasons).
NAMES = ["fig4", "fig6", "figr2", "table1", "tabler4", "fig3", "gap"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class _Cells(HTMLParser):
    """Every table row of an HTML page as the list of its cells' text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _md_rows(text: str) -> list[list[str]]:
    """The rows of a markdown pipe table (header and body, not the alignment rule), cell text unescaped."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    return [row for row in rows if not all(re.fullmatch(r":?-{3,}:?", cell) for cell in row)]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> tuple[Path, list[FigureOutcome], str]:
    out = tmp_path_factory.mktemp("quick-page")
    outcomes = make_figures(QUICK, out, NAMES)
    return out, outcomes, (out / "index.html").read_text(encoding="utf-8")


def test_every_registered_figure_has_a_caption():
    assert set(CAPTIONS) == set(FIGURES)


def test_page_shows_every_figure_with_its_caption_and_every_table_with_its_text(drawn):
    """Each PNG drawn is an <img> (a figure) or a link (a table) with its registry caption, its CSVs and runs;
    every cell of every table's markdown is a cell of the page."""
    out, outcomes, page = drawn
    done = [o for o in outcomes if not o.skipped]
    assert {o.name for o in done} == {"fig4", "fig6", "figr2", "table1", "tabler4"}
    cells = _Cells()
    cells.feed(page)
    words = html.unescape(re.sub(r"<[^>]+>", "", page))  # the page's text, as a reader sees it
    runs = sorted(run["run"] for run in json.loads((QUICK / "preset.json").read_text())["runs"])
    for outcome in done:
        spec = FIGURES[outcome.name]
        block = page[page.index(f'id="{outcome.name}"'):]
        block = block[:block.index("</figure>" if spec.kind == "figure" else "</section>")]
        assert html.escape(CAPTIONS[outcome.name], quote=True) in block
        assert f"<code>{spec.table}.csv</code>" in block
        if spec.table in ("measure", "train_log"):  # every run of the study is measured and logged
            assert f"rows of {len(runs)} runs: " + ", ".join(f"<code>{r}</code>" for r in runs) in block
        for path in outcome.paths:
            assert path.exists()
            if spec.kind == "figure":
                assert f'<img src="{path.name}"' in block
            else:
                assert f'href="{path.name}"' in block
        for path in (p for p in outcome.paths if p.suffix == ".md"):
            text = path.read_text()
            for row in _md_rows(text):
                assert row in cells.rows, (path.name, row)
            note = text.rstrip().split("\n\n")[-1]
            if not note.startswith("|"):  # what is compared with what, under the table
                assert note.replace("`", "") in words
    for outcome in outcomes:
        if outcome.skipped:
            assert f"<li><code>{outcome.name}</code>: {html.escape(outcome.skipped, quote=True)}</li>" in page


def test_page_holds_the_study_settings_and_its_record(drawn):
    """preset.json's settings (shared ones once, the others per run) and the README's date and machine."""
    _, _, page = drawn
    cells = _Cells()
    cells.feed(page)
    preset = json.loads((QUICK / "preset.json").read_text())
    assert ["evaluation.calib_size", str(preset["evaluation"]["calib_size"])] in cells.rows
    assert ["epochs", "10"] in cells.rows  # every run trained 10 epochs
    lams = {row[0]: row for row in cells.rows if row and row[0].startswith("st-lam")}
    assert "0.3" in lams["st-lam0.3-seed0"] and "3.0" in lams["st-lam3-seed0"]
    assert "2-core laptop CPU with torch 2.15.0" in page and "2026-11-23" in page
    assert "<h1>Study quick</h1>" in page


def test_page_is_self_contained_and_the_same_when_redrawn_elsewhere(drawn, tmp_path):
    """No script, no stylesheet or address to load, no absolute path: the page only depends on the CSVs."""
    out, outcomes, page = drawn
    assert "<script" not in page and "<link" not in page and "@import" not in page
    targets = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert targets and all(not re.match(r"[a-z]+:|//|/", t) for t in targets), targets
    assert str(out) not in page and str(ROOT) not in page
    for path in (p for o in outcomes for p in o.paths):
        shutil.copy(path, tmp_path / path.name)
    moved = [FigureOutcome(o.name, [tmp_path / p.name for p in o.paths], o.skipped, o.group, o.sources, o.runs)
             for o in outcomes]
    assert study_page(moved, QUICK, tmp_path) == page


def test_markdown_is_escaped_and_links_become_text_or_anchors():
    text = ("# A <b>title</b>\n\nSee [the table](../../figures/x/table1.md) and [away](https://x.org/a).\n"
            "![Fig. 4](fig4.png) `a<b> **not bold**` **bold** *it*\n\n- one\n  wrapped\n- two\n\n"
            "| a | b |\n| --- | ---: |\n| x\\|y | 2 |\n\n```\n<script>x</script>\n```\n")
    got = markdown_html(text, shift=1, anchors={"table1.md": "table1", "fig4.png": "fig4"})
    assert got.splitlines() == [
        "<h2>A &lt;b&gt;title&lt;/b&gt;</h2>",
        '<p>See <a href="#table1">the table</a> and away. <a href="#fig4">[Fig. 4]</a> '
        "<code>a&lt;b&gt; **not bold**</code> <strong>bold</strong> <em>it</em></p>",
        "<ul><li>one wrapped</li><li>two</li></ul>",
        '<div class="table"><table><thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>x|y</td>'
        '<td class="n">2</td></tr></tbody></table></div>',
        "<pre><code>&lt;script&gt;x&lt;/script&gt;</code></pre>",
    ]


def test_hostile_readme_and_preset_become_text(tmp_path):
    (tmp_path / "README.md").write_text("<script>alert(1)</script> [x](javascript:alert(1)) <img src=x>\n")
    (tmp_path / "preset.json").write_text(json.dumps({"preset": "<i>p</i>", "runs": [{"run": "<b>r</b>"}]}))
    page = study_page([FigureOutcome("fig4", [], "measure.csv not found")], tmp_path, tmp_path)
    assert "<script" not in page and "javascript:" not in page and "<img" not in page and "<i>p" not in page
    assert "&lt;script&gt;" in page and "Study &lt;i&gt;p&lt;/i&gt;" in page and "&lt;b&gt;r&lt;/b&gt;" in page


def _browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


# Set before any image loads (the first thing in <head>), read after the load event: which images failed.
PROBE = """<script>
var loadErrors = [];
window.addEventListener("error", function (e) { loadErrors.push((e.target && e.target.src) || String(e.message)); },
                        true);
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images), body = document.body;
  body.setAttribute("data-images", images.length);
  body.setAttribute("data-rendered", images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length);
  body.setAttribute("data-errors", loadErrors.join(" "));
});
</script>"""


def _render(browser: str, page: Path, profile: Path) -> dict[str, str]:
    """Load `page` in the headless browser and return the <body> attributes the probe set."""
    done = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
                           "--virtual-time-budget=20000", "--dump-dom", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body, done.stderr[-2000:]
    return dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))


@pytest.mark.skipif(_browser() is None, reason=f"no headless browser ({', '.join(BROWSERS)}) on PATH; "
                                                "Debian: apt-get install chromium")
def test_page_loads_in_a_browser_and_every_image_renders(drawn, tmp_path):
    out, outcomes, page = drawn
    probed = page.replace("<head>", "<head>" + PROBE, 1)
    (out / "probe.html").write_text(probed, encoding="utf-8")
    seen = _render(_browser(), out / "probe.html", tmp_path / "profile")
    figures = [o for o in outcomes if not o.skipped and FIGURES[o.name].kind == "figure"]
    assert seen["images"] == str(len(figures)) == "3"
    assert seen["rendered"] == seen["images"] and seen["errors"] == ""
    # The probe sees a broken image: a page whose figure file is missing fails this test.
    (out / "broken.html").write_text(probed.replace('src="fig6.png"', 'src="missing.png"'), encoding="utf-8")
    seen = _render(_browser(), out / "broken.html", tmp_path / "profile")
    assert seen["rendered"] == "2" and seen["errors"].endswith("/missing.png")
