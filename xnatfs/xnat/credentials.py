"""Where the credentials for one XNAT server come from.

The order follows what XNAT users already do with xnatpy and the XNAT Downloader: an explicit
``-u USER`` (password prompted, never taken from argv) or ``--jsession``; then the environment
(``XNAT_USER``/``XNAT_PASS``, ``XNAT_JSESSION``); then the token ``xnatfs login`` stored for the
server; then ``~/.netrc`` for the host; else guest. An alias token (``alias:secret`` from XNAT's
"Manage Alias Tokens") is just a user/password pair and works from every source.

A stored token known to have expired ends here, before any request: a refused login counts
toward XNAT's account lockout, and the user needs ``xnatfs login`` either way.
"""

from __future__ import annotations

import getpass
import netrc
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from xnatfs.account import store
from xnatfs.errors import UsageError

STORED = "stored login"


@dataclass(frozen=True)
class Credentials:
    """What to authenticate with; ``repr`` never shows a secret."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    jsession: str | None = field(default=None, repr=False)
    source: str = "guest"

    @property
    def is_guest(self) -> bool:
        return self.user is None and self.jsession is None

    def secrets(self) -> tuple[str, ...]:
        """The values that must never appear in logs, messages or files."""
        return tuple(s for s in (self.password, self.jsession) if s)


def _netrc_entry(host: str, path: str | None) -> tuple[str, str] | None:
    file = Path(path) if path else Path.home() / ".netrc"
    if not file.is_file():
        return None
    try:
        entry = netrc.netrc(str(file)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as exc:
        raise UsageError(f"cannot read {file}: {exc}") from None
    if not entry or not entry[0] or entry[2] is None:
        return None
    return entry[0], entry[2]


def resolve_credentials(
    url: str,
    user: str | None = None,
    jsession: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    prompt: Callable[[str], str] | None = None,
    can_prompt: bool | None = None,
    stored: bool = True,
) -> Credentials:
    """Pick credentials for ``url`` (a normalised base URL) from the sources above, in order;
    ``stored=False`` skips the stored login (``xnatfs login`` itself)."""
    env = os.environ if env is None else env
    host = urlsplit(url).hostname or ""
    netrc_path = env.get("NETRC")

    if jsession:
        return Credentials(jsession=jsession, source="--jsession")
    if user:
        if env.get("XNAT_PASS") and env.get("XNAT_USER", user) == user:
            return Credentials(user, env["XNAT_PASS"], source="environment")
        if stored and (login := _stored_login(url, user)):
            return login
        entry = _netrc_entry(host, netrc_path)
        if entry and entry[0] == user:
            return Credentials(user, entry[1], source="netrc")
        if can_prompt is None:
            can_prompt = sys.stdin.isatty()
        if not can_prompt:
            raise UsageError(
                f"no password for {user}: run in a terminal, or set XNAT_PASS, "
                f"or add a ~/.netrc entry for {host}"
            )
        ask = prompt or getpass.getpass
        return Credentials(user, ask(f"Password for {user}@{host}: "), source="prompt")
    if env.get("XNAT_USER") and env.get("XNAT_PASS"):
        return Credentials(env["XNAT_USER"], env["XNAT_PASS"], source="environment")
    if env.get("XNAT_JSESSION"):
        return Credentials(jsession=env["XNAT_JSESSION"], source="environment")
    if stored and (login := _stored_login(url, None)):
        return login
    entry = _netrc_entry(host, netrc_path)
    if entry:
        return Credentials(entry[0], entry[1], source="netrc")
    return Credentials()


def _stored_login(url: str, user: str | None) -> Credentials | None:
    login = store.load(url)
    if login is None or (user is not None and login.user != user):
        return None
    if login.expired():
        raise login.expired_error()
    return Credentials(login.alias, login.secret, source=STORED)
