"""The logged-in archive of a front end that runs under another program and never prompts.

git-annex starts the special remote and Snakemake loads the storage plugin; neither has a
terminal to ask for a password on, and both may ask for thousands of files in one process.
So credentials come from where every xnatfs command finds them (environment, stored login,
``~/.netrc``) or from the caller, the login happens on the first request that needs the server
(bookkeeping works offline), once per process, and a refused login is never tried again by
that process: ``get`` of 1,000 files must not cost 1,000 failed logins (XNAT locks an account
after 20).
"""

from __future__ import annotations

import threading

from xnatfs.archive import Archive
from xnatfs.errors import AuthError
from xnatfs.xnat.client import GRACE, XnatClient
from xnatfs.xnat.credentials import Credentials, resolve_credentials


class Connection:
    """One server's ``Archive`` (``cache="rw"``: verified reads through the chunk cache), made
    on first use. Thread-safe; ``close`` when done."""

    def __init__(self, url: str, credentials: Credentials | None = None, *,
                 cache_dir: str | None = None, timeout: float | None = None) -> None:
        self.url = url
        self._credentials = credentials
        self._cache_dir = cache_dir
        self._timeout = timeout
        self._lock = threading.Lock()
        self._archive: Archive | None = None
        self._refused: AuthError | None = None

    def archive(self) -> Archive:
        with self._lock:
            if self._refused is not None:
                raise self._refused
            if self._archive is None:
                self._archive = self._open()
            return self._archive

    def _open(self) -> Archive:
        from xnatfs.account.tokens import log_in

        credentials = self._credentials or resolve_credentials(self.url, can_prompt=False)
        timeouts = {} if self._timeout is None else {"read_timeout": self._timeout}
        client = XnatClient(self.url, credentials, **timeouts)
        try:
            log_in(client)
            deadline = None if self._timeout is None else self._timeout + GRACE
            return Archive.open_for(client, cache="rw", cache_dir=self._cache_dir,
                                    deadline=deadline)
        except AuthError as exc:
            client.close()
            self._refused = exc
            raise
        except BaseException:
            client.close()
            raise

    def close(self) -> None:
        with self._lock:
            archive, self._archive = self._archive, None
        if archive is not None:
            archive.close()
            archive.client.close()
