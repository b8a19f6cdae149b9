"""Every relative link and image in the Markdown the project ships points to a file that exists.

A moved page or a renamed plot (a report's ``bars_*.png`` became ``mae_*.png``) leaves links that
render as broken images or 404s on GitHub; this test names each one. Links inside code blocks are not
links; URLs (``https:``, ``mailto:``) and in-page anchors (``#...``) are not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "benchmarks").rglob("*.md")),
         *sorted((ROOT / "examples").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def broken_links(page: Path) -> list[str]:
    """Relative link targets of ``page`` (fenced code removed, anchors stripped) that do not exist."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    targets = (m.group(1).split("#")[0] for m in LINK.finditer(text))
    return [t for t in targets if t and not re.match(r"[a-z]+:", t) and not (page.parent / t).exists()]


def test_every_relative_link_in_the_docs_exists(tmp_path):
    assert len(PAGES) > 10
    broken = {str(page.relative_to(ROOT)): links for page in PAGES if (links := broken_links(page))}
    assert not broken, f"links to files that do not exist: {broken}"
    page = tmp_path / "page.md"
    page.write_text("![plot](gone.png) [ok](page.md) [web](https://x.org/a.png) [anchor](#top)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    assert broken_links(page) == ["gone.png"]
