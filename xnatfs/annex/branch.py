"""What git-annex knows about each key — its ``xnat://`` URL, and that the ``xnat`` remote has
it — written to the git-annex branch in one commit.

git-annex's own batch modes record one key at a time through its journal: measured here,
``registerurl --batch`` takes 2-3 ms a URL and ``setpresentkey --batch`` about 1 ms a key, so
the logs of 10,000 files took 30 s of a 30 s budget. The logs are plain files in the branch,
in a format git-annex documents and keeps stable (the "internals" page: ``aaa/bbb/KEY.log``,
the location log, and ``KEY.log.web``, the URL log; each line ``TIMESTAMPs 1 VALUE``), so
they are written here as git-annex would write them, in one ``git fast-import`` commit:

* first ``git annex merge``, which commits git-annex's journal, so no journalled change can
  later overwrite what is written here;
* every log is read back from the branch and only our value's line is replaced, so what
  other repositories recorded stays;
* the commit's parent is the branch tip that was read, and fast-import refuses to move the
  branch if it moved meanwhile (a git-annex running beside us): nothing is lost, the run
  fails with one line and can be repeated.

git-annex notices that its branch moved (it compares the tip with its index) and reads the
new logs: ``whereis``, ``get`` and ``fsck`` in the tests prove it.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping

from xnatfs.errors import XnatfsError

from .git import Git

BRANCH = "refs/heads/git-annex"
_PLAIN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_]*")  # needs no escaping in a file name


def log_file(key: str) -> str:
    """The key's log path in the branch, without suffix (git-annex's hashDirLower)."""
    if not _PLAIN_KEY.fullmatch(key):
        raise XnatfsError(f"cannot record the key {key!r}")
    digest = hashlib.md5(key.encode()).hexdigest()
    return f"{digest[:3]}/{digest[3:6]}/{key}"


def merged(old: str, value: str, stamp: str) -> str:
    """A log with ``value`` present as of ``stamp``; other values' lines kept as they were."""
    lines = [ln for ln in old.splitlines() if ln.strip() and ln.split(" ", 2)[2:] != [value]]
    return "".join(f"{ln}\n" for ln in [*lines, f"{stamp} 1 {value}"])


def record(git: Git, remote_uuid: str, urls: Mapping[str, str]) -> None:
    """Mark every key in ``urls`` (key -> ``xnat://`` URL) present in the remote, at its URL."""
    if not urls:
        return
    git.run("annex", "merge")
    tip = git.run("rev-parse", "--verify", "-q", BRANCH).decode().strip()
    if not tip:
        raise XnatfsError("the repository has no git-annex branch: is it a git-annex repository?")
    wanted = {}
    for key, url in urls.items():
        base = log_file(key)
        wanted[f"{base}.log"] = remote_uuid
        wanted[f"{base}.log.web"] = url
    old = _read(git, tip, list(wanted))
    stamp = f"{time.time():.9f}s"
    ident = git.run("var", "GIT_COMMITTER_IDENT").decode().strip()
    parts = [f"commit {BRANCH}\ncommitter {ident}\ndata 7\nupdate\nfrom {tip}\n"]
    for path, value in wanted.items():
        body = merged(old.get(path, ""), value, stamp).encode()
        parts.append(f"M 100644 inline {path}\ndata {len(body)}\n")
        parts.append(body.decode() + "\n")
    git.run("fast-import", "--quiet", input="".join(parts).encode())


def _read(git: Git, tip: str, paths: list[str]) -> dict[str, str]:
    """The branch's current content of those of ``paths`` that exist."""
    query = "".join(f"{tip}:{p}\n" for p in paths).encode()
    out = git.run("cat-file", "--batch", input=query)
    found: dict[str, str] = {}
    pos = 0
    for path in paths:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        pos = end + 1
        if header[-1] == b"missing":
            continue
        size = int(header[2])
        found[path] = out[pos:pos + size].decode("utf-8", "replace")
        pos += size + 1
    return found
