"""Where logins live: one alias token per server, and which server is the default.

The index is ``logins.json`` in the user's config folder (``$XDG_CONFIG_HOME/xnatfs``), the
folder 0700 and the file 0600, replaced atomically under a lock so that two processes renewing
at once never leave half a file. It holds, per server, the user, the token's alias, its issue
and expiry times and the aliases it superseded (so ``logout`` can revoke those too); the
secret sits in the same file unless a real system keyring holds it. The password is never
given to this module.

A keyring counts only when it keeps secrets better than our private file: keyring's
``fail`` and ``null`` backends (headless machines, CI) and keyrings.alt's plain files do not.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from platformdirs import user_config_dir

from xnatfs.errors import AuthError, UsageError

log = logging.getLogger(__name__)

SERVICE = "xnatfs"
"""The keyring service name; the keyring user name is the server URL."""
DAY = 24 * 3600.0
_VERSION = 1


def when(stamp: float) -> str:
    """A moment as users read it in messages: local time, to the minute."""
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(stamp))


@dataclass(frozen=True)
class Login:
    """One server's stored token; ``repr`` never shows the secret."""

    url: str
    user: str
    alias: str
    secret: str = field(repr=False)
    issued: float
    expires: float
    superseded: tuple[tuple[str, float], ...] = ()
    """(alias, expiry) of the tokens this one replaced, still valid on the server until then."""
    in_keyring: bool = False

    @property
    def lifetime(self) -> float:
        return max(self.expires - self.issued, 0.0)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires

    def renew_at(self) -> float:
        """When renewal becomes due: a day, or a quarter of the lifetime if that is longer,
        before expiry; never earlier than half-way, so short-lived tokens are not renewed on
        every use. A nightly job thus always meets a 2-day token with a day left, and renews."""
        window = max(min(DAY, self.lifetime / 2), self.lifetime / 4)
        return self.expires - window

    def renewal_due(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.renew_at()

    def expired_error(self) -> AuthError:
        return AuthError(f"the stored login for {self.url} expired on {when(self.expires)}: "
                         f"run xnatfs login {self.url}")

    def live_superseded(self, now: float | None = None) -> tuple[tuple[str, float], ...]:
        now = time.time() if now is None else now
        return tuple((a, e) for a, e in self.superseded if e > now)


def config_dir() -> Path:
    return Path(user_config_dir("xnatfs", appauthor=False))


def index_path() -> Path:
    return config_dir() / "logins.json"


# -- reading ---------------------------------------------------------------------------------


def _read() -> dict[str, Any]:
    path = index_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return {"version": _VERSION, "default": None, "logins": {}}
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if stat.S_IMODE(mode) & 0o077:  # someone loosened it: it holds secrets
            log.warning("%s was readable by others; made it private", path)
            os.fchmod(file.fileno(), 0o600)
        raw = file.read()
    try:
        document = json.loads(raw)
        if not isinstance(document, dict) or not isinstance(document.get("logins"), dict):
            raise ValueError("not an xnatfs login file")
    except ValueError as exc:  # the message names a position, never the content
        raise UsageError(f"cannot read {path} ({str(exc)[:80]}): delete it and run "
                         "xnatfs login again") from None
    return document


def default_server() -> str | None:
    """The server ``xnatfs login`` last logged in to, if it is still logged in."""
    default = _read().get("default")
    return default if isinstance(default, str) and default else None


def load(url: str) -> Login | None:
    """The stored login for ``url`` (a normalised base URL), or None."""
    entry = _read()["logins"].get(url)
    if not isinstance(entry, dict):
        return None
    try:
        in_keyring = bool(entry.get("keyring"))
        secret = _keyring_get(url) if in_keyring else entry["secret"]
        if not secret:
            raise AuthError(f"the secret of the stored login for {url} is missing from the "
                            f"system keyring: run xnatfs login {url}")
        return Login(url=url, user=str(entry["user"]), alias=str(entry["alias"]),
                     secret=str(secret), issued=float(entry["issued"]),
                     expires=float(entry["expires"]),
                     superseded=tuple((str(a), float(e)) for a, e in entry.get("superseded", [])),
                     in_keyring=in_keyring)
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"the stored login for {url} in {index_path()} is damaged: run "
                         f"xnatfs login {url}") from None


# -- writing ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked() -> Iterator[dict[str, Any]]:
    """Read, let the caller change, and atomically replace the index, under a lock."""
    folder = config_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != 0o700:
        os.chmod(folder, 0o700)
    lock_fd = os.open(folder / "logins.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        document = _read()
        yield document
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".logins.", suffix=".tmp")  # 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(document, file, indent=1, sort_keys=True)
                file.write("\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, index_path())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    finally:
        os.close(lock_fd)


def save(login: Login, *, make_default: bool = True, use_keyring: bool | None = None) -> Login:
    """Store ``login`` (replacing any for its server); the keyring when one is really there
    (``use_keyring`` None: detect), else the private file. Returns what was stored."""
    ring = system_keyring() if use_keyring is None or use_keyring else None
    if use_keyring and ring is None:
        raise UsageError("no system keyring is available here")
    with _locked() as document:
        entry: dict[str, Any] = {
            "user": login.user, "alias": login.alias, "issued": login.issued,
            "expires": login.expires, "superseded": [list(s) for s in login.live_superseded()],
        }
        if ring is not None:
            ring.set_password(SERVICE, login.url, login.secret)
            entry["keyring"] = True
        else:
            entry["secret"] = login.secret
            if document["logins"].get(login.url, {}).get("keyring"):
                _keyring_delete(login.url)
        document["logins"][login.url] = entry
        if make_default:
            document["default"] = login.url
    return replace(login, in_keyring=ring is not None, superseded=login.live_superseded())


def delete(url: str) -> None:
    """Forget ``url``'s login (and stop it being the default)."""
    with _locked() as document:
        entry = document["logins"].pop(url, None)
        if document.get("default") == url:
            document["default"] = None
    if isinstance(entry, dict) and entry.get("keyring"):
        _keyring_delete(url)


# -- the system keyring ----------------------------------------------------------------------


def system_keyring() -> Any | None:
    """The system keyring backend, or None where there is no real one."""
    try:
        import keyring
        from keyring.backends import chainer, fail, null
    except ImportError:
        return None
    try:
        ring = keyring.get_keyring()
    except Exception:  # a broken keyring configuration is no keyring
        return None
    if isinstance(ring, fail.Keyring | null.Keyring):
        return None
    if isinstance(ring, chainer.ChainerBackend) and not ring.backends:
        return None
    if type(ring).__module__.startswith("keyrings.alt"):  # plain or weakly encrypted files
        return None
    return ring


def _keyring_get(url: str) -> str | None:
    ring = system_keyring()
    if ring is None:
        raise AuthError(f"the stored login for {url} is in a system keyring that is not "
                        f"available now: run xnatfs login {url}")
    return ring.get_password(SERVICE, url)


def _keyring_delete(url: str) -> None:
    ring = system_keyring()
    if ring is None:
        return
    with contextlib.suppress(Exception):  # already gone, or locked: nothing more to do
        ring.delete_password(SERVICE, url)
