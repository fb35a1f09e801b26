"""A tiny document model rendered both as Markdown and as self-contained HTML.

The report is built once as a list of blocks (headings, paragraphs, bullet
lists, tables, figures) and rendered twice, so ``report.md`` and
``report.html`` can never disagree. The HTML inlines every figure as a
base64 data URI: one file that can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Document", "percent", "number"]

_PERCENT_METRICS = {"accuracy", "miou", "pixel_accuracy"}


def percent(value: float | None) -> str:
    """``0.9531`` -> ``95.3 %``; ``None`` -> ``—``."""
    return "—" if value is None else f"{100.0 * value:.1f} %"


def number(metric: str, value: float | None) -> str:
    """A metric value as the report prints it: rates in percent, the rest to 3 digits."""
    if value is None:
        return "—"
    if metric in _PERCENT_METRICS:
        return percent(value)
    return f"{value:.3g}"


@dataclass
class Document:
    """Blocks of a report, in order; see :meth:`markdown` and :meth:`html`."""

    title: str
    blocks: list[tuple[str, tuple]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", (text,)))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", (text,)))

    def bullets(self, items: Sequence[str]) -> None:
        if items:
            self.blocks.append(("bullets", (list(items),)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", (list(header), [list(map(str, r)) for r in rows])))

    def figure(self, file_name: str, caption: str) -> None:
        """A PNG beside the report (referenced by name in Markdown, inlined in HTML)."""
        self.blocks.append(("figure", (file_name, caption)))

    # -- rendering ----------------------------------------------------------------
    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, args in self.blocks:
            if kind == "heading":
                out += [f"## {args[0]}", ""]
            elif kind == "paragraph":
                out += [args[0], ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in args[0]] + [""]
            elif kind == "table":
                header, rows = args
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join(" --- " for _ in header) + "|")
                out += ["| " + " | ".join(row) + " |" for row in rows]
                out.append("")
            elif kind == "figure":
                out += [f"![{args[1]}]({args[0]})", "", f"*{args[1]}*", ""]
        return "\n".join(out)

    def html(self, figure_dir: str | Path) -> str:
        """Self-contained HTML; figures are read from ``figure_dir`` and inlined."""
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, args in self.blocks:
            if kind == "heading":
                body.append(f"<h2>{html.escape(args[0])}</h2>")
            elif kind == "paragraph":
                body.append(f"<p>{_inline(args[0])}</p>")
            elif kind == "bullets":
                items = "".join(f"<li>{_inline(item)}</li>" for item in args[0])
                body.append(f"<ul>{items}</ul>")
            elif kind == "table":
                header, rows = args
                head = "".join(f"<th>{_inline(h)}</th>" for h in header)
                cells = "".join(
                    "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                    for row in rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            elif kind == "figure":
                body.append(_figure_html(Path(figure_dir) / args[0], args[1]))
        return _PAGE.format(title=html.escape(self.title), body="\n".join(body))


def _inline(text: str) -> str:
    """Escape, then render the Markdown the report uses inline: `code` and **bold**."""
    escaped = html.escape(text)
    parts = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def _figure_html(path: Path, caption: str) -> str:
    if not path.is_file():
        return f"<p><em>figure {html.escape(path.name)} is missing</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
figcaption {{ font-style: italic; color: #555; }}
code {{ background: #f3f3f3; padding: 0 0.2rem; }}
</style></head>
<body>
{body}
</body></html>
"""
