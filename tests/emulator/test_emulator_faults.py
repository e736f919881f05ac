"""Every knob measurably does what it says; the request log accounts for requests and bytes."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import urllib3

from xnat_emulator import Archive, Emulator, File

AUTH = "Basic YWxpY2U6c2VjcmV0"  # alice:secret


def nifti(archive: Archive, n: int = 0) -> File:
    return [f for f in archive.files() if f.name.endswith(".nii.gz")][n]


def raw_get(emulator: Emulator, path: str) -> tuple[bytes, BaseException | None]:
    """Everything a GET gets back (headers included) until EOF or an error."""
    target = urlsplit(emulator.url + path)
    received = b""
    with socket.create_connection((target.hostname, target.port), timeout=5) as sock:
        sock.sendall(f"GET {target.path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n"
                     "Connection: close\r\n\r\n".encode())
        try:
            while piece := sock.recv(65536):
                received += piece
        except OSError as error:
            return received, error
    return received, None


def test_latency(make_emulator: Any, login: Any) -> None:
    api = login(make_emulator(latency=0.15))
    start = time.monotonic()
    api.get("/data/projects")
    assert time.monotonic() - start >= 0.15


def test_slow_listing_becomes_proxy_504(make_emulator: Any, login: Any,
                                        small_archive: Archive) -> None:
    emulator = make_emulator(listing_delay=5.0, proxy_timeout=0.1)
    api = login(emulator)
    start = time.monotonic()
    response = api.get("/data/projects")
    assert response.status_code == 504 and "nginx" in response.text
    assert time.monotonic() - start < 2
    assert api.get(nifti(small_archive).uri).status_code == 200  # downloads are not listings
    assert emulator.log.count(fault="timeout") == 1


def test_aggregate_and_per_connection_bandwidth(make_emulator: Any, login: Any,
                                                small_archive: Archive) -> None:
    files = [nifti(small_archive, 0), nifti(small_archive, 1)]  # 300 kB each

    def parallel(emulator: Emulator) -> float:
        api = login(emulator)
        api.get("/data/projects")
        start = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            bodies = list(pool.map(lambda f: requests.get(
                emulator.url + f.uri, cookies=api.cookies).content, files))
        assert bodies == [f.read() for f in files]
        return time.monotonic() - start

    aggregate = parallel(make_emulator(bandwidth=1_000_000))  # 600 kB at 1 MB/s: ~0.55 s
    per_connection = parallel(make_emulator(conn_bandwidth=1_000_000))  # 300 kB each: ~0.25 s
    assert aggregate > 0.45
    assert 0.2 < per_connection < aggregate * 0.75


def test_bandwidth_is_live(emulator: Emulator, login: Any, small_archive: Archive) -> None:
    api = login(emulator)
    f = nifti(small_archive)
    emulator.config.bandwidth = 1_000_000
    start = time.monotonic()
    api.get(f.uri)
    throttled = time.monotonic() - start
    emulator.config.bandwidth = None
    start = time.monotonic()
    api.get(f.uri)
    assert throttled > 0.2 and time.monotonic() - start < throttled / 2


def test_bandwidth_kinds_leave_other_answers_unpaced(make_emulator: Any, login: Any,
                                                    small_archive: Archive) -> None:
    f = nifti(small_archive)
    emulator = make_emulator(bandwidth=1.0, conn_bandwidth=1.0,
                             bandwidth_kinds=frozenset({"file"}))  # a byte a second
    api = login(emulator)
    listing = api.get("/data/projects", params={"format": "json"}, timeout=30)  # not paced
    assert listing.status_code == 200 and len(listing.content) > 100
    assert api.head(f.uri, timeout=30).status_code == 200  # no body: never paced
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):  # a file body is paced
        api.get(f.uri, timeout=(5, 1), stream=True).raw.read(10_000)


def test_error_rate_is_seeded(make_emulator: Any, login: Any) -> None:
    def statuses(seed: int) -> list[int]:
        api = login(make_emulator(error_rate=0.3, seed=seed))
        return [api.get("/data/projects").status_code for _ in range(60)]

    first, again, other = statuses(1), statuses(1), statuses(2)
    assert first == again != other
    failures = [s for s in first if s != 200]
    assert 8 <= len(failures) <= 30
    assert set(failures) <= {500, 502, 503, 504} and len(set(failures)) > 1


def test_truncation(make_emulator: Any, small_archive: Archive) -> None:
    emulator = make_emulator(truncate_rate=1.0)
    f = nifti(small_archive)
    received, error = raw_get(emulator, f.uri)
    headers, _, body = received.partition(b"\r\n\r\n")
    assert error is None  # a clean close...
    assert f"Content-Length: {f.size}".encode() in headers
    assert len(body) < f.size and body == f.read(0, len(body))  # ...before the promised end
    record = emulator.log.select(kind="file")[0]
    assert record.fault == "truncate" and record.bytes_sent == len(body)


def test_reset(make_emulator: Any, small_archive: Archive) -> None:
    emulator = make_emulator(reset_rate=1.0)
    f = nifti(small_archive)
    _, error = raw_get(emulator, f.uri)
    assert isinstance(error, ConnectionResetError)
    assert emulator.log.select(kind="file")[0].fault == "reset"


def test_stall(make_emulator: Any, login: Any, small_archive: Archive) -> None:
    emulator = make_emulator(stall_rate=1.0, stall_seconds=0.4)
    api = login(emulator)
    f = nifti(small_archive)
    start = time.monotonic()
    assert api.get(f.uri).content == f.read()
    assert time.monotonic() - start >= 0.4
    with pytest.raises(requests.exceptions.ConnectionError):
        api.get(f.uri, timeout=0.15).content  # noqa: B018 - reading is the point


def test_restart_on_the_same_port(emulator: Emulator, login: Any,
                                  small_archive: Archive) -> None:
    api = login(emulator)
    assert api.get("/data/projects").ok
    url = emulator.url
    emulator.config.stall_rate, emulator.config.stall_seconds = 1.0, 30.0
    outcome: list[BaseException] = []

    def stalled_download() -> None:
        try:
            requests.get(url + nifti(small_archive).uri, auth=("alice", "secret")).content  # noqa: B018
        except requests.RequestException as error:
            outcome.append(error)

    worker = threading.Thread(target=stalled_download)
    worker.start()
    time.sleep(0.2)
    start = time.monotonic()
    emulator.stop()  # the killed server cuts the stalled transfer at once
    worker.join(5)
    assert outcome and time.monotonic() - start < 2
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/data/projects", timeout=1)
    emulator.config.stall_rate = 0.0
    assert emulator.start() == url
    assert api.get("/data/projects").ok


def test_request_log_accounts_requests_and_bytes(emulator: Emulator, login: Any,
                                                 small_archive: Archive) -> None:
    api = login(emulator)
    session = small_archive.experiments["XNAT_E00001"]
    emulator.log.clear()
    listing = api.get(f"/data/experiments/{session.id}/files?all=true").json()
    uris = [row["URI"] for row in listing["ResultSet"]["Result"]]
    for uri in uris:
        api.get(uri)
    api.get(uris[0], headers={"Range": "bytes=0-99"})
    log = emulator.log
    assert len(log) == len(uris) + 2
    assert log.count(kind="file", status=200) == len(uris)
    assert log.count(method="GET", path_prefix="/data/experiments", status=206) == 1
    expected = sum(f.size for f in small_archive.files() if f.uri in set(uris))
    assert log.bytes_sent(kind="file") == expected + 100
    assert log.bytes_sent_for(f"/data/experiments/{session.id}/scans/") > 0
    record = log.records()[-1]
    assert (record.method, record.range, record.user, record.status) == \
           ("GET", "bytes=0-99", "alice", 206)


def test_shuffled_rows(make_emulator: Any, login: Any) -> None:
    api = login(make_emulator(shuffle_rows=True))
    orders = {tuple(r["ID"] for r in api.get("/data/experiments").json()["ResultSet"]["Result"])
              for _ in range(5)}
    assert len(orders) > 1 and len({frozenset(o) for o in orders}) == 1


def test_fault_kinds_narrow_the_faults(make_emulator: Any, login: Any,
                                       small_archive: Archive) -> None:
    emulator = make_emulator(error_rate=1.0, fault_kinds=frozenset({"file"}))
    api = login(emulator)
    assert api.get("/data/projects").status_code == 200
    assert api.get(nifti(small_archive).uri).status_code in (500, 502, 503, 504)
    emulator.config.error_rate, emulator.config.truncate_rate = 0.0, 1.0
    assert api.get("/data/experiments").status_code == 200  # listing bodies left whole
    assert emulator.log.count(fault="truncate") == 0
