"""``xnatfs cache stats|clear``: what the chunk cache holds, and emptying it.

Safe while mounts run: the cache is shared between processes, and a mount simply refetches
what was cleared.
"""

from __future__ import annotations

import argparse
import os

from xnatfs.units import human_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="show or empty the chunk cache of mounts",
                       description="stats: where the cache is and how full; clear: empty it.")
    p.add_argument("action", choices=["stats", "clear"])
    p.add_argument("--cache-dir", metavar="DIR",
                   help="the cache folder (default: the one mounts use by default)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from xnatfs.reader.chunkcache import ChunkCache, default_cache_dir

    directory = os.path.abspath(args.cache_dir or default_cache_dir())
    if not os.path.isdir(directory):
        print(f"no cache at {directory}")
        return 0
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
