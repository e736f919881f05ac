"""``xnatfs ls``: the tree paths of the mount, printed without mounting anything.

Like GNU ls, ``-R`` tells a folder it may not open (a protected project) on stderr and goes on
with the rest, ending with exit 1; a PATH that does not exist ends it at once (exit 4).
"""

from __future__ import annotations

import argparse
import sys
import time

from xnatfs.archive import Archive
from xnatfs.cli.options import add_connection_options, open_client
from xnatfs.errors import NotFound, UsageError
from xnatfs.tree.model import Node, Tree, split_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list the tree of an XNAT server (the paths the mount shows)",
                       description="List tree paths: /PROJECT/SUBJECT/SESSION/scans/ID-TYPE/"
                                   "resources/LABEL/files/...")
    add_connection_options(p)
    p.add_argument("path", nargs="?", metavar="PATH", help="tree path (default /)")
    p.add_argument("-l", dest="long", action="store_true", help="long format: size and date")
    p.add_argument("-R", dest="recursive", action="store_true", help="everything below PATH")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = _path(args)
    with open_client(args) as client:
        tree = Archive.open_for(client, cache="none").tree  # listings only: no reader runs
        node = tree.lookup(path)
        base = "/".join(split_path(path))
        if not node.is_dir:
            print(_line(tree, base, node, args.long))
            return 0
        if args.recursive:
            return 1 if _print_recursive(tree, base, node, args.long) else 0
        for name, kid in sorted(tree.children(node).items()):
            print(_line(tree, name, kid, args.long))
    return 0


def _path(args: argparse.Namespace) -> str:
    """PATH, wherever argparse put it: with -w URL the first positional is PATH, not URL."""
    if args.web and args.url:
        if args.path is not None:
            raise UsageError("give the server once: URL, or -w URL")
        args.path, args.url = args.url, None
    return args.path or "/"


def _print_recursive(tree: Tree, where: str, node: Node, long: bool) -> bool:
    """Pre-order, sorted: each entry, then (for a folder) everything below it. Returns whether
    some folder could not be listed (each one is told on stderr)."""
    try:
        children = sorted(tree.children(node).items())
    except NotFound as exc:  # a protected project (403), or a folder gone since its listing
        sys.stdout.flush()
        print(f"xnatfs: cannot open {where or '/'}/: {exc}", file=sys.stderr, flush=True)
        return True
    failed = False
    for name, kid in children:
        path = f"{where}/{name}" if where else name
        print(_line(tree, path, kid, long))
        if kid.is_dir:
            failed |= _print_recursive(tree, path, kid, long)
    return failed


def _line(tree: Tree, path: str, node: Node, long: bool) -> str:
    shown = path + ("/" if node.is_dir else "")
    if not long:
        return shown
    size = 0 if node.is_dir else tree.resolve(node).size
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(node.mtime))
    kind = "d" if node.is_dir else "-"
    return f"{kind} {'?' if size is None else size:>12} {stamp} {shown}"
