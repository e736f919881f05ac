"""``xnatfs cache stats|clear``: what the chunk cache holds, and emptying it.

Safe while mounts run: the cache is shared between processes, and a mount simply refetches
what was cleared. A folder is only opened as a cache once its ``cache.db`` shows it is one:
opening makes the folder private (0700) and creates the database, and a cache that fails to
open is wiped, none of which may happen to a folder given by mistake.
"""

from __future__ import annotations

import argparse
import os

from xnatfs.cli.units import human_size
from xnatfs.errors import UsageError

DATABASE = "cache.db"
"""The file diskcache keeps its index in; every chunk cache has one."""
SQLITE_MAGIC = b"SQLite format 3\0"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="show or empty the chunk cache of mounts",
                       description="stats: where the cache is and how full; clear: empty it.")
    p.add_argument("action", choices=["stats", "clear"])
    p.add_argument("--cache-dir", metavar="DIR",
                   help="the cache folder (default: the one mounts use by default)")
    p.set_defaults(run=run)


def is_cache(directory: str) -> bool:
    """Whether ``directory`` holds a chunk cache: a ``cache.db`` that is an SQLite database."""
    try:
        with open(os.path.join(directory, DATABASE), "rb") as db:
            return db.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    from xnatfs.reader.chunkcache import ChunkCache, default_cache_dir

    directory = os.path.abspath(args.cache_dir or default_cache_dir())
    if not os.path.isdir(directory):
        print(f"no cache at {directory}")
        return 0
    if not is_cache(directory):
        raise UsageError(f"{directory} is not an xnatfs chunk cache (no {DATABASE} database); "
                         f"left untouched")
    cache = ChunkCache(directory, min_free=0)
    try:
        stats = cache.stats()
        if args.action == "clear":
            removed = cache.clear()
            print(f"removed {removed} chunks ({human_size(int(stats['bytes']))}) from {directory}")
        else:
            print(f"cache:     {directory}\n"
                  f"chunks:    {stats['entries']}\n"
                  f"size:      {human_size(int(stats['bytes']))}\n"
                  f"disk free: {human_size(int(stats['disk_free']))}")
    finally:
        cache.close()
    return 0
