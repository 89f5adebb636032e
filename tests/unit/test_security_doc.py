"""docs/security.md names the test that attacks each promise: every test it names exists."""

import re

from tests.conftest import REPO


def test_every_test_named_in_the_threat_model_exists():
    text = (REPO / "docs" / "security.md").read_text()
    missing, named = [], 0
    # a file, then the ::names that follow it up to the next file or the end of the table cell
    for cell in re.findall(r"tests/[\w/]+\.py(?:(?!tests/)[^|\n])*", text):
        path = re.match(r"tests/[\w/]+\.py", cell).group(0)
        source = (REPO / path).read_text() if (REPO / path).is_file() else ""
        if not source:
            missing.append(path)
        for name in re.findall(r"::(\w+)", cell):
            named += 1
            if not re.search(rf"^def {name}\(", source, flags=re.M):
                missing.append(f"{path}::{name}")
    assert named > 40 and not missing, missing
