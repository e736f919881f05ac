"""Users, HTTP sessions, alias tokens and lockout, with XNAT's rules (docs/xnat-api.md §8).

Every successful Basic login opens a new session (as Spring's session-fixation strategy
does) unless the request carries a live session of the same user; sessions expire after
``session_timeout`` idle seconds; a user may hold at most ``max_sessions`` live sessions;
``max_failed_logins`` failures lock the account for ``lockout_seconds``, even against the
right password. Alias tokens work as Basic credentials (alias as user, secret as password)
until ``token_lifetime`` seconds after their issue, or until invalidated; an expired one is
refused like a wrong password (XNAT deletes them hourly, §7.6).
"""

from __future__ import annotations

import secrets
import string
import threading
import time
import uuid
from dataclasses import dataclass

from xnat_emulator.knobs import EmulatorConfig

GUEST = "guest"
_ALPHANUMERIC = string.ascii_letters + string.digits


@dataclass
class Session:
    id: str
    user: str
    login: str
    """The name used to log in: the user, or an alias token."""
    last_used: float
    """time.monotonic() of the last request that used it."""


@dataclass
class Token:
    alias: str
    secret: str
    user: str
    created: float
    """Seconds since the epoch."""
    expires: float
    """Seconds since the epoch; fixed at issue, as XNAT's ``estimatedExpirationTime``."""

    def as_json(self) -> dict[str, object]:
        """Jackson's rendering of XNAT's ``AliasToken``."""
        millis = int(self.created * 1000)
        return {"alias": self.alias, "created": millis, "disabled": 0, "enabled": True,
                "estimatedExpirationTime": int(self.expires * 1000), "id": 1,
                "secret": self.secret, "singleUse": False, "timestamp": millis,
                "validIPAddresses": [], "xdatUserId": self.user}


class Auth:
    """The server's security state; thread-safe."""

    def __init__(self, users: dict[str, str], config: EmulatorConfig) -> None:
        self.users = dict(users)
        self.config = config
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._tokens: dict[str, Token] = {}
        self._failures: dict[str, int] = {}
        self._locked_until: dict[str, float] = {}

    def authenticate(self, name: str, password: str) -> str | None:
        """The user these credentials (password or alias token) log in as, or None."""
        now = time.time()
        with self._lock:
            token = self._tokens.get(name)
            if token is not None:
                ok = now < token.expires and secrets.compare_digest(token.secret.encode(),
                                                                    password.encode())
                return token.user if ok else None
            if name not in self.users:
                return None
            if self._locked_until.get(name, 0.0) > now:
                return None
            if secrets.compare_digest(self.users[name].encode(), password.encode()):
                self._failures.pop(name, None)
                return name
            self._failures[name] = self._failures.get(name, 0) + 1
            if self._failures[name] >= self.config.max_failed_logins:
                self._locked_until[name] = now + self.config.lockout_seconds
                self._failures.pop(name)
            return None

    def open_session(self, user: str, login: str) -> Session | None:
        """A new session for ``user``, or None when the user is at the session cap."""
        now = time.monotonic()
        with self._lock:
            self._drop_expired(now)
            live = sum(1 for s in self._sessions.values() if s.user == user)
            if live >= self.config.max_sessions:
                return None
            session = Session(secrets.token_hex(16).upper(), user, login, now)
            self._sessions[session.id] = session
            return session

    def session(self, session_id: str) -> Session | None:
        """The live session with this ID, touched; None if unknown or expired."""
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.last_used > self.config.session_timeout:
                del self._sessions[session_id]
                return None
            session.last_used = now
            return session

    def close_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def expire_sessions(self) -> None:
        """End every session at once, as a server restart or a long idle would."""
        with self._lock:
            self._sessions.clear()

    def issue_token(self, user: str) -> Token:
        now = time.time()
        token = Token(str(uuid.uuid4()), "".join(secrets.choice(_ALPHANUMERIC) for _ in range(64)),
                      user, now, now + self.config.token_lifetime)
        with self._lock:
            self._tokens[token.alias] = token
        return token

    def validate_token(self, alias: str, secret: str) -> str | None:
        with self._lock:
            token = self._tokens.get(alias)
        ok = (token is not None and secrets.compare_digest(token.secret.encode(), secret.encode())
              and time.time() < token.expires)
        return token.user if ok and token else None

    def expire_tokens(self) -> None:
        """Every token's expiry is now: the server's view after its lifetime has passed."""
        now = time.time()
        with self._lock:
            for token in self._tokens.values():
                token.expires = min(token.expires, now)

    def token_aliases(self) -> set[str]:
        """The aliases the server would still accept (issued, not invalidated, not expired)."""
        now = time.time()
        with self._lock:
            return {a for a, t in self._tokens.items() if now < t.expires}

    def invalidate_token(self, alias: str) -> None:
        with self._lock:
            self._tokens.pop(alias, None)

    def _drop_expired(self, now: float) -> None:
        timeout = self.config.session_timeout
        for sid in [s.id for s in self._sessions.values() if now - s.last_used > timeout]:
            del self._sessions[sid]
