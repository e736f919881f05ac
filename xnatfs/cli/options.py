"""Command-line options and set-up shared by every front end that talks to a server."""

from __future__ import annotations

import argparse
import logging
import sys

import requests
import urllib3

from xnatfs.account.default import default_server_url
from xnatfs.account.tokens import log_in
from xnatfs.errors import ConnectError, TLSError
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


def make_client(args: argparse.Namespace, url: str, **options: object) -> XnatClient:
    """A client for the server named on the command line, with its credentials, not yet
    logged in (``open_client`` logs in; an offline mount starts without)."""
    creds = resolve_credentials(url, args.user, args.jsession)
    if args.insecure:
        print(f"xnatfs: warning: TLS certificate of {url} is not verified", file=sys.stderr)
        # said once above, in our words; urllib3 would repeat it raw on every request
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return XnatClient(url, creds, insecure=args.insecure, **options)  # type: ignore[arg-type]


def open_client(args: argparse.Namespace, url: str | None = None, **options: object) -> XnatClient:
    """A logged-in client for the server named on the command line."""
    url = url or server_url(args)
    client = make_client(args, url, **options)
    creds = client.credentials
    try:
        log_in(client)
    except ConnectError as exc:
        client.close()
        # a URL given without a scheme; the default server was stored with its scheme
        given = getattr(args, "web", None) or getattr(args, "url", None) or ""
        if given and "://" not in given and url.startswith("https://"):
            plain = "http://" + url[len("https://"):]
            if _answers_plain_http(plain):
                text = str(exc)
                why = ("the port does not speak TLS" if "does not speak TLS" in text
                       else text.rsplit(": ", 1)[-1])
                raise TLSError(f"no HTTPS at {url} ({why}), but plain HTTP answers: write "
                               f"{plain} to use it, if passwords may cross the network "
                               "unencrypted") from None
        raise
    log.info("logged in to %s (%s)", url, creds.source)
    return client


def _answers_plain_http(url: str) -> bool:
    """Whether a server answers plain HTTP at ``url``, other than by sending us to HTTPS. No
    credentials go with it: the session ignores ~/.netrc."""
    with requests.Session() as session:
        session.trust_env = False
        try:
            resp = session.get(url + "/", timeout=5, allow_redirects=False, stream=True)
        except requests.RequestException:
            return False
        resp.close()
    return not resp.is_redirect or not resp.headers.get("Location", "").startswith("https:")
