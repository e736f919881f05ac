"""``xnatfs ls`` where it goes wrong for a new user: a protected project in ``-R``, ``-w URL
PATH``, TLS on a plain-HTTP port, a URL without a scheme, --insecure's warnings, and a web
server that is not XNAT (``http.server``), reached through a URL copied from a browser."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fixtures import USERS
from tests.support.mount import one_line
from tests.support.security import tls_proxy
from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnat_emulator.archive import Access


def xnatfs(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xnatfs", *args], capture_output=True,
                          text=True, env={**os.environ, "XNAT_PASS": "secret", **env},
                          timeout=60, check=False)


@pytest.fixture
def locked() -> Iterator[Emulator]:
    """PROJ01 and PROJ02, and before them a protected project bob may see but not open."""
    archive = synthetic_archive(SyntheticSpec(projects=2, subjects=1, sessions=1, scans=1,
                                              dicoms=1, dicom_size=512, niftis=0))
    project = archive.add_project("A_LOCKED", access=Access.PROTECTED, members=("alice",))
    archive.add_subject(project, "S1")
    with Emulator(archive, EmulatorConfig(), USERS) as server:
        yield server


def test_recursive_listing_goes_on_past_a_protected_project(locked: Emulator) -> None:
    done = xnatfs("ls", "-R", locked.url, "-u", "bob", XNAT_PASS="hunter2")
    assert done.returncode == 1
    assert "A_LOCKED" in one_line(done.stderr) and "denied" in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "A_LOCKED/"
    assert "PROJ01/" in lines and "PROJ02/" in lines and any(".dcm" in x for x in lines)
    member = xnatfs("ls", "-R", locked.url, "-u", "alice")
    assert member.returncode == 0 and "A_LOCKED/S1/" in member.stdout.splitlines()


def test_web_option_honours_path(locked: Emulator) -> None:
    done = xnatfs("ls", "-w", locked.url, "PROJ02", "-u", "alice")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["S001/", "resources/"]
    missing = xnatfs("ls", "-w", locked.url, "NOSUCH", "-u", "alice")
    assert missing.returncode == 4 and "NOSUCH" in one_line(missing.stderr)
    twice = xnatfs("ls", "-w", locked.url, locked.url, "PROJ02", "-u", "alice")
    assert twice.returncode == 2 and "once" in one_line(twice.stderr)


def test_tls_to_a_plain_http_port(locked: Emulator) -> None:
    https = locked.url.replace("http://", "https://")
    done = xnatfs("ls", https, "-u", "alice")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "does not speak TLS" in line and "certificate" not in line
    assert "--insecure" not in line
    locked.log.clear()
    bare = xnatfs("ls", locked.url.removeprefix("http://"), "-u", "alice")
    assert bare.returncode == 1 and bare.stdout == ""
    line = one_line(bare.stderr)
    assert f"no HTTPS at {https}" in line and f"write {locked.url} to use it" in line
    # the probe that found plain HTTP carried no credentials, and nothing else was asked
    assert [(r.method, r.path, r.user) for r in locked.log.records()] == [("GET", "/", None)]


def test_insecure_says_it_once_in_our_words(locked: Emulator,
                                            certificate: tuple[str, str]) -> None:
    port, stop = tls_proxy((locked.host, locked.port), *certificate)
    try:
        done = xnatfs("ls", f"https://127.0.0.1:{port}", "-u", "alice", "--insecure")
        refused = xnatfs("ls", f"https://127.0.0.1:{port}", "-u", "alice")
    finally:
        stop()
    assert done.returncode == 0, done.stderr
    assert one_line(done.stderr) == (f"xnatfs: warning: TLS certificate of "
                                     f"https://127.0.0.1:{port} is not verified")
    line = one_line(refused.stderr)
    assert "self-signed certificate" in line and "REQUESTS_CA_BUNDLE" in line


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[str]:
    """``python -m http.server``: a web server that is not XNAT."""
    (tmp_path / "index.html").write_text("<html><body>hello</body></html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, directory=str(tmp_path), **kw)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                     daemon=True).start()  # shutdown() waits up to one poll interval
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_xnat(web_server: str) -> None:
    for who in (["-u", "alice"], []):
        done = xnatfs("ls", web_server, *who)
        assert done.returncode == 2
        assert "does not look like an XNAT server" in one_line(done.stderr)
    pasted = xnatfs("ls", web_server + "/xnat/app/template/Index.vm#tab", "-u", "alice")
    line = one_line(pasted.stderr)
    assert f"{web_server}/xnat does not look like an XNAT server" in line
    assert f"base URL {web_server}," in line


def test_a_browser_url_reaches_the_base(locked: Emulator) -> None:
    done = xnatfs("ls", locked.url + "/app/template/Index.vm", "-u", "alice")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["A_LOCKED/", "PROJ01/", "PROJ02/"]


@pytest.mark.parametrize(("given", "base"), [
    ("https://h.org/xnat/app/template/Index.vm", "https://h.org/xnat"),
    ("https://h.org/app/action/DisplayItemAction/search_value/X", "https://h.org"),
    ("h.org/xnat/data/projects/P1?format=json", "https://h.org/xnat"),
    ("https://h.org/REST/projects", "https://h.org"),
    ("https://h.org/data", "https://h.org/data"),  # a context path may be called data
    ("http://h.org:8080/xnat/#/tab", "http://h.org:8080/xnat"),
])
def test_base_url_from_a_browser_or_rest_url(given: str, base: str) -> None:
    from xnatfs.xnat.client import normalise_base_url

    assert normalise_base_url(given) == base
