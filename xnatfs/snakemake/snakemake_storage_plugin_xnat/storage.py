"""The storage provider (one logged-in archive per server) and its storage object.

Snakemake asks about every input file: does it exist, when was it modified, how big is it.
Asked one file at a time, that would be a request per file; ``inventory`` instead fills
Snakemake's cache for every file of the query's resource from the one listing that holds them
(the tree lists a whole session in two requests), and marks the resource as inventoried, so
Snakemake knows that a file the listing lacks does not exist. Retrieval reads through the
``Archive`` as the mount does and renames the file into place only when it is whole and its
MD5 passed: a killed workflow never leaves a truncated input behind under its real name.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
from pathlib import Path
from typing import Any

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_storage_plugins.common import Operation
from snakemake_interface_storage_plugins.io import IOCacheStorageInterface, Mtime
from snakemake_interface_storage_plugins.storage_object import (
    StorageObjectRead,
    StorageObjectWrite,
)
from snakemake_interface_storage_plugins.storage_provider import (
    ExampleQuery,
    QueryType,
    StorageProviderBase,
    StorageQueryValidationResult,
)

from xnatfs.account.default import default_server_url
from xnatfs.archive import Archive
from xnatfs.connect import Connection
from xnatfs.errors import AuthError, NotFound, UsageError, XnatfsError
from xnatfs.tree.model import Node
from xnatfs.tree.urls import FORM, tree_path
from xnatfs.xnat.credentials import Credentials, resolve_credentials

READ_ONLY = ("the xnat storage is read-only: files are added on the XNAT server; write "
             "outputs to local paths or another storage provider")
_OWNERS = ("scans", "assessors", "reconstructions")


def resource_depth(parts: list[str]) -> int | None:
    """How many leading parts of a file's tree path name its resource's ``files`` folder
    (``P/resources/L/files``, ``P/S/...``, ``P/S/E/...``, ``P/S/E/scans/X/...``); None when
    the path is not a file of a resource. Subjects and sessions are never called
    ``resources`` (the tree reserves the name), so the first match is the resource."""
    for i in (1, 2, 3, 5):
        if (len(parts) > i + 3 and parts[i] == "resources" and parts[i + 2] == "files"
                and (i != 5 or parts[3] in _OWNERS)):
            return i + 3
    return None


def _path_of(query: str) -> tuple[str, int]:
    """The query's tree path and its resource depth, or a one-line WorkflowError."""
    try:
        path = tree_path(query)
    except XnatfsError as exc:
        raise WorkflowError(str(exc)) from None
    depth = resource_depth(path.split("/"))
    if depth is None:
        raise WorkflowError(f"not a file of a resource: {query} ({FORM})")
    return path, depth


def _flat(text: str) -> str:
    return " ".join(text.split())


class StorageProvider(StorageProviderBase):
    """One server. Nothing here touches the network: the login happens on the first
    question about a file, so ``snakemake --help`` and a dry run's parsing work offline."""

    def __post_init__(self) -> None:
        settings = self.settings
        url = getattr(settings, "url", None) or os.environ.get("XNAT_URL")
        timeout = getattr(settings, "timeout", None)
        try:
            if url and "@" in url.split("://", 1)[-1].split("/", 1)[0]:
                raise XnatfsError("the xnat storage url must not hold a user or password "
                                  "(Snakemake prints its command line, Snakefiles are "
                                  "shared): give user= and password=, or XNAT_USER/XNAT_PASS")
            if timeout is not None and not timeout > 0:
                raise XnatfsError(f"the xnat storage timeout must be positive, not {timeout}")
            self.url = self._server(url)
            self.credentials = self._credentials()
        except XnatfsError as exc:
            raise WorkflowError(_flat(str(exc))) from None
        if self.is_default:
            raise WorkflowError(READ_ONLY + "; it cannot be the default storage provider")
        self.connection = Connection(
            self.url, self.credentials, cache_dir=getattr(settings, "cache_dir", None),
            timeout=timeout)
        host = self.url.split("://", 1)[1]
        self.host_folder = host.replace(":", "_").replace("/", "_")
        # Snakemake never tears a provider down: closing at exit stores the chunks still on
        # their way to the disk cache, so the next run finds them there.
        atexit.register(self.connection.close)

    @staticmethod
    def _server(url: str | None) -> str:
        try:
            return default_server_url(url)
        except UsageError:
            if url:
                raise
            raise UsageError("no XNAT server for the xnat storage: give url= in the storage "
                             "directive, --storage-xnat-url or XNAT_URL (or run xnatfs "
                             "login URL)") from None

    def _credentials(self) -> Credentials:
        """The settings' credentials, else those every xnatfs command would find (no prompt:
        Snakemake may run unattended)."""
        user = getattr(self.settings, "user", None)
        password = getattr(self.settings, "password", None)
        jsession = getattr(self.settings, "jsession", None)
        if jsession:
            return Credentials(jsession=jsession, source="setting")
        if password is not None:
            if not user:
                raise XnatfsError("the xnat storage password needs a user (user=...)")
            return Credentials(user, password, source="setting")
        return resolve_credentials(self.url, user, can_prompt=False)

    def archive(self) -> Archive:
        try:
            return self.connection.archive()
        except XnatfsError as exc:
            text = str(exc) if self.url in str(exc) else f"{self.url}: {exc}"
            if isinstance(exc, AuthError) and self.credentials.is_guest:
                text += (" (the xnat storage found no credentials: set XNAT_USER and "
                         "XNAT_PASS, run xnatfs login, or give user= and password=)")
            raise WorkflowError(_flat(text)) from None

    @classmethod
    def example_queries(cls) -> list[ExampleQuery]:
        return [ExampleQuery(
            query="xnat://PROJ01/S001/S001_MR1/scans/1-T1w/resources/NIFTI/files/t1.nii.gz",
            description="a file of a scan's resource (a tree path of xnatfs ls or the mount)",
            type=QueryType.INPUT)]

    def rate_limiter_key(self, query: str, operation: Operation) -> Any:
        return self.url

    def default_max_requests_per_second(self) -> float:
        return 100.0

    def use_rate_limiter(self) -> bool:
        """The reader bounds its own requests (at most 4 tries, a deadline per call)."""
        return False

    @classmethod
    def is_valid_query(cls, query: str) -> StorageQueryValidationResult:
        try:
            _path_of(query)
        except WorkflowError as exc:
            return StorageQueryValidationResult(query=query, valid=False, reason=str(exc))
        return StorageQueryValidationResult(query=query, valid=True)

    def close(self) -> None:
        self.connection.close()


