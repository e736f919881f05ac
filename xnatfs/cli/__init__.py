"""``xnatfs``: one entry point, one subcommand module per front end.

Each subcommand module has ``register(subparsers)`` and keeps heavy imports (FUSE, threads)
inside its ``run``, so ``xnatfs --help`` works even where libfuse is missing. The ``emulator``
command is only a name here: its arguments go whole to ``xnat_emulator``'s own parser, which is
imported when that command runs and by no other. Every failure the user can act on ends as one
line on stderr and a non-zero exit code, never a traceback.

The global ``-v``/``--verbose`` is accepted before and after the command (``xnatfs -v ls URL``
and ``xnatfs ls URL -v``, the XNAT Downloader's ``--verbose`` habit): the two counts add up.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from xnatfs import __version__
from xnatfs.account.default import take_default_server
from xnatfs.errors import XnatfsError

COMMANDS = (
    "xnatfs.mount.cli",
    "xnatfs.materialize.cli",
    "xnatfs.bids.cli",
    "xnatfs.annex.cli",
    "xnatfs.ls",
    "xnatfs.verify",
    "xnatfs.cli.cache",
    "xnatfs.account.cli",
)
EMULATOR = "emulator"
"""Handed whole to ``xnat_emulator``'s own parser, which is imported only when it runs."""
VERBOSE = ("-v", "--verbose")
VERBOSE_HELP = "more log output (-vv for debug)"


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
    parser.add_argument(*VERBOSE, action="count", default=0, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    for command in sub.choices.values():
        # Its own name: a subparser's defaults would otherwise overwrite the count given
        # before the command.
        command.add_argument(*VERBOSE, dest="verbose_after", action="count", default=0,
                             help=VERBOSE_HELP)
    sub.add_parser(EMULATOR, add_help=False,
                   help="run an XNAT server emulator (synthetic or folder archive); "
                        "see xnatfs emulator --help")
    return parser


def _emulator_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``emulator`` if that is the command, past any global ``-v``."""
    for i, arg in enumerate(argv):
        if arg == EMULATOR:
            return argv[i + 1:]
        if arg not in (*VERBOSE, "-vv", "-vvv"):
            return None
    return None


def _run_emulator(argv: list[str]) -> int:
    from xnat_emulator.cli import main as emulator_main

    return emulator_main(argv, prog=f"xnatfs {EMULATOR}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    emulator_argv = _emulator_argv(argv)
    if emulator_argv is not None:
        return _run_emulator(emulator_argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: already said in one line
        return int(exc.code or 0)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    verbose = args.verbose + getattr(args, "verbose_after", 0)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="xnatfs: %(levelname)s: %(message)s")
    if verbose < 2:  # its retry notices are ours to report, once, in our words
        logging.getLogger("urllib3").setLevel(logging.ERROR)
    try:
        take_default_server(args)
        return args.run(args)
    except XnatfsError as exc:
        print(f"xnatfs: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("xnatfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
