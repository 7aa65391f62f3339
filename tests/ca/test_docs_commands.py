"""Every CA command the README and docs/ca.md show runs as written.

docs/ca.md: every ``$ command`` line of its examples runs, in order, in one shell in an empty
folder; its output must be the one shown, with serials, dates, hashes and random names masked
(table layout, wording, CRL numbers and exit status included). README: the CA block runs as a
script with ``set -e``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

MASKS = [
    (re.compile(r"\.\.svid-[0-9a-f]{32}-[0-9a-f]{8}"), "..svid-<SET>"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "<SHA256>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<SERIAL>"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"), "<TIME>"),
    (re.compile(r"\b\d{4}-\d\d-\d\d\b"), "<DATE>"),
    (re.compile(r"expires in \w+"), "expires in <LEFT>"),
    (re.compile(r"(?<![\w-])[\w-]{43}(?![\w-])"), "<X5T>"),
]


def _mask(text: str) -> str:
    for pattern, repl in MASKS:
        text = pattern.sub(repl, text)
    return text


def _examples(doc: str) -> list[tuple[str, list[str]]]:
    """(command, output lines) for every ``$ `` line of the fenced blocks, in order."""
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", doc, flags=re.S | re.M):
        lines = block.splitlines()
        if not any(line.startswith("$ ") for line in lines):
            continue
        for line in lines:
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps and line.strip():
                steps[-1][1].append(line)
    return steps


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_CA_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp_path)
    return env


@pytest.mark.slow
def test_docs_ca_md_commands_run_as_written(tmp_path: Path) -> None:
    steps = _examples((ROOT / "docs" / "ca.md").read_text())
    assert len(steps) > 20
    script = ["set +e"]
    for i, (command, _) in enumerate(steps):
        script += [f"echo '@@@ {i}'", f"{command} 2>&1", "echo \"@@@ rc $?\""]
    res = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=tmp_path, env=_env(tmp_path),
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    parts = re.split(r"^@@@ (\d+)\n", res.stdout, flags=re.M)[1:]
    assert len(parts) == 2 * len(steps), res.stdout
    for (command, shown), out in zip(steps, parts[1::2], strict=True):
        body, rc_line = out.rsplit("@@@ rc ", 1)
        rc = int(rc_line)
        expect_failure = any("error" in line for line in shown)
        assert (rc != 0) == expect_failure, (command, rc, body)
        assert _mask(body).splitlines() == [_mask(line) for line in shown], command


@pytest.mark.slow
def test_readme_ca_commands_run_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The CA in five commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert block is not None
    commands = [line for line in block[1].splitlines() if line.strip()]
    assert len(commands) == 6  # the PATH export and five commands
    res = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + block[1]], cwd=tmp_path, env=_env(tmp_path),
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "state" / "svids" / "orders" / "svid.pem").is_file()
    listed = subprocess.run(
        [str(BIN / "mesh-ca"), "list", "--json", "--ca-dir", str(tmp_path / "state" / "ca")],
        capture_output=True, text=True, check=True,
    )
    status = {c["name"]: c["status"] for c in json.loads(listed.stdout)["certificates"]}
    assert status == {"orders": "valid", "payments": "revoked"}
