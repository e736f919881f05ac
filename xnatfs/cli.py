"""``xnatfs``: one entry point, one subcommand module per front end.

Each subcommand module has ``register(subparsers)`` and keeps heavy imports (FUSE, threads)
inside its ``run``, so ``xnatfs --help`` works even where libfuse is missing. Every failure the
user can act on ends as one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from xnatfs import __version__
from xnatfs.errors import XnatfsError

COMMANDS = (
    "xnatfs.mount.cli",
    "xnatfs.materialize.cli",
    "xnatfs.ls",
    "xnatfs.verify",
    "xnatfs.reader.cache_cli",
    "xnatfs.emulator.cli",
)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error (subcommand parsers inherit this)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xnatfs",
        description="XNAT as a read-only filesystem (mount), and fast resumable bulk "
                    "downloads (materialize).")
    parser.add_argument("--version", action="version", version=f"xnatfs {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: already said in one line
        return int(exc.code or 0)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="xnatfs: %(levelname)s: %(message)s")
    if args.verbose < 2:  # its retry notices are ours to report, once, in our words
        logging.getLogger("urllib3").setLevel(logging.ERROR)
    try:
        return args.run(args)
    except XnatfsError as exc:
        print(f"xnatfs: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("xnatfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