class StorageObject(StorageObjectRead, StorageObjectWrite):
    """One ``xnat://`` file. A write half exists only to refuse: Snakemake would otherwise
    fail with an AttributeError after the job that wrote the output had run."""

    provider: StorageProvider

    def __post_init__(self) -> None:
        self.path, depth = _path_of(self.query)
        parts = self.path.split("/")
        self.resource = "/".join(parts[:depth])

    def local_suffix(self) -> str:
        return f"{self.provider.host_folder}/{self.path}"

    def get_inventory_parent(self) -> str:
        return self.cache_key(f"{self.provider.host_folder}/{self.resource}")

    async def inventory(self, cache: IOCacheStorageInterface) -> None:
        """Every file of the resource, from its listing. A resource that is not there
        leaves no entry: Snakemake then reads all its files as missing."""
        parent = self.get_inventory_parent()
        # Snakemake's own cache keeps the folders it has the whole of here (not in the
        # interface, so another cache may lack it: then it just gets every file's entry)
        done: set[str] = getattr(cache.exists_in_storage, "has_inventory", set())
        if parent in done:
            return
        try:
            files = list(self.provider.archive().tree.walk(self.resource))
        except NotFound:
            files = []
        except XnatfsError as exc:
            raise WorkflowError(_flat(f"{self.print_query}: {exc}")) from None
        for path, node in files:
            key = self.cache_key(f"{self.provider.host_folder}/{path}")
            cache.exists_in_storage[key] = True
            cache.mtime[key] = Mtime(storage=self._mtime_of(node))
            if node.file is not None and node.file.size is not None:
                cache.size[key] = node.file.size
            if node.file is not None and node.file.digest:
                cache.checksum[key] = f"md5:{node.file.digest.lower()}"
        done.add(parent)

    # -- one file --------------------------------------------------------------------------

    def _node(self) -> Node | None:
        try:
            node = self.provider.archive().tree.lookup(self.path)
        except NotFound:
            return None
        except XnatfsError as exc:
            raise WorkflowError(_flat(f"{self.print_query}: {exc}")) from None
        return None if node.is_dir else node

    def _file_node(self) -> Node:
        node = self._node()
        if node is None:
            raise WorkflowError(f"no such file on {self.provider.url}: {self.path}")
        return node

    def _mtime_of(self, node: Node) -> float:
        """The session's last modification; 0 where XNAT gives no time (project and subject
        resources, whose nodes carry the tree's start): such a file never looks newer than
        the outputs made from it, rather than newer on every run."""
        return 0.0 if node.mtime == self.provider.archive().tree.started else node.mtime

    def exists(self) -> bool:
        return self._node() is not None

    def mtime(self) -> float:
        return self._mtime_of(self._file_node())

    def size(self) -> int:
        node = self._file_node()
        try:
            return self.provider.archive().tree.resolve(node).size or 0
        except XnatfsError as exc:
            raise WorkflowError(_flat(f"{self.print_query}: {exc}")) from None

    def checksum(self) -> str | None:
        file = self._file_node().file
        return f"md5:{file.digest.lower()}" if file is not None and file.digest else None

    def retrieve_object(self) -> None:
        """Through the reader (MD5 checked, chunks kept in the chunk cache) into a part file
        beside the local path, renamed when whole."""
        node = self._file_node()
        archive = self.provider.archive()
        local = Path(self.local_path())
        part = local.with_name(f".{local.name}.xnatfs-part")
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            file = archive.tree.resolve(node)
            with open(part, "wb") as out:
                archive.copy(file, out)
            mtime = self._mtime_of(node) or None
            if mtime:
                os.utime(part, (mtime, mtime))
            os.replace(part, local)
        except XnatfsError as exc:
            raise WorkflowError(_flat(f"{self.print_query}: {exc}")) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    async def managed_retrieve(self) -> None:
        """The interface's, with the download on a worker thread: Snakemake starts the
        retrieval of every input of the ready jobs at once, but a download run on the event
        loop would make them take turns, one server round trip after another. The reader is
        thread-safe and bounds its own requests."""
        await self.wait_for_free_space()
        try:
            await asyncio.to_thread(self.retrieve_object)
        except Exception as exc:
            self.cleanup()
            with contextlib.suppress(FileNotFoundError):
                Path(self.local_path()).unlink()
            raise WorkflowError(f"Failed to retrieve storage object from {self.print_query}",
                                exc) from None

    def cleanup(self) -> None:
        local = Path(self.local_path())
        with contextlib.suppress(FileNotFoundError):
            local.with_name(f".{local.name}.xnatfs-part").unlink()

    # -- refused ---------------------------------------------------------------------------

    def store_object(self) -> None:
        raise WorkflowError(f"{READ_ONLY}: {self.print_query}")

    def remove(self) -> None:
        raise WorkflowError(f"{READ_ONLY}: {self.print_query}")
