"""Command-line options and set-up shared by every front end that talks to a server."""

from __future__ import annotations

import argparse
import logging
import sys

from xnatfs.account.default import default_server_url
from xnatfs.account.tokens import log_in
from xnatfs.xnat.client import XnatClient
from xnatfs.xnat.credentials import resolve_credentials

log = logging.getLogger(__name__)


def add_connection_options(parser: argparse.ArgumentParser, *, url: bool = True) -> None:
    """``URL``, ``-u USER``, ``--jsession``, ``--insecure``, the XNAT Downloader's ``-w``."""
    if url:
        parser.add_argument("url", nargs="?", metavar="URL",
                            help="XNAT server, e.g. https://xnat.example.org[/xnat]")
        parser.add_argument("-w", "--web", dest="web", metavar="URL",
                            help="same as URL (the XNAT Downloader's spelling)")
    parser.add_argument("-u", "--user", metavar="USER",
                        help="log in as USER; the password is prompted (or XNAT_PASS, ~/.netrc)."
                             " An alias token works as USER=alias with its secret as password")
    parser.add_argument("--jsession", metavar="ID",
                        help="reuse a logged-in browser session (SSO/OpenID sites); "
                             "also XNAT_JSESSION")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify the server's TLS certificate")


def server_url(args: argparse.Namespace) -> str:
    return default_server_url(getattr(args, "web", None) or getattr(args, "url", None))


def open_client(args: argparse.Namespace, url: str | None = None, **options: object) -> XnatClient:
    """A logged-in client for the server named on the command line."""
    url = url or server_url(args)
    creds = resolve_credentials(url, args.user, args.jsession)
    if args.insecure:
        print(f"xnatfs: warning: TLS certificate of {url} is not verified", file=sys.stderr)
    client = XnatClient(url, creds, insecure=args.insecure, **options)  # type: ignore[arg-type]
    log_in(client)
    log.info("logged in to %s (%s)", url, creds.source)
    return client
