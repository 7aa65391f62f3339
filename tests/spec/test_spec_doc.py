"""docs/spec.md against the code: the reason-code table is exactly ``mesh.errors.Reason`` (codes
and statuses), every "spec N.N" the code and docs cite exists, nothing cites DESIGN any more,
and the command the spec shows for replaying a vector runs as written."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from mesh.errors import Reason

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "spec.md"
TEXT = SPEC.read_text()
#: where citations live: code, docs and scripts (tests are not scanned)
CITING = [*sorted((ROOT / "mesh").rglob("*.py")), *sorted((ROOT / "mesh").rglob("*.toml")),
          *sorted((ROOT / "ca").rglob("*.py")), *sorted((ROOT / "docs").glob("*.md")),
          *sorted((ROOT / "scripts").glob("*")), ROOT / "README.md"]
_NUMBER = r"\d+(?:\.\d+)?"
_CITATION = re.compile(
    r"\bspec(?:\.md)?(?:\]\([^)]*\))?(?:\s+sections?)?\s+"
    rf"({_NUMBER}(?:\s*(?:,|/|-|and)\s*{_NUMBER})*)"
)


def _section(number: str) -> str:
    """The text of section ``number`` (e.g. "7"), up to the next section of the same level."""
    level = "##" if "." not in number else "###"
    start = re.search(rf"^{level} {re.escape(number)}\.? .*$", TEXT, re.M)
    assert start is not None, f"spec has no section {number}"
    end = re.compile(rf"^#{{2,{len(level)}}} ", re.M).search(TEXT, start.end())
    return TEXT[start.end(): end.start() if end else len(TEXT)]


def _headings() -> set[str]:
    found = set(re.findall(r"^## (\d+)\. ", TEXT, re.M))
    found |= set(re.findall(r"^### (\d+\.\d+) ", TEXT, re.M))
    return found


def _reason_table() -> dict[str, str]:
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| `([A-Z_]+)` \|", _section("7"), re.M)
    table = dict(rows)
    assert len(table) == len(rows), "a reason code is listed twice"
    return table


def test_reason_table_is_exactly_the_enum() -> None:
    table = _reason_table()
    codes = {r.value for r in Reason}
    assert set(table) - codes == set(), "codes in the spec that mesh.errors.Reason lacks"
    assert codes - set(table) == set(), "Reason members the spec's table lacks"
    for reason in Reason:
        assert table[reason.value] == reason.status.name, reason


def test_sections_the_code_relies_on_exist() -> None:
    headings = _headings()
    assert {str(n) for n in range(1, 11)} <= headings
    assert {f"4.{n}" for n in range(1, 10)} <= headings
    assert {"3.1", "3.2", "3.3", "3.4", "3.5", "2.1", "2.2", "2.3", "5.5"} <= headings
    # the placeholders other work fills in
    assert "DPoP" in re.search(r"^### 4\.7 .*$", TEXT, re.M).group(0)  # type: ignore[union-attr]
    assert re.search(r"^## 8\. CA service", TEXT, re.M)
    assert re.search(r"^## 9\. Workload API", TEXT, re.M)
    assert "Section numbers are stable" in TEXT


def _citations(text: str) -> list[str]:
    out = []
    for match in _CITATION.finditer(text):
        out += re.findall(_NUMBER, match.group(1))
    return out


def test_citation_pattern() -> None:
    assert _citations("(spec 4.4/4.5) spec 3, 4.2, 4.3 and [spec](spec.md) sections 1 and 2; "
                      "docs/spec.md sections 3 and 4; spec 4.2-4.5; inspect 9.9") == [
        "4.4", "4.5", "3", "4.2", "4.3", "1", "2", "3", "4", "4.2", "4.5"]


def test_every_spec_citation_exists() -> None:
    headings = _headings()
    missing = []
    seen = 0
    for path in CITING:
        if not path.is_file():
            continue
        for number in _citations(path.read_text(errors="replace")):
            seen += 1
            if number not in headings:
                missing.append(f"{path.relative_to(ROOT)}: spec {number}")
    assert seen > 50
    assert missing == []


def test_nothing_cites_design_any_more() -> None:
    """Users have the repository, not the design seed: cite the spec (or a reason code)."""
    offenders = [
        str(path.relative_to(ROOT)) for path in CITING
        if path.is_file() and re.search(r"\bDESIGN\b", path.read_text(errors="replace"))
    ]
    assert offenders == []


@pytest.mark.slow
def test_the_replay_example_runs_as_written() -> None:
    block = re.search(r"```sh\n(.*?)```", _section("10"), re.S)
    assert block is not None
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block.group(1)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed["result"] == "accept"
    assert printed["user"] == "alice"
    assert printed["chain"] == ["spiffe://mesh.internal/svc/gateway",
                                "spiffe://mesh.internal/svc/orders"]
