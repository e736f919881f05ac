"""``xnatfs ls``: the tree paths of the mount, printed without mounting anything."""

from __future__ import annotations

import argparse
import time

from xnatfs.cli.options import add_connection_options, open_client
from xnatfs.tree.model import Node, Tree, split_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list the tree of an XNAT server (the paths the mount shows)",
                       description="List tree paths: /PROJECT/SUBJECT/SESSION/scans/ID-TYPE/"
                                   "resources/LABEL/files/...")
    add_connection_options(p)
    p.add_argument("path", nargs="?", default="/", metavar="PATH", help="tree path (default /)")
    p.add_argument("-l", dest="long", action="store_true", help="long format: size and date")
    p.add_argument("-R", dest="recursive", action="store_true", help="everything below PATH")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with open_client(args) as client:
        tree = Tree(client)
        node = tree.lookup(args.path)
        base = "/".join(split_path(args.path))
        if not node.is_dir:
            print(_line(tree, base, node, args.long))
        elif args.recursive:
            _print_recursive(tree, base, node, args.long)
        else:
            for name, kid in sorted(tree.children(node).items()):
                print(_line(tree, name, kid, args.long))
    return 0


def _print_recursive(tree: Tree, where: str, node: Node, long: bool) -> None:
    """Pre-order, sorted: each entry, then (for a folder) everything below it."""
    for name, kid in sorted(tree.children(node).items()):
        path = f"{where}/{name}" if where else name
        print(_line(tree, path, kid, long))
        if kid.is_dir:
            _print_recursive(tree, path, kid, long)


def _line(tree: Tree, path: str, node: Node, long: bool) -> str:
    shown = path + ("/" if node.is_dir else "")
    if not long:
        return shown
    size = 0 if node.is_dir else tree.file_size(node)
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(node.mtime))
    kind = "d" if node.is_dir else "-"
    return f"{kind} {'?' if size is None else size:>12} {stamp} {shown}"
