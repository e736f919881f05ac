"""The emulator's command line: serve a synthetic or on-disk archive as an XNAT server until
Ctrl-C.

Used as ``python -m xnat_emulator`` and, through xnatfs's lazy ``emulator`` command, as
``xnatfs emulator`` (which hands its remaining arguments to ``main``). Option values are
validated here rather than by argparse, so a bad value is one line on stderr and exit 2; a
server that cannot start (port taken, address not ours) is exit 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn, TextIO

from xnat_emulator.archive import Archive
from xnat_emulator.demo import DEMO_PASSWORD, DEMO_SPEC, DEMO_USER
from xnat_emulator.folder import load_folder
from xnat_emulator.knobs import EmulatorConfig
from xnat_emulator.log import RequestLog
from xnat_emulator.server import Emulator
from xnat_emulator.synthetic import SyntheticSpec, synthetic_archive
from xnat_emulator.values import BadValue, parse_size

PROG = "xnat_emulator"
USAGE, FAILED = 2, 1


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like the emulator's other errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Serve an archive over XNAT's REST API on this machine, for trying "
                    "xnatfs, tests and benchmarks.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--synthetic", metavar="SPEC",
                        help="synthetic archive, e.g. 'projects=1,subjects=3,nifti_size=100M,"
                             "hostile=1' (default: the demo archive)")
    source.add_argument("--folder", metavar="DIR",
                        help="serve DIR laid out as {project}/{subject}/{session}/scans/...")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", default="0", help="port (default: a free one)")
    parser.add_argument("--user", action="append", metavar="NAME:PASSWORD",
                        help=f"a user; repeatable (default {DEMO_USER}:{DEMO_PASSWORD})")
    parser.add_argument("--guest", action="store_true",
                        help="no login required: anonymous requests see public projects")
    parser.add_argument("--context-path", default="", metavar="PATH",
                        help="deploy under a path such as /xnat")
    parser.add_argument("--latency", default="0", metavar="SECONDS",
                        help="delay added to every response")
    parser.add_argument("--bandwidth", metavar="BYTES", help="total bytes/s, e.g. 100M")
    parser.add_argument("--conn-bandwidth", metavar="BYTES", help="bytes/s per connection")
    parser.add_argument("--no-range", action="store_true", help="ignore Range headers")
    parser.add_argument("--error-rate", default="0", metavar="FRACTION",
                        help="fraction of requests answered 5xx")
    parser.add_argument("--catalog-cost", default="0", metavar="SECONDS",
                        help="server work per catalog entry on every file GET, file listing "
                             "and zip of a resource (XNAT parses the whole catalog each time)")
    parser.add_argument("--server-cores", default="0", metavar="N",
                        help="requests doing catalog work at once; others wait (0: no limit)")
    parser.add_argument("--zip-truncate-rate", default="0", metavar="FRACTION",
                        help="fraction of zip downloads cut short after a random number of "
                             "bytes")
    parser.add_argument("--session-timeout", default="900", metavar="SECONDS",
                        help="idle seconds before a session expires (default 900)")
    parser.add_argument("--hash-first", action="store_true",
                        help="compute every file's MD5 before serving, as a real XNAT's catalog "
                             "already holds it (else the first listing of a file hashes it)")
    parser.add_argument("--request-log", metavar="FILE",
                        help="append one JSON line per finished request to FILE (for "
                             "benchmarks that run the emulator in its own process)")
    parser.add_argument("--log-limit", default="100000", metavar="N",
                        help="requests the in-memory request log keeps (default 100000)")
    parser.add_argument("--token-lifetime", default="172800", metavar="SECONDS",
                        help="seconds an alias token lives (default 172800, XNAT's 2 days)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and serve until SIGINT or SIGTERM."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:  # --help or a usage error, already said in one line
        return int(exc.code or 0)
    return run(args, prog)


def run(args: argparse.Namespace, prog: str = PROG) -> int:
    try:
        port = _number(args.port, "--port", int)
        if port > 65535:
            raise BadValue(f"--port must be at most 65535, not {port}")
        archive = _archive(args)
        if args.hash_first:
            for file in archive.files():
                file.content.md5()
        emulator = Emulator(archive, _config(args), _users(args), host=args.host,
                            port=int(port))
        if args.request_log:
            emulator.log = RequestLog(emulator.config.log_limit, _append(args.request_log))
        emulator.start()
    except BadValue as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return USAGE
    except OSError as error:
        print(f"{prog}: cannot listen on {args.host}:{args.port}: {error.strerror}",
              file=sys.stderr)
        return FAILED
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    users = ", ".join(f"{name}/{password}" for name, password in emulator.auth.users.items())
    guest = "; guests welcome" if not emulator.config.require_login else ""
    print(f"XNAT emulator at {emulator.url}  (user/password: {users}{guest})  "
          f"Ctrl-C to stop", flush=True)
    done.wait()
    emulator.stop()
    return 0


def _archive(args: argparse.Namespace) -> Archive:
    if args.folder:
        return load_folder(args.folder)
    spec = SyntheticSpec.parse(args.synthetic) if args.synthetic else DEMO_SPEC
    return synthetic_archive(spec)


def _config(args: argparse.Namespace) -> EmulatorConfig:
    error_rate = _number(args.error_rate, "--error-rate", float)
    if not 0.0 <= error_rate <= 1.0:
        raise BadValue(f"--error-rate must be between 0 and 1, not {args.error_rate}")
    zip_truncate_rate = _number(args.zip_truncate_rate, "--zip-truncate-rate", float)
    if not 0.0 <= zip_truncate_rate <= 1.0:
        raise BadValue(f"--zip-truncate-rate must be between 0 and 1, not "
                       f"{args.zip_truncate_rate}")
    cores = int(_number(args.server_cores, "--server-cores", int))
    return EmulatorConfig(
        catalog_cost=_number(args.catalog_cost, "--catalog-cost", float),
        server_cores=cores or None, zip_truncate_rate=zip_truncate_rate,
        latency=_number(args.latency, "--latency", float),
        bandwidth=parse_size(args.bandwidth) if args.bandwidth else None,
        conn_bandwidth=parse_size(args.conn_bandwidth) if args.conn_bandwidth else None,
        range_enabled=not args.no_range, error_rate=error_rate,
        session_timeout=_number(args.session_timeout, "--session-timeout", float),
        token_lifetime=_number(args.token_lifetime, "--token-lifetime", float),
        context_path=args.context_path, require_login=not args.guest,
        log_limit=max(1, int(_number(args.log_limit, "--log-limit", int))))


def _append(path: str) -> TextIO:
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as error:
        raise BadValue(f"cannot write the request log {path}: {error.strerror}") from None


def _users(args: argparse.Namespace) -> dict[str, str]:
    users = {}
    for item in args.user or [f"{DEMO_USER}:{DEMO_PASSWORD}"]:
        name, sep, password = item.partition(":")
        if not sep or not name:
            raise BadValue(f"--user wants NAME:PASSWORD, not {item!r}")
        users[name] = password
    return users


def _number(text: str, option: str, kind: type[int] | type[float]) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise BadValue(f"{option} wants a number, not {text!r}") from None
    if value < 0:
        raise BadValue(f"{option} must not be negative")
    return value
