"""The soak, shortened (SECURITY.md): scripts/soak.py for 20 s. The long run is
``.venv/bin/python -m scripts.soak --minutes N``."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import soak
from tests.support.mount import needs_fuse


@needs_fuse
@pytest.mark.fuse
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_soak_readers_and_materialize_together(tmp_path: Path) -> None:
    report = soak.soak(20, tmp_path, readers=4)
    assert report["errors"] == [] and report["mount_exit"] == 0
    assert all(report["counts"].values()), report["counts"]  # every kind of reader ran
    assert report["cache_peak_bytes"] <= report["cache_limit"]
    warm, after = report["warm"], report["after"]
    assert after["fds"] <= warm["fds"] + 4, report  # no descriptor leak
    assert after["threads"] <= warm["threads"] + 4, report  # no thread leak
    assert report["peak"]["rss_kib"] <= warm["rss_kib"] + 96 * 1024, report  # memory flat
    assert report["ok"]
