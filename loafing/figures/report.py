"""One HTML page per study: every figure drawn with its caption, every table, the study's settings and its record.

`study_page` is pure: from the outcomes of `make_figures`, the results folder and the page's folder, the page's
text. It is self-contained: images are the PNGs beside it (relative links), its style is inline, it runs no script
and loads no address, and nothing in it changes between two drawings from the same CSVs (no clock, no absolute
path): the dates it shows are those its results folder records (its README). Markdown (the tables' files, the
README) is rendered for the subset those files use, escaped first so that no text of a file becomes markup.
"""
from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence
from urllib.parse import quote

from loafing.figures import FIGURES, FigureOutcome
from loafing.io import atomic_path

PAGE = "index.html"
# What each figure or table of the registry shows; the page adds which CSVs it read and which runs were in them.
CAPTIONS: dict[str, str] = {
    "fig1": "Top-1 of architectures inside bigger CT networks against the same architectures trained alone "
            "(bars: mean ± std over seeds); full-space ST hosts get bars of their own. Inside a host, an "
            "architecture is the host's ordered plan of its depths.",
    "inside": "Top-1 of each smaller architecture (rows) inside each bigger CT network or foreign checkpoint "
              "(columns), and of each network on its own.",
    "fig4": "Top-1 of every ordered sub-network, one panel per ST scheme against CT; sub-networks trained alone "
            "as green stars.",
    "fig5": "Max, mean and std of sub-network top-1 against the number of sub-networks in ST's sampling space "
            "(0 = CT).",
    "fig6": "Top-1 drop after (a) deleting one layer, (b) deleting several layers, (c) permuting layers, CT vs ST.",
    "fig7": "Distribution of KL(main ‖ sub-network) over the sub-networks at each recorded epoch, CT vs ST.",
    "figr2": "Training loss and BN-recalibrated test top-1 per epoch, CT vs ST; a star marks each scheme's best.",
    "figr3": "Main-network and mean sub-network top-1 of full-space ST against λ; CT as a dashed line.",
    "fig3": "ST per sampling rule (ordered, stochastic, raw) and CT: main-network top-1 and sub-network "
            "mean ± std.",
    "table1": "Per scheme: main-network top-1 and the sub-networks' top-1, and each scheme's sub-networks against "
              "CT's; the note under the table says what is paired with what.",
    "tabler3": "Per training method: training time, peak memory, main-network top-1 and the sub-networks' top-1.",
    "figr4": "Fig. 6's three panels for self-distillation beside CT and ST.",
    "figr5": "Fig. 6's three panels for stochastic depth beside CT and ST.",
    "figr6": "Fig. 6's three panels for layer supervision beside CT and ST.",
    "figr7": "Fig. 6's three panels for stage supervision beside CT and ST.",
    "figr8": "Top-1 of every measured sub-network under each training method: lines over the sub-networks, and "
             "their spread per method.",
    "tabler4": "Per scheme: training time, examples per second and peak memory, with ratios to CT.",
    "influence": "Block influence (1 − cosine of a block's input and output) per block, and the top-1 drop when "
                 "that block alone is deleted, per run.",
    "ablation": "Each arm of an ablation (its runs over seeds) against ST: main top-1 and NLL, the sub-networks, "
                "time per step and memory; the note under the table says what is paired with what.",
    "gap": "Per host run and architecture trained alone: top-1 inside and alone, and inside − alone with its 95% "
           "CI paired over the test images.",
}
STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:72rem;margin:1.5rem auto;padding:0 1rem;color:#222}
figure{margin:1.5rem 0;border-top:1px solid #ddd;padding-top:.8rem}figure img{max-width:100%;height:auto}
figcaption,.note{font-size:.9rem;color:#444}table{border-collapse:collapse;font-size:.82rem;margin:.6rem 0}
td,th{border:1px solid #ccc;padding:.15rem .45rem}th{background:#f3f3f3}td.n{text-align:right}
td:first-child{white-space:nowrap}.table{overflow-x:auto}code,pre{background:#f6f6f6}pre{padding:.5rem}
section{margin-top:2rem}h1{font-size:1.6rem}h2{border-bottom:2px solid #333}"""
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_ITEM = re.compile(r"^\s*(?:[-*]|\d+\.)\s+(.*)$")
_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]*)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?![\s*])(.+?)(?<![\s*])\*(?![\w*])")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _inline(text: str, anchors: Mapping[str, str]) -> str:
    """One line's inline markup. A link or image becomes its text (the page lives elsewhere and loads no
    address), linked to this page's own copy where it names a file the page shows; code spans stay verbatim."""
    links: list[str] = []

    def link(match: re.Match) -> str:
        target = anchors.get(PurePosixPath(match.group(3).split("#")[0]).name)
        shown = (f"[{_e(match.group(2))}]" if match.group(1) else _inline(match.group(2), {}))
        links.append(f'<a href="#{target}">{shown}</a>' if target else shown)
        return f"\0{len(links) - 1}\0"

    parts = _LINK.sub(link, text).split("`")
    if len(parts) % 2 == 0:  # an unmatched backtick is a backtick
        parts[-2:] = [parts[-2] + "`" + parts[-1]]
    out = []
    for i, part in enumerate(parts):
        part = html.escape(part, quote=False)
        if i % 2:
            out.append(f"<code>{part}</code>")
        else:
            out.append(_ITALIC.sub(r"<em>\1</em>", _BOLD.sub(r"<strong>\1</strong>", part)))
    return re.sub("\0(\\d+)\0", lambda m: links[int(m.group(1))], "".join(out))


def _cells(line: str) -> list[str]:
    line = line.strip().removeprefix("|")
    line = line[:-1] if line.endswith("|") and not line.endswith("\\|") else line
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)]


