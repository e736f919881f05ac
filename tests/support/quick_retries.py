"""``python tests/support/quick_retries.py PAUSES ARGS...``: ``python -m xnatfs ARGS...`` with
the pauses between tries of one request (``xnatfs.xnat.retry.PAUSES``) set to PAUSES, seconds
separated by commas.

The product's pauses (0.1, 0.3 and 0.9 s) are for real servers; a test that proves what a mount
does under faults counts tries and outcomes, which the pauses' length does not change, and
would otherwise spend most of its time asleep between tries. Run by its path (not ``-m``), so
that it works from any folder and imports nothing from ``tests``.
"""

import sys

from xnatfs.xnat import retry

# Before anything else of xnatfs is imported: the fetcher takes its default from here.
retry.PAUSES = tuple(float(seconds) for seconds in sys.argv[1].split(","))

from xnatfs.cli import main  # noqa: E402 - after the pauses are set

raise SystemExit(main(sys.argv[2:]))
