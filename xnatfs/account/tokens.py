"""Alias tokens on the server: issue, renew, revoke, and keep a running client's token fresh.

XNAT issues a token to whoever is logged in (``GET /data/services/tokens/issue``), so renewal
is just asking again while logged in with the old token; the old one is left to expire rather
than revoked, because other processes (a mount, a batch job) may still log in with it. It is
remembered instead, and ``logout`` revokes it along with the current one. Revoking takes
only the alias (``/data/services/tokens/invalidate/{alias}``): the secret never goes into a
URL, where proxies and access logs would keep it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref

from xnatfs.account import store
from xnatfs.account.store import Login, when
from xnatfs.errors import AuthError, ServerError, XnatfsError
from xnatfs.xnat.client import XnatClient, data_path
from xnatfs.xnat.credentials import STORED, Credentials

log = logging.getLogger(__name__)

RETRY = 600.0
"""Seconds between renewal attempts while the server cannot be reached."""


def credentials(login: Login) -> Credentials:
    return Credentials(login.alias, login.secret, source=STORED)


def issue(client: XnatClient, superseded: tuple[tuple[str, float], ...] = ()) -> Login:
    """A new token for whoever ``client`` is logged in as."""
    resp = client.request("GET", "/data/services/tokens/issue", expect_json=True)
    try:
        doc = resp.json()
        alias, secret = doc["alias"], doc["secret"]
        expires = float(doc["estimatedExpirationTime"]) / 1000
        issued = float(doc.get("created") or time.time() * 1000) / 1000
        user = doc.get("xdatUserId")
        if not (isinstance(alias, str) and alias and isinstance(secret, str) and secret
                and isinstance(user, str) and user):
            raise ValueError("empty token")
    except (ValueError, KeyError, TypeError):
        raise ServerError(f"{client.base_url} did not answer with an alias token") from None
    return Login(url=client.base_url, user=user, alias=alias, secret=secret, issued=issued,
                 expires=expires, superseded=superseded)


def renew(client: XnatClient, old: Login) -> Login:
    """Swap ``old`` for a fresh token (``client`` is logged in with it), store it and make the
    client log in with it from now on."""
    fresh = issue(client, ((old.alias, old.expires), *old.superseded))
    if fresh.user != old.user:
        raise ServerError(f"{client.base_url} issued a token for {fresh.user}, not {old.user}")
    fresh = store.save(fresh, make_default=False, use_keyring=old.in_keyring or None)
    client.credentials = credentials(fresh)
    log.info("renewed the token for %s; valid until %s", client.base_url, when(fresh.expires))
    return fresh


def invalidate(client: XnatClient, alias: str) -> None:
    client.request("GET", data_path("services", "tokens", "invalidate", alias),
                   expect_json=True).close()


def log_in(client: XnatClient) -> None:
    """``client.login()``; with a stored token, a refusal is told as the stored login's, and
    the token is then kept fresh. Every front end logs in through here."""
    try:
        client.login()
    except AuthError:
        if client.credentials.source == STORED:
            raise refused_error(client.base_url) from None
        raise
    keep_fresh(client)


def keep_fresh(client: XnatClient) -> None:
    """For a client logged in with a stored token: renew it now if due, and keep renewing it
    while the process runs (a mount or a long materialize outlives a token)."""
    if client.credentials.source != STORED:
        return
    login = store.load(client.base_url)
    if login is None or login.alias != client.credentials.user:
        return
    if login.renewal_due():
        try:
            login = renew(client, login)
        except AuthError:
            raise
        except XnatfsError as exc:  # the token still works: renewal can wait for next time
            log.warning("could not renew the token for %s (valid until %s): %s",
                        client.base_url, when(login.expires), exc)
    keeper = _Keeper(client, login)
    with _KEEPERS_LOCK:
        _KEEPERS.add(keeper)
    keeper.start()


class _Keeper:
    """A daemon thread that renews a client's token when due, for as long as the client is
    alive; restarted in a forked child (the mount forks after logging in, and threads do not
    survive a fork)."""

    def __init__(self, client: XnatClient, login: Login) -> None:
        self.client = weakref.ref(client)
        self.url = client.base_url
        self.login = login

    def start(self) -> None:
        threading.Thread(target=self._run, name="xnatfs-token", daemon=True).start()

    def _run(self) -> None:
        wake = self.login.renew_at()
        while True:
            time.sleep(max(wake - time.time(), 0.0))
            client = self.client()
            if client is None:
                break
            try:
                if not self._renew(client):
                    break
                wake = self.login.renew_at()
            except AuthError as exc:
                log.warning("cannot renew the token for %s: %s", self.url, exc)
                break  # the client itself reports the refusal on its next login
            except XnatfsError as exc:
                if self.login.expired():
                    log.warning("the token for %s expired on %s and could not be renewed: %s",
                                self.url, when(self.login.expires), exc)
                    break
                wake = time.time() + min(RETRY, max(self.login.expires - time.time(), 0) / 4)
            finally:
                del client
        with _KEEPERS_LOCK:
            _KEEPERS.discard(self)

    def _renew(self, client: XnatClient) -> bool:
        """Renew (or adopt what another process renewed); False once logged out."""
        stored = store.load(self.url)
        if stored is None or stored.user != self.login.user:
            log.info("%s was logged out; the token is no longer renewed", self.url)
            return False
        if stored.alias == self.login.alias or stored.renewal_due():
            stored = renew(client, stored)
        self.login = stored
        client.credentials = credentials(stored)
        return True


_KEEPERS: set[_Keeper] = set()
_KEEPERS_LOCK = threading.Lock()


def _restart_keepers() -> None:
    global _KEEPERS_LOCK
    _KEEPERS_LOCK = threading.Lock()  # it may have been held by a thread the fork dropped
    for keeper in list(_KEEPERS):
        keeper.start()


os.register_at_fork(after_in_child=_restart_keepers)


def describe(login: Login) -> str:
    return f"{login.user} at {login.url}; token valid until {when(login.expires)}"


def refused_error(url: str) -> AuthError:
    return AuthError(f"the stored login for {url} was refused by the server (expired or "
                     f"revoked): run xnatfs login {url}")
