"""``xnat://`` URLs: tree paths as URLs, with no server in them.

The git-annex remote and the Snakemake storage plugin both name files this way, so there is
one parser. A URL is a tree path, each name percent-encoded (git-annex's batch lines split on
spaces); the server comes from the front end's own setting, so a URL stays right when the
server moves and never carries credentials.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from xnatfs.errors import UsageError
from xnatfs.tree.model import split_path

SCHEME = "xnat://"
FORM = "xnat://PROJECT/SUBJECT/SESSION/scans/ID-TYPE/resources/LABEL/files/NAME"


def xnat_url(path: str) -> str:
    """``xnat://PROJECT/.../files/NAME`` for a tree path, each name percent-encoded."""
    return SCHEME + "/".join(quote(part, safe="") for part in split_path(path))


def tree_path(url: str) -> str:
    """The tree path an ``xnat://`` URL names; a UsageError for anything else."""
    if not url.startswith(SCHEME):
        raise UsageError(f"not an xnat:// URL: {url}")
    parts = [unquote(p) for p in url[len(SCHEME):].split("/") if p]
    if not parts or any(p in (".", "..") or "/" in p for p in parts):
        raise UsageError(f"not a tree path: {url} ({FORM})")
    return "/".join(parts)
