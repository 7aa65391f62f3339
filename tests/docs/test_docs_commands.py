"""Every command the docs show runs as written: README.md, docs/*.md and examples/README.md.

The convention (docs/architecture.md, "Commands in the docs"), which this harness enforces:

- A fenced block tagged ``sh`` is a script; one tagged ``console`` is a transcript: ``$ ``
  starts a command, the lines up to the next ``$ `` are its output as shown. Any other block
  (``text``, ``python``, untagged, ...) is never run, and may not hold a ``$ `` line: a
  transcript is tagged ``console``.
- The runnable blocks of one file run in the order they appear, one command at a time, in one
  bash session (what a block exports or starts, a later block sees), in a fresh folder that
  looks like the checkout: each of its top-level entries (and ``.venv``) is a link to the
  checkout's, so ``./scripts/demo``, ``.venv/bin/mesh``, ``python -m examples...`` and
  ``spec/vectors/...`` work as written, and what the commands write lands in that folder.
  Nothing is substituted. The session starts as a fresh shell would: the checkout's ``.venv``
  is not on ``PATH`` (a doc that uses bare ``mesh`` commands exports it, as a reader must),
  ``HOME`` is the folder, no ``MESH_*`` variable is set.
- Each file runs in private network, pid and mount namespaces: fixed ports (``127.0.0.1:8443``)
  are free, nothing leaves the machine, and no process outlives the run. A doc that starts
  something in the background stops it itself: a job still running at the end fails the run.
- A command joins its continuation lines (a line ending in ``\\``). A script's command must
  exit 0, or the status its trailing comment names (``# exit 1: ...``). A transcript command
  must exit non-zero exactly when its shown output has a line with ``error`` or starting with
  ``REJECTED`` or ``refused:`` (or as ``# exit N`` says), and print what is shown (stdout and
  stderr together, as a terminal shows them) once the values that change every run are masked:
  serials, hashes, thumbprints, times, pids, tokens. A shown line ``...`` stands for any lines.
- A runnable block that cannot run here (other hosts, the test suite itself, minutes of load)
  is tagged ``sh norun: REASON`` or ``console norun: REASON``; the reason is required and
  ``NORUN`` below counts them, so a new one is a visible decision.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]
# Blocks tagged norun, per file: a change here is a decision to leave a command untested.
NORUN = {
    "README.md": 2,  # ./scripts/test (this suite); the benchmarks (minutes of load)
    "docs/agent.md": 5,  # excerpts of the walkthrough, which runs; other hosts
    "docs/demo.md": 0,
}
RUNNABLE = {"sh", "console"}
NOT_TAGS = {"bash", "shell", "shell-session", "shellsession", "zsh"}

MASKS = [
    (re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+"), "<JWS>"),
    (re.compile(r"meshjoin-[\w-]+"), "<JOIN TOKEN>"),
    (re.compile(r"\.\.svid-[0-9a-f]{32}-[0-9a-f]{8}"), "..svid-<SET>"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "<SHA256>"),
    (re.compile(r"\b(?:[0-9A-F]{2}:){31}[0-9A-F]{2}\b"), "<SHA256>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<SERIAL>"),
    (re.compile(r"\b(?:ord|pay|res)-[0-9a-f]{16}\b"), "<ID>"),
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\dZ"), "<TIME>"),
    (re.compile(r"\b\d\d:\d\d:\d\dZ"), "<TIME>"),
    (re.compile(r"\b\d{4}-\d\d-\d\d\b"), "<DATE>"),
    (re.compile(r"\b1\d{9}\b"), "<UNIX TIME>"),
    (re.compile(r"expires in \w+"), "expires in <LEFT>"),
    (re.compile(r"\((?:in \d+ (?:s|min|h)|\d+ (?:s|min|h) ago)\)"), "(<WHEN>)"),
    (re.compile(r"(?<![\w-])[\w-]{43}(?![\w-])"), "<X5T>"),
    (re.compile(r"jti: [\w-]{22}\b"), "jti: <JTI>"),
    (re.compile(r"(\"pid\": |\bpid )\d+"), r"\1<PID>"),
]
_EXIT = re.compile(r"#\s*exit (\d+)\b")
_FAILED_OUTPUT = re.compile(r"error|^REJECTED|^refused:")


def mask(text: str) -> str:
    for pattern, repl in MASKS:
        text = pattern.sub(repl, text)
    return text.rstrip()


@dataclass
class Step:
    where: str  # file:line
    command: str
    shown: list[str] | None  # transcript output as shown; None in a script
    code: int | None  # expected exit status; None: any non-zero


@dataclass
class Doc:
    path: Path
    steps: list[Step] = field(default_factory=list)
    norun: list[tuple[int, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


def _commands(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(line number, command) with continuation lines joined, as bash will read them."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, line in lines:
        if not pending:
            start = number
        pending.append(line)
        if not line.rstrip().endswith("\\"):
            out.append((start, "\n".join(pending)))
            pending = []
    if pending:
        out.append((start, "\n".join(pending)))
    return out


def _expected_code(command: str, shown: list[str] | None) -> int | None:
    match = _EXIT.search(command.splitlines()[-1])
    if match:
        return int(match.group(1))
    if shown is not None and any(_FAILED_OUTPUT.search(line) for line in shown):
        return None
    return 0


def _script(doc: Doc, first: int, body: list[str]) -> None:
    lines = [(first + i, line) for i, line in enumerate(body)]
    code_lines = [(n, line) for n, line in lines
                  if line.strip() and not line.lstrip().startswith("#")]
    for number, command in _commands(code_lines):
        doc.steps.append(Step(f"{doc.name}:{number}", command, None,
                              _expected_code(command, None)))


def _transcript(doc: Doc, first: int, body: list[str]) -> None:
    i = 0
    while i < len(body):
        if not body[i].startswith("$ "):
            i += 1
            continue
        number = first + i
        command_lines = [body[i][2:]]
        while command_lines[-1].rstrip().endswith("\\") and i + 1 < len(body):
            i += 1
            command_lines.append(body[i])
        i += 1
        shown: list[str] = []
        while i < len(body) and not body[i].startswith("$ "):
            shown.append(body[i])
            i += 1
        while shown and not shown[-1].strip():
            shown.pop()
        command = "\n".join(command_lines)
        doc.steps.append(Step(f"{doc.name}:{number}", command, shown,
                              _expected_code(command, shown)))


def parse(path: Path) -> Doc:
    doc = Doc(path)
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        info = lines[i][3:].strip()
        start = i + 1
        end = start
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        body = lines[start:end]
        tag, _, rest = info.partition(" ")
        where = f"{doc.name}:{i + 1}"
        assert tag not in NOT_TAGS, f"{where}: tag runnable blocks sh or console, not {tag}"
        if tag in RUNNABLE and rest.startswith("norun"):
            reason = rest.removeprefix("norun").lstrip(":").strip()
            assert reason, f"{where}: a norun block says why: ```{tag} norun: REASON"
            doc.norun.append((i + 1, reason))
        elif tag == "sh":
            assert not rest, f"{where}: unknown attribute {rest!r} (only norun: REASON)"
            _script(doc, start + 1, body)
        elif tag == "console":
            assert not rest, f"{where}: unknown attribute {rest!r} (only norun: REASON)"
            assert any(line.startswith("$ ") for line in body), f"{where}: no $ command"
            _transcript(doc, start + 1, body)
        else:
            held = [line for line in body if line.startswith("$ ")]
            assert not held, f"{where}: a transcript in a {tag or 'plain'} block: tag it console"
        i = end + 1
    return doc


def _checkout_view(folder: Path) -> None:
    """``folder`` looks like the checkout: a link per top-level entry, .venv included."""
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    tops = {name.split("/", 1)[0] for name in tracked if name} | {".venv"}
    for top in sorted(tops):
        if (ROOT / top).exists():
            (folder / top).symlink_to(ROOT / top)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MESH_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    env["HOME"] = str(home)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the links lead into the checkout
    return env


def run(doc: Doc, folder: Path, timeout: float = 300) -> list[tuple[Step, int, str]]:
    """Run every step in one bash session; (step, exit status, output) for each."""
    marker = f"@@{secrets.token_hex(6)}@@"
    script = ["set +e"]
    for i, step in enumerate(doc.steps):
        # { ...; } runs in this shell (exports and jobs stay); 2>&1: what a terminal shows.
        script += [f"echo '{marker} {i}'", "{ " + step.command, "} 2>&1",
                   f"echo \"{marker} rc $?\""]
    # Jobs a doc left running: give each a moment to finish what it was told (kill), then
    # name the ones still there.
    script += [f"echo '{marker} end'",
               "for p in $(jobs -p); do for _ in $(seq 50); do kill -0 $p 2>/dev/null || break;"
               " sleep 0.1; done; kill -0 $p 2>/dev/null && echo \"left running: "
               "$(tr '\\0' ' ' < /proc/$p/cmdline)\"; done; true"]
    (folder / ".doc-script.sh").write_text("\n".join(script) + "\n")
    inner = f"ip link set lo up && exec bash --noprofile --norc {shlex.quote(str(folder))}" \
            "/.doc-script.sh"
    res = subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--mount-proc", "bash", "--noprofile",
         "--norc", "-c", inner],
        cwd=folder, env=_env(folder), capture_output=True, text=True, timeout=timeout,
        check=False)
    assert res.returncode == 0, f"the session failed: {res.stderr[-3000:]}"
    body, _, tail = res.stdout.partition(f"{marker} end\n")
    assert "left running" not in tail, f"{doc.name} leaves a process running: {tail}"
    parts = re.split(rf"^{re.escape(marker)} (\d+)\n", body, flags=re.M)[1:]
    assert len(parts) == 2 * len(doc.steps), body[-3000:]
    out = []
    for step, chunk in zip(doc.steps, parts[1::2], strict=True):
        text, _, rc = chunk.rpartition(f"{marker} rc ")
        out.append((step, int(rc), text))
    return out


def _matches(shown: list[str], got: list[str]) -> bool:
    """Line by line after masking; a shown ``...`` line stands for any number of lines."""
    if not shown:
        return not got
    head = shown[0]
    if head.strip() == "...":
        return any(_matches(shown[1:], got[k:]) for k in range(len(got) + 1))
    return bool(got) and mask(head) == mask(got[0]) and _matches(shown[1:], got[1:])


def check(results: list[tuple[Step, int, str]]) -> list[str]:
    problems = []
    for step, rc, text in results:
        ok_rc = rc != 0 if step.code is None else rc == step.code
        if not ok_rc:
            want = "non-zero" if step.code is None else str(step.code)
            problems.append(f"{step.where}: `{step.command}` exited {rc}, expected {want}:\n"
                            f"{text[-2000:]}")
            continue
        if step.shown is not None:
            got = text.rstrip("\n").splitlines() if text.strip() else []
            if not _matches(step.shown, got):
                problems.append(f"{step.where}: `{step.command}` printed\n{text[-3000:]}\n"
                                "which is not what the doc shows:\n" + "\n".join(step.shown))
    return problems


def _venv_is_current() -> None:
    """The docs' scripts use the checkout's .venv through a link; one older than pyproject.toml
    would make them reinstall, which cannot work without a network (and is not theirs to do)."""
    project = (ROOT / "pyproject.toml").stat().st_mtime
    stamps = [p.stat().st_mtime for p in (ROOT / ".venv").glob(".meshid-installed*")]
    assert any(t >= project for t in stamps), (
        "pyproject.toml changed since .venv was installed: run ./scripts/test (it reinstalls)")


def test_the_convention_holds_in_every_doc() -> None:
    for path in DOCS:
        doc = parse(path)
        assert len(doc.norun) == NORUN.get(doc.name, 0), (doc.name, doc.norun)
    assert sum(len(parse(p).steps) for p in DOCS) > 100


def test_masks_and_the_ellipsis() -> None:
    assert mask("serial 0abcdef0123456789abcdef012345678, valid until 2026-12-02 10:16:25Z") \
        == "serial <SERIAL>, valid until <TIME>"
    assert _matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert _matches(["a", "...", "d"], ["a", "d"])
    assert not _matches(["a", "...", "d"], ["a", "b"])
    assert not _matches(["a"], ["a", "b"])


def _shows_commands(path: Path) -> bool:
    try:
        return bool(parse(path).steps)
    except AssertionError:
        return True  # the test below reports it


# The docs that show commands (docs/architecture.md and docs/grpc.md show none).
WITH_COMMANDS = [p for p in DOCS if _shows_commands(p)]


@pytest.mark.slow
@pytest.mark.parametrize("path", WITH_COMMANDS,
                         ids=[p.relative_to(ROOT).as_posix() for p in WITH_COMMANDS])
def test_every_command_runs_as_written(path: Path, tmp_path: Path) -> None:
    doc = parse(path)
    _venv_is_current()
    _checkout_view(tmp_path)
    problems = check(run(doc, tmp_path))
    assert not problems, "\n\n".join(problems)
