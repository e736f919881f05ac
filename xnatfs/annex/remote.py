"""``git-annex-remote-xnat``: XNAT as a read-only git-annex special remote.

git-annex starts this program and talks to it over stdin/stdout (annexremote speaks the
protocol). Content comes through the ``Archive`` the mount uses (``cache="rw"``): verified
against the listing's MD5, in chunks that land in the shared chunk cache, so a retrieval cut
short fetches again only what the cache lacks, and a file the mount has read costs nothing.

Each key's place is an ``xnat://`` URL (a tree path, see ``keys.py``) recorded in git-annex's
web log when the dataset is made; the server is the remote's ``url=`` setting. Credentials are
found at run time as every xnatfs command finds them (environment, stored login, ~/.netrc),
so nothing secret is ever written to the repository. The remote is read-only: STORE and
REMOVE are refused with a line saying so. Every failure reaches git-annex as one line.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from annexremote import Master, RemoteError, SpecialRemote

from xnatfs.archive import Archive
from xnatfs.connect import Connection
from xnatfs.errors import NotFound, XnatfsError
from xnatfs.tree.model import RemoteFile
from xnatfs.tree.urls import SCHEME, tree_path

from .keys import matches, stored_server_url

log = logging.getLogger(__name__)
T = TypeVar("T")
READ_ONLY = ("the xnat remote is read-only: files are added and changed on the XNAT server, "
             "then `xnatfs datalad` updates the dataset")


def one_line(call: Callable[..., T]) -> Callable[..., T]:
    """Any failure as a ``RemoteError`` of one line, which annexremote hands to git-annex; a
    bug's traceback goes to git-annex's debug output, not into the user's terminal."""

    @wraps(call)
    def guarded(self: XnatRemote, *args: Any) -> T:
        try:
            return call(self, *args)
        except RemoteError:
            raise
        except XnatfsError as exc:
            raise RemoteError(_flat(str(exc))) from None
        except OSError as exc:
            raise RemoteError(_flat(f"{exc.strerror or exc}: {exc.filename or ''}")) from None
        except Exception as exc:
            for line in traceback.format_exc().splitlines():
                self.annex.debug(line)
            raise RemoteError(_flat(f"internal error: {type(exc).__name__}: {exc}")) from None

    return guarded


def _flat(text: str) -> str:
    return " ".join(text.split())


def server_url(text: str | None) -> str:
    """The ``url=`` setting, checked as ``xnatfs datalad`` checks it."""
    if not text:
        raise RemoteError("url= is missing: git annex initremote xnat type=external "
                          "externaltype=xnat encryption=none url=https://xnat.example.org")
    try:
        return stored_server_url(text)
    except XnatfsError as exc:
        raise RemoteError(_flat(str(exc))) from None


class XnatRemote(SpecialRemote):
    """The special remote. The connection is made on the first request that needs the server,
    so git-annex's bookkeeping (CLAIMURL, GETCOST) works offline."""

    def __init__(self, annex: Master) -> None:
        super().__init__(annex)
        self.url = ""
        self._connection: Connection | None = None

    def listconfigs(self) -> dict[str, str]:
        return {"url": "the XNAT server, e.g. https://xnat.example.org (no credentials)"}

    def initremote(self) -> None:
        self.url = server_url(self.annex.getconfig("url"))

    def prepare(self) -> None:
        self.url = server_url(self.annex.getconfig("url"))
        self.info = {"url": self.url}  # GETINFO: shown by git annex info

    # -- reading -----------------------------------------------------------------------------

    @one_line
    def transfer_retrieve(self, key: str, filename: str) -> None:
        url, file = self._file_of(key)
        if file is None:
            raise RemoteError(f"{url} is no longer on {self.url}")
        if not matches(key, file):
            raise RemoteError(f"{url} changed on {self.url} since the dataset was made: "
                              "run the same xnatfs datalad command again to update it")
        with open(filename, "wb") as out:
            self.archive().copy(file, out, self.annex.progress)

    @one_line
    def checkpresent(self, key: str) -> bool:
        """From the listing only: the file is there and is still this content."""
        if not self._urls(key):
            return False
        _, file = self._file_of(key)
        return file is not None and matches(key, file)

    @one_line
    def whereis(self, key: str) -> str:
        urls = self._urls(key)
        return f"{self.url} {urls[0][len(SCHEME):]}" if urls else ""

    # -- URLs --------------------------------------------------------------------------------

    def claimurl(self, url: str) -> bool:
        return url.startswith(SCHEME)

    @one_line
    def checkurl(self, url: str) -> list[dict[str, Any]]:
        path = tree_path(url)
        try:
            node = self.archive().tree.lookup(path)
        except NotFound:
            raise RemoteError(f"no such file on {self.url}: {path}") from None
        if node.is_dir:
            raise RemoteError(f"{path} is a folder on {self.url}; give a file "
                              "(xnatfs datalad takes folders)")
        file = self.archive().tree.resolve(node)
        return [{"size": file.size, "filename": path.rsplit("/", 1)[-1]}]

    # -- refused -----------------------------------------------------------------------------

    def transfer_store(self, key: str, filename: str) -> None:
        raise RemoteError(READ_ONLY)

    def remove(self, key: str) -> None:
        raise RemoteError(READ_ONLY + "; git annex drop without --from removes only the "
                          "local copy")

    # -- helpers -----------------------------------------------------------------------------

    def _urls(self, key: str) -> list[str]:
        return [u for u in self.annex.geturls(key, SCHEME) if u.startswith(SCHEME)]

    def _file_of(self, key: str) -> tuple[str, RemoteFile | None]:
        """A URL of the key and the server's file there (None: not there). Files of equal
        content share a key, so a key may have several URLs: the first whose file still holds
        the key's content wins, else the first that has a file, else the first URL."""
        urls = self._urls(key)
        if not urls:
            raise RemoteError(f"no xnat:// URL is recorded for {key}")
        tree = self.archive().tree
        seen: list[tuple[str, RemoteFile]] = []
        for url in urls:
            try:
                node = tree.lookup(tree_path(url))
            except NotFound:
                continue
            if node.is_dir:
                continue
            file = tree.resolve(node)
            if matches(key, file):
                return url, file
            seen.append((url, file))
        return seen[0] if seen else (urls[0], None)

    def archive(self) -> Archive:
        """The logged-in archive, made once per process (git-annex keeps one per job)."""
        if self._connection is None:
            self._connection = Connection(self.url or server_url(self.annex.getconfig("url")))
        return self._connection.archive()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def main() -> int:
    """The console script. stdout is the protocol: log lines go to stderr, which git-annex
    shows to the user."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="git-annex-remote-xnat: %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    output = sys.stdout
    sys.stdout = sys.stderr  # a stray print must not corrupt the protocol
    master = Master(output)
    remote = XnatRemote(master)
    master.LinkRemote(remote)
    try:
        master.Listen()
    except KeyboardInterrupt:
        return 130
    finally:
        remote.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