def _md_table(lines: list[str], anchors: Mapping[str, str]) -> str:
    head, rule, rows = _cells(lines[0]), _cells(lines[1]), [_cells(line) for line in lines[2:]]
    right = [cell.endswith(":") and not cell.startswith(":") for cell in rule]

    def cell(tag: str, text: str, i: int) -> str:
        align = ' class="n"' if tag == "td" and i < len(right) and right[i] else ""
        return f"<{tag}{align}>{_inline(text, anchors)}</{tag}>"

    body = "".join("<tr>" + "".join(cell("td", c, i) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return ('<div class="table"><table><thead><tr>' + "".join(cell("th", c, i) for i, c in enumerate(head))
            + f"</tr></thead><tbody>{body}</tbody></table></div>")


def _block(lines: list[str], i: int) -> str:
    """What kind of block line i opens: 'code', 'heading', 'table', 'list' or 'paragraph'."""
    line = lines[i]
    if line.lstrip().startswith("```"):
        return "code"
    if _HEADING.match(line):
        return "heading"
    if line.lstrip().startswith("|") and i + 1 < len(lines) and _RULE.match(lines[i + 1].strip()):
        return "table"
    return "list" if _ITEM.match(line) else "paragraph"


def markdown_html(text: str, shift: int = 0, anchors: Mapping[str, str] | None = None) -> str:
    """`text` (markdown) as HTML; headings move `shift` levels down; a link to a file named in `anchors` points
    at that anchor of the page."""
    anchors = anchors or {}
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        kind = _block(lines, i) if lines[i].strip() else "blank"
        if kind == "blank":
            i += 1
        elif kind == "code":
            end = next((j for j in range(i + 1, len(lines)) if lines[j].lstrip().startswith("```")), len(lines))
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1:end]), quote=False) + "</code></pre>")
            i = end + 1
        elif kind == "heading":
            marks, title = _HEADING.match(lines[i]).groups()
            level = min(len(marks) + shift, 6)
            out.append(f"<h{level}>{_inline(title, anchors)}</h{level}>")
            i += 1
        elif kind == "table":
            end = i + 2
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                end += 1
            out.append(_md_table(lines[i:end], anchors))
            i = end
        elif kind == "list":
            items: list[str] = []
            while i < len(lines) and lines[i].strip() and (not items or _block(lines, i) in ("list", "paragraph")):
                item = _ITEM.match(lines[i])
                if item:
                    items.append(item.group(1))
                else:  # a wrapped item goes on over the next lines
                    items[-1] += " " + lines[i].strip()
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(item, anchors)}</li>" for item in items) + "</ul>")
        else:
            paragraph = [lines[i].strip()]
            i += 1
            while i < len(lines) and lines[i].strip() and _block(lines, i) == "paragraph":
                paragraph.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(paragraph), anchors)}</p>")
    return "\n".join(out)


