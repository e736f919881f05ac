"""``xnatfs emulator``: serve a synthetic or on-disk archive as an XNAT server until Ctrl-C.

``register`` adds the subcommand to the main parser; ``run`` executes it. Option values are
validated here rather than by argparse, so a bad value is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from xnatfs.emulator.archive import Archive
from xnatfs.emulator.folder import load_folder
from xnatfs.emulator.knobs import EmulatorConfig
from xnatfs.emulator.server import Emulator
from xnatfs.emulator.synthetic import SyntheticSpec, synthetic_archive
from xnatfs.errors import UsageError
from xnatfs.units import parse_size

DEMO_SPEC = "projects=2,subjects=3,sessions=2,scans=3,dicoms=10,dicom_size=64K,nifti_size=8M"
DEMO_USER = "demo:demo"


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "emulator", help="run an XNAT server emulator (synthetic or folder archive)",
        description="Serve an archive over XNAT's REST API on this machine, for trying "
                    "xnatfs, tests and benchmarks.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--synthetic", metavar="SPEC",
                        help=f"synthetic archive, e.g. 'projects=1,subjects=3,nifti_size=100M,"
                             f"hostile=1' (default: {DEMO_SPEC})")
    source.add_argument("--folder", metavar="DIR",
                        help="serve DIR laid out as {project}/{subject}/{session}/scans/...")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", default="0", help="port (default: a free one)")
    parser.add_argument("--user", action="append", metavar="NAME:PASSWORD",
                        help=f"a user; repeatable (default {DEMO_USER})")
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
    parser.add_argument("--session-timeout", default="900", metavar="SECONDS",
                        help="idle seconds before a session expires (default 900)")
    parser.add_argument("--token-lifetime", default="172800", metavar="SECONDS",
                        help="seconds an alias token lives (default 172800, XNAT's 2 days)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        port = _number(args.port, "--port", int)
        if port > 65535:
            raise UsageError(f"--port must be at most 65535, not {port}")
        emulator = Emulator(_archive(args), _config(args), _users(args), host=args.host,
                            port=int(port))
        emulator.start()
    except UsageError as error:
        print(f"xnatfs emulator: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"xnatfs emulator: cannot listen on {args.host}:{args.port}: {error.strerror}",
              file=sys.stderr)
        return 2
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
    return synthetic_archive(SyntheticSpec.parse(args.synthetic or DEMO_SPEC))


def _config(args: argparse.Namespace) -> EmulatorConfig:
    error_rate = _number(args.error_rate, "--error-rate", float)
    if not 0.0 <= error_rate <= 1.0:
        raise UsageError(f"--error-rate must be between 0 and 1, not {args.error_rate}")
    return EmulatorConfig(
        latency=_number(args.latency, "--latency", float),
        bandwidth=parse_size(args.bandwidth) if args.bandwidth else None,
        conn_bandwidth=parse_size(args.conn_bandwidth) if args.conn_bandwidth else None,
        range_enabled=not args.no_range, error_rate=error_rate,
        session_timeout=_number(args.session_timeout, "--session-timeout", float),
        token_lifetime=_number(args.token_lifetime, "--token-lifetime", float),
        context_path=args.context_path, require_login=not args.guest)


def _users(args: argparse.Namespace) -> dict[str, str]:
    users = {}
    for item in args.user or [DEMO_USER]:
        name, sep, password = item.partition(":")
        if not sep or not name:
            raise UsageError(f"--user wants NAME:PASSWORD, not {item!r}")
        users[name] = password
    return users


def _number(text: str, option: str, kind: type[int] | type[float]) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise UsageError(f"{option} wants a number, not {text!r}") from None
    if value < 0:
        raise UsageError(f"{option} must not be negative")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: ``python -m xnatfs.emulator.cli [options]``."""
    parser = argparse.ArgumentParser(prog="xnatfs")
    register(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["emulator", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
