"""``xnatfs login``, ``logout``, ``whoami`` and ``token env``.

``login`` is the one command that handles a password: it logs in with it (or with a browser's
JSESSIONID on SSO sites), asks for an alias token, stores the token and lets the password go.
It refuses plain http, where the password would cross the network in clear, unless told so.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from urllib.parse import urlsplit

from xnatfs.account import store, tokens
from xnatfs.account.default import default_server_url
from xnatfs.account.store import Login, when
from xnatfs.cli.options import add_connection_options
from xnatfs.errors import AuthError, NotFound, ServerError, UsageError, XnatfsError
from xnatfs.xnat.client import XnatClient
from xnatfs.xnat.credentials import resolve_credentials


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "login", help="log in once and store an alias token (never the password)",
        description="Log in with a password (prompted, or XNAT_PASS) or a browser's JSESSIONID "
                    "(SSO sites), store an XNAT alias token for later commands, and make URL "
                    "the default server.")
    add_connection_options(p)
    p.add_argument("--insecure-http", action="store_true",
                   help="allow a plain http:// server (the password crosses the network in "
                        "clear)")
    p.set_defaults(run=run_login)

    p = sub.add_parser("logout", help="revoke the stored token on the server and forget it")
    _url_options(p)
    p.set_defaults(run=run_logout)

    p = sub.add_parser("whoami", help="the user, server and token expiry of the stored login")
    _url_options(p)
    p.set_defaults(run=run_whoami)

    p = sub.add_parser("token", help="the stored token for job scripts",
                       description="xnatfs token env [URL]: print XNAT_USER=alias "
                                   "XNAT_PASS=secret, for a batch job's environment.")
    tsub = p.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    env = tsub.add_parser("env", help="print XNAT_USER=alias XNAT_PASS=secret (a secret!)")
    _url_options(env)
    env.set_defaults(run=run_token_env)


def _url_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", nargs="?", metavar="URL",
                        help="XNAT server (default: the one of the last xnatfs login)")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify the server's TLS certificate")


# -- login -----------------------------------------------------------------------------------


def run_login(args: argparse.Namespace) -> int:
    url = default_server_url(args.web or args.url)
    if urlsplit(url).scheme == "http" and not args.insecure_http:
        raise UsageError(f"refusing to log in over plain http to {url}: the password would "
                         "cross the network in clear (use https, or --insecure-http)")
    creds = resolve_credentials(url, args.user, args.jsession, stored=False)
    if creds.is_guest:
        creds = resolve_credentials(url, _ask_user(url), None, stored=False)
    if args.insecure:
        print(f"xnatfs: warning: TLS certificate of {url} is not verified", file=sys.stderr)
    with XnatClient(url, creds, insecure=args.insecure) as client:
        client.login()
        login = store.save(tokens.issue(client, _previous(url, creds.user)))
        if creds.user is not None:  # end the password's session; a browser's is not ours
            with contextlib.suppress(XnatfsError):
                client.request("DELETE", "/data/JSESSION").close()
    print(f"logged in to {url} as {login.user}; token valid until {when(login.expires)}")
    return 0


def _ask_user(url: str) -> str:
    if not sys.stdin.isatty():
        raise UsageError(f"who to log in as? xnatfs login {url} -u USER (password prompted, or "
                         "XNAT_PASS), or --jsession ID / XNAT_JSESSION from a browser")
    print(f"User for {urlsplit(url).hostname}: ", end="", file=sys.stderr, flush=True)
    user = sys.stdin.readline().strip()
    if not user:
        raise UsageError("no user name given")
    return user


def _previous(url: str, user: str | None) -> tuple[tuple[str, float], ...]:
    """The same user's tokens a new login replaces, remembered so that logout revokes them
    too (another user's are theirs to revoke)."""
    try:
        old = store.load(url)
    except XnatfsError:  # damaged or keyring gone: the new login replaces it anyway
        return ()
    if old is None or (user is not None and old.user != user):
        return ()
    return ((old.alias, old.expires), *old.live_superseded())


# -- logout, whoami, token env ---------------------------------------------------------------


def _stored(url: str) -> Login:
    login = store.load(url)
    if login is None:
        raise AuthError(f"not logged in to {url} (xnatfs login {url})")
    return login


def run_logout(args: argparse.Namespace) -> int:
    url = default_server_url(args.url)
    login = store.load(url)
    if login is None:
        print(f"xnatfs: not logged in to {url}", file=sys.stderr)
        return 0
    failure: XnatfsError | None = None
    if not login.expired():
        try:
            with XnatClient(url, tokens.credentials(login), insecure=args.insecure) as client:
                client.login()
                for alias, _ in login.live_superseded():
                    with contextlib.suppress(NotFound, ServerError):  # gone already, or not ours
                        tokens.invalidate(client, alias)
                tokens.invalidate(client, login.alias)  # last: the session stands on it
        except XnatfsError as exc:
            failure = exc
    store.delete(url)
    if failure is not None and not isinstance(failure, AuthError):  # refused: already void
        raise XnatfsError(f"forgot the stored login for {url}, but could not revoke its token "
                          f"on the server ({failure}); it stays valid until "
                          f"{when(login.expires)}")
    print(f"logged out of {url}")
    return 0


def run_whoami(args: argparse.Namespace) -> int:
    url = default_server_url(args.url)
    login = _stored(url)
    if login.expired():
        raise login.expired_error()
    with XnatClient(url, tokens.credentials(login), insecure=args.insecure) as client:
        tokens.log_in(client)  # renews the token if due
        text = client.request("GET", "/data/auth").text
    if f"'{login.user}'" not in text:
        raise tokens.refused_error(url)
    print(tokens.describe(store.load(url) or login))
    return 0


def run_token_env(args: argparse.Namespace) -> int:
    url = default_server_url(args.url)
    login = _stored(url)
    if login.expired():
        raise login.expired_error()
    if login.renewal_due():
        with XnatClient(url, tokens.credentials(login), insecure=args.insecure) as client:
            tokens.log_in(client)  # renews it
            login = store.load(url) or login
    print(f"xnatfs: warning: this is a secret, valid until {when(login.expires)}: keep the file "
          "it goes into private (chmod 600), and out of version control", file=sys.stderr)
    print(f"XNAT_USER={login.alias} XNAT_PASS={login.secret}")
    return 0