def _link(path: Path, page_dir: Path) -> str:
    """A relative URL from the page to a file beside it."""
    return quote(Path(os.path.relpath(path, page_dir)).as_posix())


def _anchor(outcome: FigureOutcome) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", outcome.name + (f"-{outcome.group}" if outcome.group else ""))


def _heading(outcome: FigureOutcome) -> str:
    title = FIGURES[outcome.name].title if outcome.name in FIGURES else outcome.name
    return _e(title) + (f" <small>({_e(outcome.group)})</small>" if outcome.group else "")


def _provenance(outcome: FigureOutcome) -> str:
    """Which CSVs the figure read and which runs their rows came from."""
    text = "From " + ", ".join(f"<code>{_e(s)}</code>" for s in outcome.sources) if outcome.sources else ""
    if outcome.runs:
        text += f"{'; rows' if text else 'Rows'} of {len(outcome.runs)} run{'s' * (len(outcome.runs) != 1)}: "
        text += ", ".join(f"<code>{_e(r)}</code>" for r in outcome.runs)
    return text + "." if text else ""


def _figure(outcome: FigureOutcome, page_dir: Path) -> str:
    png = next(p for p in outcome.paths if p.suffix == ".png")
    return (f'<figure id="{_anchor(outcome)}"><img src="{_link(png, page_dir)}" alt="{_e(outcome.name)}">'
            f"<figcaption><strong>{_heading(outcome)}.</strong> {_e(CAPTIONS.get(outcome.name, ''))} "
            f"{_provenance(outcome)}</figcaption></figure>")


def _table(outcome: FigureOutcome, page_dir: Path) -> str:
    markdown = [p for p in outcome.paths if p.suffix == ".md"]
    body = (markdown_html(markdown[0].read_text(encoding="utf-8"), shift=2) if markdown
            else f"<h3>{_heading(outcome)}</h3>")
    files = ", ".join(f'<a href="{_link(p, page_dir)}">{_e(p.name)}</a>' for p in outcome.paths)
    return (f'<section id="{_anchor(outcome)}" class="table">{body}<p class="note">'
            f'{_e(CAPTIONS.get(outcome.name, ""))} {_provenance(outcome)} Files: {files}.</p></section>')


def _key_values(title: str, values: Mapping) -> str:
    flat = {f"{key}.{inner}" if isinstance(value, dict) else key: v for key, value in values.items()
            for inner, v in (value.items() if isinstance(value, dict) else [(0, value)])}
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_value(v))}</td></tr>" for k, v in flat.items())
    return f"<h3>{_e(title)}</h3><table>{rows}</table>" if flat else ""


def _value(value: object) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) or value is None else str(value)


