"""The XNAT Downloader's numbered project menu, for runs started without a path.

Projects are listed as ``1) P1  2) P2 ...``; the answer is numbers, ranges, project IDs or
``all``, separated by spaces or commas (``1 3 4``, ``2-5``, ``P1,P7``). A wrong answer is
explained and asked again; end of input or ``q`` chooses nothing.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from typing import IO

from xnatfs.errors import UsageError, XnatfsError

PROMPT = "Choose the project: "
_RANGE = re.compile(r"(\d+)-(\d+)")


class NothingChosen(XnatfsError):
    """The user left the menu without choosing."""


def format_menu(projects: list[str], width: int) -> str:
    """``1) P1  2) P2 ...`` in as many columns as fit ``width``."""
    cells = [f"{n}) {p}" for n, p in enumerate(projects, 1)]
    cell = max(len(c) for c in cells) + 2
    per_line = max(1, min(5, width // cell))
    lines = ["".join(c.ljust(cell) for c in cells[i:i + per_line]).rstrip()
             for i in range(0, len(cells), per_line)]
    return "\n".join(lines)


def parse_answer(answer: str, projects: list[str]) -> list[str]:
    """The projects an answer names, in menu order; a UsageError says what is wrong."""
    tokens = [t for t in re.split(r"[\s,]+", answer.strip()) if t]
    if not tokens:
        raise UsageError("type the numbers of the projects, e.g. 1 3 4")
    chosen: set[int] = set()
    for token in tokens:
        if token.lower() == "all":
            chosen.update(range(len(projects)))
        elif token.isdigit():
            chosen.add(_index(int(token), len(projects)))
        elif m := _RANGE.fullmatch(token):
            first, last = _index(int(m[1]), len(projects)), _index(int(m[2]), len(projects))
            chosen.update(range(min(first, last), max(first, last) + 1))
        elif token in projects:
            chosen.add(projects.index(token))
        else:
            raise UsageError(f"{token!r} is neither a number from the menu nor a project ID")
    return [projects[i] for i in sorted(chosen)]


def _index(number: int, count: int) -> int:
    if not 1 <= number <= count:
        raise UsageError(f"there is no project {number}; choose 1 to {count}")
    return number - 1


def choose_projects(
    projects: list[str], *, ask: Callable[[], str] = input, out: IO[str],
) -> list[str]:
    """Show the menu on ``out`` and ask until the answer names at least one project."""
    if not projects:
        raise XnatfsError("this server shows no projects to this user")
    width = shutil.get_terminal_size((80, 24)).columns
    print(format_menu(projects, width), file=out)
    while True:
        print(f"\n{PROMPT}", end="", file=out, flush=True)
        try:
            answer = ask()
        except EOFError:
            print(file=out)
            raise NothingChosen("no project chosen") from None
        if answer.strip().lower() in ("q", "quit", "exit"):
            raise NothingChosen("no project chosen")
        try:
            return parse_answer(answer, projects)
        except UsageError as exc:
            print(exc, file=out)
