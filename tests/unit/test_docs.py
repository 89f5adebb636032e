"""README.md is the front door: short, the two commands first, and every reference page in docs/ one link away;
no relative link in README.md or docs/*.md points at a missing file or heading."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from tests.conftest import REPO

README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))  # docs/evidence/ holds generated reports: not pages of their own
QUICKSTART = "bash scripts/quickstart.sh"
TEST_COMMAND = "bash scripts/run_tests.sh"

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def prose(text: str) -> str:
    """The text outside fenced code blocks and code spans, where a markdown link is a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (link targets, backticks and emphasis gone), lowercase,
    punctuation dropped except '-' and '_', each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(FENCE.sub("", path.read_text())):
        base = anchor(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text())) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def fenced_blocks(text: str) -> list[str]:
    return [m.group(0) for m in FENCE.finditer(text)]


def test_readme_is_under_8_kib():
    size = len(README.read_bytes())
    assert size < 8192, f"README.md is {size} bytes: move reference material into a docs/ page and link it"


def test_readme_starts_with_the_quickstart_and_the_test_command():
    first = "\n".join(fenced_blocks(README.read_text())[:2])
    assert QUICKSTART in first and TEST_COMMAND in first, first
    for command in (QUICKSTART, TEST_COMMAND):
        assert (REPO / command.split()[1]).is_file(), command
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text(), "CI runs another test command than the README names"


def test_every_relative_link_in_readme_and_docs_resolves():
    broken = []
    for page in [README, *PAGES]:
        for target in relative_links(page):
            file_part, _, fragment = unquote(target).partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(REPO)}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{where} (no such heading)")
    assert not broken, broken


def test_anchor_follows_github_rules():
    expected = "site-configuration-what-a-hospitals-it-sets-up"
    assert anchor("Site configuration (what a hospital's IT sets up)") == expected
    assert anchor("GPU evidence (`scripts/gpu_check.sh`, issue 24)") == "gpu-evidence-scriptsgpu_checksh-issue-24"
    assert anchor("§3 Hostile and broken DICOM") == "3-hostile-and-broken-dicom"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / unquote(t).partition("#")[0]).resolve() for t in relative_links(README)}
    assert PAGES and not [p.name for p in PAGES if p.resolve() not in linked]
