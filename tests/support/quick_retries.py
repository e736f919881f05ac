"""``python tests/support/quick_retries.py PAUSES PROBE ROUND ARGS...``: ``python -m xnatfs
ARGS...`` with shorter waits between tries: PAUSES, seconds separated by commas, between the
tries of one request (``xnatfs.xnat.retry.PAUSES``); PROBE, seconds between the tree's tries of
a server that is away (``xnatfs.tree.stash.PROBE_INTERVAL``); ROUND, seconds before
materialize's first round of retrying the files that failed (``Options.retry_pause``, tripled
for each round after). ``-`` leaves the product's own.

The product's waits (0.1, 0.3 and 0.9 s; 5 s; 5 then 15 s) are for real servers; a test that
proves what a mount or a run does under faults counts tries and outcomes, which the waits'
length does not change, and would otherwise spend most of its time asleep between tries. Run
by its path (not ``-m``), so that it works from any folder and imports nothing from ``tests``.
"""

import dataclasses
import functools
import sys


def run(pauses: str, probe: str, rounds: str, argv: list[str]) -> int:
    from xnatfs.xnat import retry

    # Before anything else of xnatfs is imported: the fetcher takes its default from here.
    if pauses != "-":
        retry.PAUSES = tuple(float(seconds) for seconds in pauses.split(","))

    from xnatfs.cli import main
    from xnatfs.materialize import engine
    from xnatfs.tree import stash

    if probe != "-":
        stash.PROBE_INTERVAL = float(probe)  # read when a probe is scheduled
    if rounds != "-":  # the command line makes its Options from engine.Options when it runs
        assert dataclasses.is_dataclass(engine.Options)
        engine.Options = functools.partial(  # type: ignore[misc]
            engine.Options, retry_pause=float(rounds))
    return main(argv)


if __name__ == "__main__":
    raise SystemExit(run(*sys.argv[1:4], sys.argv[4:]))