def _settings(preset: Mapping) -> str:
    """The study's settings as its results folder records them (preset.json): shared ones once, then per run."""
    if not preset:
        return "<p>This results folder holds no <code>preset.json</code>: the README below says how it was made.</p>"
    parts = [f"<p>{_e(preset['description'])}</p>"] if preset.get("description") else []
    parts.append(_key_values("The study", {k: v for k, v in sorted(preset.items())
                                           if k not in ("description", "runs")}))
    runs = [run for run in preset.get("runs", []) if isinstance(run, dict)]
    if runs:
        keys = sorted({key for run in runs for key in run})
        same = {k: runs[0].get(k) for k in keys if all(run.get(k) == runs[0].get(k) for run in runs)}
        parts.append(_key_values(f"Every run ({len(runs)} runs)", same))
        varying = sorted((k for k in keys if k not in same), key=lambda k: (k != "run", k))
        head = "".join(f"<th>{_e(k)}</th>" for k in varying)
        rows = "".join("<tr>" + "".join(f"<td>{_e(_value(run.get(k)))}</td>" for k in varying) + "</tr>"
                       for run in runs)
        if varying:
            parts.append(f'<h3>Per run</h3><div class="table"><table><tr>{head}</tr>{rows}</table></div>')
    return "\n".join(parts)


def study_page(outcomes: Sequence[FigureOutcome], results_dir: str | Path, page_dir: str | Path) -> str:
    """The study's page: figures with captions, tables, what was not drawn and why, settings, the results' README."""
    results_dir, page_dir = Path(results_dir), Path(page_dir)
    drawn = [o for o in outcomes if not o.skipped and o.paths]
    figures = [o for o in drawn if (FIGURES[o.name].kind if o.name in FIGURES else "figure") == "figure"
               and any(p.suffix == ".png" for p in o.paths)]
    tables = [o for o in drawn if o not in figures]
    folder = results_dir.resolve().name
    preset_file = results_dir / "preset.json"
    try:  # a damaged preset.json costs the page its settings, not the figures already drawn
        preset = json.loads(preset_file.read_text(encoding="utf-8")) if preset_file.is_file() else {}
    except (OSError, ValueError):
        preset = {}
    preset = preset if isinstance(preset, dict) else {}
    name = str(preset.get("preset") or folder)
    anchors = {p.name: _anchor(o) for o in drawn for p in o.paths}
    readme = results_dir / "README.md"
    contents = "".join(f'<li><a href="#{_anchor(o)}">{_heading(o)}</a></li>' for o in figures + tables)
    skipped = "".join(f"<li><code>{_e(o.name)}</code>{f' ({_e(o.group)})' if o.group else ''}: {_e(o.skipped)}"
                      f"</li>" for o in outcomes if o.skipped)
    sections = [
        f"<h1>Study {_e(name)}</h1>",
        f"<p>What <code>loafing figures</code> drew from the tidy CSVs of the results folder "
        f"<code>{_e(folder)}</code>: "
        f"{len(figures)} figure{'s' * (len(figures) != 1)}, {len(tables)} table{'s' * (len(tables) != 1)}; "
        f"then the study's settings and its README.</p>",
        f"<nav><ul>{contents}</ul></nav>" if contents else "",
        "<section><h2>Figures</h2>" + "\n".join(_figure(o, page_dir) for o in figures) + "</section>"
        if figures else "",
        "<section><h2>Tables</h2>" + "\n".join(_table(o, page_dir) for o in tables) + "</section>" if tables else "",
        f'<section id="not-drawn"><h2>Not drawn</h2><ul>{skipped}</ul></section>' if skipped else "",
        f'<section id="settings"><h2>Settings</h2>{_settings(preset)}</section>',
        f"<section id=\"record\"><h2>The results folder's README: what was run, where and when</h2>"
        f"{markdown_html(readme.read_text(encoding='utf-8', errors='replace'), 2, anchors)}</section>"
        if readme.is_file() else "",
    ]
    body = "\n".join(part for part in sections if part)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(name)}: figures and tables</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
            f"</body></html>\n")


def write_study_page(outcomes: Sequence[FigureOutcome], results_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the study's page as `out_dir/index.html` atomically; return its path."""
    path = Path(out_dir) / PAGE
    text = study_page(outcomes, results_dir, out_dir)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
