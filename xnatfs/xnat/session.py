"""The one XNAT session that every thread shares, and what a lost session costs.

One JSESSIONID serves every thread (XNAT caps live sessions per user). Basic credentials go
only with the login: were they on every request, each request in flight when the session
expires would open a session of its own. Instead a lost session (``http.SessionLost``: a
401, or a login page where data was asked for) triggers one silent re-login for the whole
process, which every waiting thread then shares, and the request is sent again; that resend
is not one of the request's tries, but it stays within the request's deadline.

Only a refused login (401 on the login itself) is final, because XNAT locks accounts after
20 failed logins; a login page after a login that succeeded is one more lost session. A
session that served requests and then died says nothing about our credentials (a timeout, a
restart, a proxy dropping it): only sessions that die before serving anything count towards
giving up with an ``AuthError``, and only while no other session works either. Many threads
share one session, so on a server that drops sessions often one request meets deaths that
the others' requests caused, and learns only late that the session had served them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from xnatfs.errors import AuthError, ServerError, ServerTimeout, TransferError, UsageError
from xnatfs.xnat.credentials import Credentials
from xnatfs.xnat.http import PEEK, Http, SessionLost, budget, login_page
from xnatfs.xnat.retry import Attempts

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_LOST = 3  # sessions in a row that die unused, none working meanwhile: logins do not hold
MAX_DROPPED = 10  # sessions lost under one request, however: beyond, each costs one retry


@dataclass
class SessionLosses:
    """The lost sessions one request has met: in all, and those in a row that had served no
    request while no other session did either (``served``: the newest session known to work
    when counting began)."""

    total: int = 0
    unused: int = 0
    served: int = 0


def not_xnat(base_url: str, why: str) -> UsageError:
    """The URL reaches a web server, but not XNAT's REST API: say what the base URL is."""
    parts = urlsplit(base_url)
    if parts.path:
        hint = (f"is XNAT's base URL {parts.scheme}://{parts.netloc}, or another part of "
                f"{parts.path}?")
    else:
        hint = f"if XNAT lives below a path, give it, e.g. {base_url}/xnat"
    return UsageError(f"{base_url} does not look like an XNAT server ({why}); {hint} "
                      "(the base URL is what a browser shows before /app/ or /data/)")


class JSession:
    """The shared session of one client: its logins, counted in ``generation``."""

    def __init__(self, http: Http, credentials: Credentials,
                 timeout: tuple[float, float]) -> None:
        self.http = http
        self.credentials = credentials
        self.timeout = timeout  # of a login
        self.auth_failure: AuthError | None = None
        self._lock = threading.Lock()
        self._generation = 0
        self._served = 0  # the newest generation known to have served a request
        if credentials.jsession:
            http.session.cookies.set("JSESSIONID", credentials.jsession)

    @property
    def generation(self) -> int:
        """How many logins this client has made: a lost session is renewed once per value."""
        return self._generation

    def cookie(self) -> str | None:
        return self.http.session.cookies.get("JSESSIONID")

    def login(self, attempts: Attempts | None = None) -> None:
        """Open a session with the credentials' user and password (POST /data/JSESSION)."""
        creds = self.credentials
        attempts = attempts or budget(self.timeout[1])
        base = self.http.base_url
        resp = self.http.call(lambda: self.http.send(
            "POST", "/data/JSESSION", attempts, self.timeout, login=True,
            auth=(creds.user or "", creds.password or "")), attempts, "the login")
        status = resp.status_code
        if status in (401, 403):
            self.auth_failure = AuthError(
                f"login refused for user {creds.user} at {base}"
                " (wrong password or token; XNAT locks accounts after repeated failures)"
            )
            raise self.auth_failure
        if status in (404, 405, 501):
            raise not_xnat(base, f"HTTP {status} for its login, /data/JSESSION")
        if login_page(status, resp.headers.get("Content-Type", ""),
                      lambda: resp.content[:PEEK], html_ok=False, sniff=True):
            raise not_xnat(base, "its login, /data/JSESSION, answered with a web page; on a "
                                 "single sign-on site, use --jsession")
        if status != 200:
            raise ServerError(f"login failed at {base}: HTTP {status}")
        self._generation += 1

    def exchange(self, send: Callable[[], T], path: str, attempts: Attempts, what: str) -> T:
        """``send()`` (one exchange on the current session, raising ``SessionLost`` for a lost
        one) until it is answered: lost sessions renewed, failures tried again within
        ``attempts``."""
        if self.auth_failure:
            raise self.auth_failure
        losses = SessionLosses()

        def attempt() -> T:
            while True:
                generation = self._generation
                try:
                    answer = send()
                except SessionLost:
                    self.lost(generation, path, losses, attempts)
                    if attempts.expired():
                        raise ServerTimeout(f"{what}: no answer within the time allowed "
                                            "(the session had ended)") from None
                    continue
                self.served(generation)
                return answer

        return self.http.call(attempt, attempts, what)

    def served(self, generation: int) -> None:
        """A request sent on the session of ``generation`` was answered: that session worked."""
        if generation > self._served:
            self._served = generation

    def lost(self, generation: int, path: str, losses: SessionLosses,
             attempts: Attempts | None = None) -> None:
        """A request met a lost session opened at ``generation``: one shared re-login, unless
        the request has seen too many (see the module docstring)."""
        base = self.http.base_url
        if generation == self._generation:  # a stale one costs no login, so it is not counted
            losses.total += 1
        if self._served != losses.served:  # some session worked since: start counting again
            losses.served, losses.unused = self._served, 0
        if generation > self._served:
            losses.unused += 1
            if losses.unused > MAX_LOST:
                raise AuthError(f"{base} keeps answering with its login page "
                                f"after {MAX_LOST} fresh logins ({unquote(path)})")
        if losses.total > MAX_DROPPED:
            raise TransferError(f"{base} ended the session {losses.total} times "
                                f"during one request ({unquote(path)})")
        self.relogin(generation, attempts)

    def relogin(self, seen: int, attempts: Attempts | None = None) -> None:
        """Log in again once for everybody who saw the session die at ``seen``, within the
        deadline of the request that asks (a login gets tries of its own, not that
        request's)."""
        attempts = attempts or budget(self.timeout[1])
        if not self._lock.acquire(timeout=attempts.left()):
            raise ServerTimeout(f"{self.http.base_url}: the login did not end within the time "
                                "allowed")
        try:
            if self.auth_failure:
                raise self.auth_failure
            if self._generation != seen:
                return  # another thread already renewed it
            if self.credentials.user is None:
                what = "JSESSIONID" if self.credentials.jsession else "guest access"
                self.auth_failure = AuthError(
                    f"{self.http.base_url} refused the {what}; log in again or pass -u USER"
                )
                raise self.auth_failure
            self.http.session.cookies.clear()
            self.login(Attempts(attempts.deadline))
            log.warning("the session at %s had ended: logged in again", self.http.base_url)
        finally:
            self._lock.release()
