"""What every meshid command line shares (``mesh``, ``mesh-ca``, ``ca-issue``).

- :class:`ArgumentParser`: a usage error is one sentence on stderr and exit status 2, not a
  usage dump; its subcommand parsers are of the same class, so the rule holds at every level.
- :class:`HelpFormatter`: ``--help`` shows every option's default ("(default: X)", "(default:
  off)" for a flag) unless the help text already says it.
- :func:`run`: runs a parsed command's handler and turns what a user can cause into an exit
  status without a traceback: the reader of our output going away (``| head -1``: 141, as for
  a tool killed by SIGPIPE), Ctrl-C (130), a file that cannot be read or an error of the
  given kinds (2, one sentence).
- :func:`read_input`: the bytes of a file, or of stdin for ``-``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_SIGPIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool that lost its reader

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Bad input from the command line: printed as one sentence, exit status 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default: "(default: X)" unless the help already says it.

    A description keeps its line breaks; a long line is wrapped, an indented one (an example)
    is left as it is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            line if not line.strip() or line.startswith(" ")
            else textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent,
                               break_on_hyphens=False)
            for line in text.splitlines()
        )

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.help == argparse.SUPPRESS:
            return text
        if action.default is False:
            return text + " (default: off)"
        if action.default not in (None, [], argparse.SUPPRESS):
            return text + " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors: exit 2 with one sentence, not a usage dump."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def non_negative_int(text: str) -> int:
    """An argparse ``type``: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def read_input(path: str | Path, what: str) -> bytes:
    """The bytes of ``path``, or of stdin for ``-``; :class:`UsageError` naming ``what`` if
    the file cannot be read."""
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read the {what} {path}: {err.strerror or err}") from err


def stdin_at_most_once(values: Sequence[tuple[str, object]]) -> None:
    """Raise :class:`UsageError` when more than one of ``(option, value)`` is ``-``: stdin can
    be read only once."""
    dashes = [name for name, value in values if str(value) == "-"]
    if len(dashes) > 1:
        raise UsageError(f"{' and '.join(dashes)} both name stdin ('-'); only one of them can")


def _stdout_to_devnull() -> None:
    # The reader left: point stdout at /dev/null so Python's flush at exit fails no more.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def run(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    user_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse ``argv``, run ``args.handler(args)`` and return its exit status; what a user can
    cause ends in a status and at most one sentence, never a traceback (see the module
    docstring). The sentence starts with the subcommand's name when the handler's parser is
    in ``args.parser``."""
    prog = parser.prog
    errors: tuple[type[BaseException], ...] = (UsageError, *user_errors)
    try:
        args = parser.parse_args(argv)
        prog = getattr(args, "parser", parser).prog
        handler: Handler = args.handler
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_SIGPIPE
    except errors as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        print(f"{prog}: error: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

