"""The catalog cost of XNAT's file requests, the server's cores, and zips that go wrong."""

from __future__ import annotations

import io
import threading
import zipfile
from typing import Any

import pytest

from xnat_emulator import Archive
from xnat_emulator.cli import _config, build_parser


def _resource(archive: Archive) -> tuple[str, Any]:
    """A scan resource of the small archive: its URL and the emulator's resource."""
    session = archive.experiments["XNAT_E00001"]
    scan = session.scans[0]
    resource = scan.resources[0]
    return (f"/data/experiments/{session.id}/scans/{scan.id}/resources/{resource.label}",
            resource)


def test_every_file_request_pays_for_its_whole_catalog(make_emulator: Any, login: Any,
                                                       small_archive: Archive) -> None:
    emulator = make_emulator()
    api = login(emulator)
    url, resource = _resource(small_archive)
    entries = len(resource.files)
    assert entries > 1
    api.get(f"{url}/files/{resource.files[0].relpath}")
    api.get(f"{url}/files")
    api.get(f"{url}/files?format=zip")
    api.get("/data/projects")
    charged = [(r.kind, r.catalog_entries) for r in emulator.log]
    assert charged == [("file", entries), ("listing", entries), ("zip", entries),
                       ("listing", 0)]


def test_catalog_work_waits_for_a_free_core(make_emulator: Any, login: Any,
                                            small_archive: Archive) -> None:
    emulator = make_emulator(catalog_cost=0.002, server_cores=1)
    url, resource = _resource(small_archive)
    statuses: list[int] = []

    def get() -> None:
        statuses.append(login(emulator).get(f"{url}/files/{resource.files[0].relpath}")
                        .status_code)

    threads = [threading.Thread(target=get) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 4
    assert emulator.cores.peak == 1 and emulator.cores.busy == 0


def test_zips_cut_short(make_emulator: Any, login: Any, small_archive: Archive) -> None:
    emulator = make_emulator(zip_truncate_rate=1.0)
    api = login(emulator)
    url, _ = _resource(small_archive)
    with pytest.raises(Exception):  # noqa: B017 - a cut chunked body, as requests reports it
        zipfile.ZipFile(io.BytesIO(api.get(f"{url}/files?format=zip").content))
    api.get(f"{url}/files")  # other bodies are left alone
    assert [r.fault for r in emulator.log] == ["truncate", None]


def test_garbled_entries_keep_a_fitting_crc(make_emulator: Any, login: Any,
                                            small_archive: Archive) -> None:
    api = login(make_emulator(zip_garble_rate=1.0))
    url, resource = _resource(small_archive)
    archive = zipfile.ZipFile(io.BytesIO(api.get(f"{url}/files?format=zip").content))
    assert archive.testzip() is None  # the CRCs hold...
    for name in archive.namelist():
        f = next(f for f in resource.files if name.endswith("/files/" + f.relpath))
        data = archive.read(name)
        assert len(data) == f.size and data != f.read()  # ...over the wrong bytes


@pytest.mark.parametrize("broken", ["garbage", "names"])
def test_broken_zips(make_emulator: Any, login: Any, small_archive: Archive,
                     broken: str) -> None:
    api = login(make_emulator(broken_zips=broken))
    url, resource = _resource(small_archive)
    body = api.get(f"{url}/files?format=zip").content
    if broken == "garbage":
        assert not zipfile.is_zipfile(io.BytesIO(body))
    else:
        names = zipfile.ZipFile(io.BytesIO(body)).namelist()
        assert len(names) == len(resource.files)
        assert not any(n.endswith("/files/" + f.relpath) for n in names for f in resource.files)


def test_catalog_options_reach_the_config() -> None:
    config = _config(build_parser().parse_args(
        ["--catalog-cost", "0.00001", "--server-cores", "4", "--zip-truncate-rate", "0.3"]))
    assert (config.catalog_cost, config.server_cores, config.zip_truncate_rate) == \
        (0.00001, 4, 0.3)
    assert _config(build_parser().parse_args([])).server_cores is None

