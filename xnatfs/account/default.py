"""The default server: once ``xnatfs login`` has set one, commands may leave out the URL.

``xnatfs ls PROJECT`` then means PROJECT on the default server, but argparse has already
handed the first positional to URL. It is handed back to the tree paths when it does not look
like a server (no ``scheme://``, and no dot or port in its first segment: XNAT project IDs
have neither), so a server is still named with ``https://`` or a dotted host name.
"""

from __future__ import annotations

import argparse

from xnatfs.account import store
from xnatfs.errors import UsageError
from xnatfs.xnat.client import normalise_base_url


def default_server_url(url: str | None) -> str:
    """``url`` normalised, else the default server, else a one-line usage error."""
    if url:
        return normalise_base_url(url)
    default = store.default_server()
    if default:
        return default
    raise UsageError("no server URL given (xnatfs COMMAND URL ..., or -w URL; "
                     "xnatfs login URL makes it the default)")


def looks_like_url(text: str) -> bool:
    if "://" in text:
        return True
    if text.startswith(("/", ".", "~")):
        return False
    head = text.split("/", 1)[0]
    return "." in head or ":" in head


def take_default_server(args: argparse.Namespace) -> None:
    """Give a URL positional that is really a tree path back to the paths (see above)."""
    url = getattr(args, "url", None)
    if not url or getattr(args, "web", None) or looks_like_url(url):
        return
    if not hasattr(args, "paths") and not (hasattr(args, "path") and args.path is None):
        return  # no tree paths here, or PATH is taken already
    if store.default_server() is None:
        return
    if hasattr(args, "paths"):
        args.paths.insert(0, url)
    else:
        args.path = url
    args.url = None
