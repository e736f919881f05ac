"""A DataLad dataset of XNAT files: one annexed file per tree path, content left on the server.

Making it downloads no file body: each file's key comes from its listing (``keys.py``). For
all the files at once, git-annex's branch learns each key's ``xnat://`` URL (where the remote
finds the tree path) and that the ``xnat`` remote has it (``branch.py``, one commit);
``git annex examinekey --batch`` says where each object lives, from which the work tree's
symlinks are written and staged with one ``git add``. Then one commit.

A rerun compares the server's listing with the keys committed at HEAD, below the same PATHs
only: a new path or a new key (size or MD5 changed, a same-size replacement too) is added as
above, a path the server no longer lists is removed, and the commit message says which. A walk
that could not list some folder changes nothing: files below it would look gone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from xnatfs.errors import UsageError, XnatfsError
from xnatfs.materialize.plan import PlannedFile, Planner
from xnatfs.materialize.selection import Selection
from xnatfs.tree.model import Tree
from xnatfs.tree.urls import xnat_url

from .branch import record
from .git import Git
from .keys import annex_key

LISTERS = 8  # listings wait on the server's database, not on bandwidth
SHOWN = 20  # paths of each kind named in a commit message


@dataclass(frozen=True, slots=True)
class Wanted:
    """What the server lists at one tree path."""

    key: str
    url: str


@dataclass
class Changes:
    """The difference between the server's listing and HEAD, below the selected paths."""

    new: dict[str, Wanted] = field(default_factory=dict)
    changed: dict[str, Wanted] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)
    unchanged: int = 0

    def __bool__(self) -> bool:
        return bool(self.new or self.changed or self.gone)

    def summary(self) -> str:
        parts = [f"{len(self.new)} new", f"{len(self.changed)} changed", f"{len(self.gone)} gone"]
        return ", ".join(parts)


def listed(tree: Tree, paths: Iterable[str]) -> tuple[list[str], dict[str, Wanted]]:
    """The selected roots and every file below them, as the server lists them now. Bad paths
    are a NotFound before anything is written; a folder that cannot be listed is an error."""
    found: dict[str, Wanted] = {}
    lock = threading.Lock()
    planned: list[PlannedFile] = []

    def emit(item: PlannedFile) -> None:
        with lock:
            planned.append(item)

    with ThreadPoolExecutor(LISTERS, thread_name_prefix="xnatfs-list") as pool:
        planner = Planner(tree, Selection(tuple(paths)), lambda task: pool.submit(task), emit)
        roots = planner.roots()
        planner.run(roots)
    if planner.failures:
        first = planner.failures[0]
        raise XnatfsError(f"could not list {len(planner.failures)} folder(s), e.g. "
                          f"{first.path}: {first.reason}; the dataset was not changed")
    for item in planned:
        file = tree.resolve(item.node)  # a request only where the listing gave no size
        found[item.path] = Wanted(annex_key(file, item.node.name, item.node.mtime),
                                  xnat_url(item.path))
    return [p for p, _ in roots], found


def committed(git: Git) -> dict[str, str]:
    """Tree path -> key of every annexed symlink at HEAD (none in a fresh dataset)."""
    if not git.ok("rev-parse", "--verify", "-q", "HEAD"):
        return {}
    links: list[tuple[str, str]] = []
    for entry in git.run("ls-tree", "-r", "-z", "HEAD").split(b"\0"):
        if not entry.startswith(b"120000 "):
            continue
        meta, path = entry.split(b"\t", 1)
        links.append((meta.split()[2].decode(), os.fsdecode(path)))
    if not links:
        return {}
    out = git.run("cat-file", "--batch", input="".join(f"{sha}\n" for sha, _ in links).encode())
    keys: dict[str, str] = {}
    pos = 0
    for _, path in links:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        target = out[header_end + 1:header_end + 1 + size].decode("utf-8", "surrogateescape")
        pos = header_end + 1 + size + 1
        if "/annex/objects/" in target:
            keys[path] = target.rsplit("/", 1)[-1]
    return keys


