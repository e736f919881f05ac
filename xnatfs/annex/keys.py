"""Annex keys and ``xnat://`` URLs, from listings alone.

A key names content, so it must come from what XNAT says about the content without
downloading it: the listing's size and MD5 make an ``MD5E`` key, exactly the key git-annex
itself would compute from the bytes (same extension rule), so ``git annex fsck`` checks the
file with no help from us and a copy added by hand dedups with ours. A file the server lists
without an MD5 gets a ``WORM`` key (size, time, name): git-annex can then check its size only.

Files are named by ``xnat://`` URLs (``xnatfs.tree.urls``, shared with the Snakemake plugin),
with no server in them: the server is the remote's ``url=``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from xnatfs.errors import UsageError
from xnatfs.tree.model import RemoteFile
from xnatfs.xnat.client import normalise_base_url

MAX_EXTENSION_LENGTH = 4  # git-annex's annex.maxextensionlength default
MAX_EXTENSIONS = 2  # and its annex.maxextensions default: .nii.gz, not .a.nii.gz
_MD5 = re.compile(r"[0-9a-f]{32}")


def extension(name: str) -> str:
    """What git-annex appends to an ``MD5E`` key for a file called ``name``: the last (at most
    two) dotted parts, each alphanumeric and at most four characters, stopping at a longer one."""
    base = name.rsplit("/", 1)[-1]
    dot = base.find(".", 1) if base.startswith(".") else base.find(".")
    if dot < 0:
        return ""
    parts = base[dot + 1:].split(".")
    kept: list[str] = []
    for part in reversed(parts):
        if len(part) > MAX_EXTENSION_LENGTH:
            break
        if part.isascii() and part.isalnum():
            kept.append(part)
    kept = [p for p in kept[:MAX_EXTENSIONS] if p]
    return "".join("." + p for p in reversed(kept))


def annex_key(file: RemoteFile, name: str, mtime: float) -> str:
    """The key of a listed file (``file.size`` known). ``mtime`` only matters for a file
    without an MD5, whose ``WORM`` key then changes when its session does."""
    assert file.size is not None
    digest = (file.digest or "").lower()
    if _MD5.fullmatch(digest):
        return f"MD5E-s{file.size}--{digest}{extension(name)}"
    tag = hashlib.sha1(file.uri.encode()).hexdigest()[:16]
    return f"WORM-s{file.size}-m{int(mtime)}--{tag}{extension(name)}"


@dataclass(frozen=True, slots=True)
class KeyFacts:
    """What a key says about its content: size (if given) and MD5 (for MD5 keys)."""

    size: int | None
    md5: str | None


def key_facts(key: str) -> KeyFacts:
    """Size and MD5 of any git-annex key (``BACKEND-sSIZE-...--NAME``)."""
    fields, sep, name = key.partition("--")
    parts = fields.split("-")
    size = next((int(p[1:]) for p in parts[1:] if p[:1] == "s" and p[1:].isdigit()), None)
    md5 = None
    if sep and parts[0] in ("MD5", "MD5E"):
        stem = name.split(".", 1)[0]
        md5 = stem.lower() if _MD5.fullmatch(stem.lower()) else None
    return KeyFacts(size, md5)


def matches(key: str, file: RemoteFile) -> bool:
    """Whether the server's listed file is still the content ``key`` names."""
    facts = key_facts(key)
    if facts.size is not None and file.size is not None and facts.size != file.size:
        return False
    return not (facts.md5 and file.digest and facts.md5 != file.digest.lower())


def stored_server_url(text: str) -> str:
    """The server's base URL as the dataset stores it (the remote's ``url=``, in the
    git-annex branch every clone gets): so never with a user or password in it."""
    parts = urlsplit(text if "://" in text else "https://" + text)
    if parts.username or parts.password:
        raise UsageError("the URL must not hold a user or password: it is stored in the "
                         "dataset (give credentials with XNAT_USER/XNAT_PASS, xnatfs login "
                         "or ~/.netrc)")
    return normalise_base_url(text)
