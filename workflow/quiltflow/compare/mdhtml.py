"""The Markdown subset the workflow writes (headings, paragraphs, one pipe table, bullet lists,
``**bold**`` and ```code```) as a self-contained HTML fragment, for the Snakemake report.

No Markdown library: the comparison's Markdown is generated here, so its subset is known, and the
report environment (``envs/report.yaml``) stays as it is. Every text is HTML-escaped."""

from __future__ import annotations

import html
import re

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")
_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+$")


def _inline(text: str) -> str:
    escaped = html.escape(text.strip(), quote=False)
    return _BOLD.sub(r"<strong>\1</strong>", _CODE.sub(r"<code>\1</code>", escaped))


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table(rows: list[str], table_id: str | None) -> list[str]:
    """A pipe table (first row the header, the ``| --- |`` line skipped) in a scrollable box."""
    body = [r for r in rows[1:] if not _SEPARATOR.match(r.strip())]
    attr = f' id="{table_id}"' if table_id else ""
    out = [f'<div style="overflow-x:auto"><table{attr}>', "<thead><tr>"]
    out += [f"<th>{_inline(c)}</th>" for c in _cells(rows[0])]
    out.append("</tr></thead><tbody>")
    for row in body:
        out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(row)) + "</tr>")
    out.append("</tbody></table></div>")
    return out


def markdown_to_html(text: str, table_id: str | None = None) -> str:
    """Blocks are separated by blank lines; a block is a heading, a table, a list or a paragraph.
    The first table gets ``id=table_id`` (a stable hook for styles and tests)."""
    out: list[str] = []
    blocks = [b.splitlines() for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    for lines in blocks:
        first = lines[0]
        heading = re.match(r"^(#{1,6})\s+(.*)$", first)
        if heading and len(lines) == 1:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif all(line.lstrip().startswith("|") for line in lines):
            out += _table(lines, table_id)
            table_id = None
        elif all(line.startswith("- ") for line in lines):
            out += ["<ul>", *(f"<li>{_inline(line[2:])}</li>" for line in lines), "</ul>"]
        else:
            out.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(out) + "\n"