def compare(roots: list[str], wanted: dict[str, Wanted], have: dict[str, str]) -> Changes:
    changes = Changes()
    for path, want in sorted(wanted.items()):
        key = have.get(path)
        if key is None:
            changes.new[path] = want
        elif key != want.key:
            changes.changed[path] = want
        else:
            changes.unchanged += 1
    prefixes = [r + "/" for r in roots]
    selected_all = "" in roots
    changes.gone = sorted(p for p in have if p not in wanted and (
        selected_all or p in roots or any(p.startswith(q) for q in prefixes)))
    return changes


def apply(git: Git, changes: Changes, remote_uuid: str) -> None:
    """Bring the index and work tree to the server's listing (not committed yet)."""
    for path in [*changes.changed, *changes.gone]:
        link = git.root / path
        if link.is_symlink():
            link.unlink()
    if changes.gone:
        data = b"".join(os.fsencode(p) + b"\0" for p in changes.gone)
        git.run("rm", "-q", "--cached", "--ignore-unmatch", "--pathspec-from-file=-",
                "--pathspec-file-nul", input=data)
    adding = {**changes.new, **changes.changed}
    if not adding:
        return
    top = git.root.resolve()
    for folder in sorted({(git.root / p).parent for p in adding}):
        folder.mkdir(parents=True, exist_ok=True)
        if folder.resolve() != top and top not in folder.resolve().parents:
            raise UsageError(f"refusing to write outside {git.root}: {folder} is a link")
    for path in adding:
        if "\n" in path or path.startswith((".git/", ".datalad/")):
            raise UsageError(f"cannot hold {path!r} in a dataset")
    keys = sorted({w.key for w in adding.values()})
    record(git, remote_uuid, {w.key: w.url for w in adding.values()})
    found = git.batch(["annex", "examinekey", "--batch", "--format=${objectpath}\n"], keys)
    objects = dict(zip(keys, found.decode().splitlines(), strict=True))
    for path, want in adding.items():
        try:
            os.symlink("../" * path.count("/") + objects[want.key], git.root / path)
        except FileExistsError:
            raise UsageError(f"{git.root / path} is in the way (a file git does not track): "
                             "move it, then run again") from None
    data = b"".join(os.fsencode(p) + b"\0" for p in adding)
    git.run("add", "--pathspec-from-file=-", "--pathspec-file-nul", input=data)


def roll_back(git: Git, changes: Changes) -> None:
    """After a failed ``apply``: the index and the links as HEAD has them. Only our own
    links are touched (the work tree was clean when the run began)."""
    for path, want in changes.new.items():
        link = git.root / path
        if link.is_symlink() and os.readlink(link).endswith("/" + want.key):
            link.unlink()
    if git.ok("rev-parse", "--verify", "-q", "HEAD"):
        git.run("reset", "-q", "--hard", "HEAD", check=False)


def message(url: str, changes: Changes, *, first: bool) -> str:
    """The commit message: what changed, with the paths (the first ``SHOWN`` of each kind)."""
    if first:
        head = f"xnat: {len(changes.new)} files from {url}"
    else:
        head = f"xnat: {changes.summary()} on {url}"
    lines = [head, ""]
    for kind, paths in (("new", list(changes.new)), ("changed", list(changes.changed)),
                        ("gone", changes.gone)):
        if first and kind == "new":
            continue
        lines += [f"{kind}: {p}" for p in paths[:SHOWN]]
        if len(paths) > SHOWN:
            lines.append(f"{kind}: ... and {len(paths) - SHOWN} more")
    return "\n".join(lines).rstrip() + "\n"


def stored_url(git: Git, remote: str = "xnat") -> tuple[str, str] | None:
    """The ``remote``'s UUID and ``url=`` (from the git-annex branch), or None."""
    uuid = git.run("config", "--get", f"remote.{remote}.annex-uuid", check=False).strip()
    if not uuid:
        return None
    log = git.run("cat-file", "-p", "git-annex:remote.log", check=False).decode()
    for line in log.splitlines():
        fields = line.split()
        if fields and fields[0] == uuid.decode():
            config = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
            return uuid.decode(), config.get("url", "")
    return None

