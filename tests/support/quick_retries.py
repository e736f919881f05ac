"""``python tests/support/quick_retries.py PAUSES PROBE ARGS...``: ``python -m xnatfs ARGS...``
with shorter waits between tries: PAUSES, seconds separated by commas, between the tries of one
request (``xnatfs.xnat.retry.PAUSES``); PROBE, seconds between the tree's tries of a server
that is away (``xnatfs.tree.stash.PROBE_INTERVAL``). ``-`` leaves the product's own.

The product's waits (0.1, 0.3 and 0.9 s; 5 s) are for real servers; a test that proves what a
mount does under faults counts tries and outcomes, which the waits' length does not change,
and would otherwise spend most of its time asleep between tries. Run by its path (not ``-m``),
so that it works from any folder and imports nothing from ``tests``.
"""

import sys

from xnatfs.xnat import retry

# Before anything else of xnatfs is imported: the fetcher takes its default from here.
if sys.argv[1] != "-":
    retry.PAUSES = tuple(float(seconds) for seconds in sys.argv[1].split(","))

from xnatfs.cli import main  # after the pauses are set
from xnatfs.tree import stash

if sys.argv[2] != "-":
    stash.PROBE_INTERVAL = float(sys.argv[2])  # read when a probe is scheduled

raise SystemExit(main(sys.argv[3:]))
