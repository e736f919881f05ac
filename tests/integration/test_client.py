"""The REST client against the emulator: login, re-login, HTML pages, Range and its fallback."""

from __future__ import annotations

import errno
import logging
import threading
import time

import pytest

from tests.support.mount import QUICK_PAUSES
from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnat_emulator.content import SyntheticContent
from xnatfs.errors import (
    AuthError,
    Changed,
    ConnectError,
    IntegrityError,
    NotFound,
    ServerError,
    ServerTimeout,
    TransferError,
    XnatfsError,
)
from xnatfs.xnat import retry
from xnatfs.xnat.client import MAX_DROPPED, MAX_LOST, XnatClient, encode_path
from xnatfs.xnat.credentials import Credentials
from xnatfs.xnat.retry import MAX_TRIES, Attempts
from xnatfs.xnat.session import SessionLosses

SPEC = SyntheticSpec(projects=1, subjects=1, sessions=1, scans=2, dicoms=3, dicom_size=2048,
                     niftis=1, nifti_size=3 << 20, hostile=True, seed=3)


@pytest.fixture(scope="module")
def archive():
    return synthetic_archive(SPEC)


@pytest.fixture
def emu(archive):
    with Emulator(archive, EmulatorConfig(), users={"alice": "secret"}) as server:
        yield server


def client_for(emu, user="alice", password="secret", **kw) -> XnatClient:
    return XnatClient(emu.url, Credentials(user, password, source="test"), **kw)


def logins(emu) -> int:
    return emu.log.count(method="POST", path_prefix="/data/JSESSION")


def test_login_once_and_share_the_session(emu):
    with client_for(emu) as client:
        client.login()
        client.listing("/data/projects")
        client.listing("/data/projects")
    assert logins(emu) == 1


def test_wrong_password_fails_once_and_never_again_on_the_wire(emu):
    client = client_for(emu, password="wrong")
    with pytest.raises(AuthError, match="login refused for user alice"):
        client.login()
    sent = len(emu.log.records())
    with pytest.raises(AuthError):
        client.listing("/data/projects")
    assert len(emu.log.records()) == sent
    assert "wrong" not in str(client.credentials)


def test_expired_session_renews_silently(emu):
    with client_for(emu) as client:
        client.login()
        emu.expire_sessions()
        assert client.listing("/data/projects")
    assert logins(emu) == 2  # the login, then one re-login when the session was refused
    turned_away = emu.log.select(path_prefix="/data/projects", status=401)
    assert len(turned_away) == 1 and emu.log.count(path_prefix="/data/projects", status=200) == 1


def test_html_login_page_is_an_auth_failure_not_data(emu):
    emu.config.session_timeout = 0.5
    emu.config.html_login_on_expiry = True
    with client_for(emu) as first:
        first.login()
        jsession = first.session.cookies.get("JSESSIONID")
    time.sleep(0.8)
    client = XnatClient(emu.url, Credentials(jsession=jsession, source="test"))
    with pytest.raises(AuthError, match="refused the JSESSIONID"):
        client.listing("/data/projects")


def test_a_login_that_never_holds_is_refused_after_three_fresh_logins(emu):
    emu.config.login_page_rate = 1.0  # every data request: its session dropped, a login page
    with client_for(emu) as client:
        client.login()
        with pytest.raises(AuthError, match="after 3 fresh logins"):
            client.listing("/data/projects")
    assert logins(emu) == 1 + MAX_LOST  # bounded: never a lockout by logins


def test_sessions_that_served_and_died_are_not_refused_credentials(emu):
    """Each session answers someone, then dies under the same request: a server that drops
    sessions, not one that refuses us. Past MAX_DROPPED the request fails, transiently."""
    with client_for(emu) as client:
        client.login()
        losses = SessionLosses()
        for _ in range(MAX_DROPPED):
            generation = client.generation
            client.jsession.served(generation)
            client.jsession.lost(generation, "/data/projects", losses)
        assert client.generation == 1 + MAX_DROPPED
        client.jsession.served(client.generation)
        with pytest.raises(TransferError, match="ended the session 11 times") as failed:
            client.jsession.lost(client.generation, "/data/projects", losses)
        assert failed.value.transient
    assert logins(emu) == 1 + MAX_DROPPED


@pytest.mark.parametrize("seed", [1, 2])
def test_threads_sharing_a_session_that_often_drops_are_never_refused(archive, seed):
    """Many threads on one session, one data request in ten killing it: a request meets
    deaths the others caused, before it learns that those sessions served them. A request
    may still fail for now, transiently, past ``MAX_DROPPED`` deaths of its own (a loaded
    machine met that); it is never refused."""
    config = EmulatorConfig(seed=seed, login_page_rate=0.1, fault_streak=3)
    with Emulator(archive, config, users={"alice": "secret"}) as server, \
            client_for(server) as client:
        client.login()
        failures: list[XnatfsError] = []

        def work() -> None:
            for _ in range(15):
                try:
                    client.listing("/data/projects")
                except XnatfsError as exc:
                    failures.append(exc)

        threads = [threading.Thread(target=work) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not [exc for exc in failures if not exc.transient]  # AuthError is final
        assert sum(r.fault == "login" for r in server.log.records()) > 10


def _some_files(archive, n=50):
    return [f for f in archive.files() if not f.missing][:n]


def test_every_listed_name_downloads_by_its_uri(emu, archive):
    """Spaces, +, %, #, non-ASCII and sub-folders all survive URL encoding."""
    with client_for(emu) as client:
        for f in _some_files(archive, 1000):
            end = min(f.size, 300)
            assert client.fetch_range(f.uri, 0, end) == f.read(0, end), f.uri


def test_range_is_checked_and_served_from_206(emu, archive):
    big = max(_some_files(archive, 1000), key=lambda f: f.size)
    with client_for(emu) as client:
        emu.log.clear()
        assert client.fetch_range(big.uri, 1000, 5000) == big.read(1000, 4000)
        with client.open_file(big.uri, 10, 20) as body:
            assert body.ranged and body.start == 10 and body.total == big.size
    assert emu.log.count(status=206) == 2


def test_rangeless_server_falls_back_to_a_streamed_full_get(emu, archive):
    emu.config.range_enabled = False
    big = max(_some_files(archive, 1000), key=lambda f: f.size)
    with client_for(emu) as client:
        assert client.fetch_range(big.uri, 2 << 20, (2 << 20) + 777) == \
            big.read(2 << 20, 777)
        with client.open_file(big.uri, 5, 10) as body:
            assert not body.ranged and body.start == 0 and body.length == big.size


def test_truncated_bodies_raise_integrity_errors(emu, archive):
    big = max(_some_files(archive, 1000), key=lambda f: f.size)
    emu.config.truncate_rate = 1.0
    with client_for(emu, retries=0) as client, pytest.raises(IntegrityError):
        client.fetch_range(big.uri, 0, big.size)


def test_missing_objects_are_not_found(emu):
    with client_for(emu) as client, pytest.raises(NotFound):
        client.listing("/data/projects/NOPE/subjects")


def test_unreachable_server_is_one_line():
    client = XnatClient("http://127.0.0.1:9", Credentials("a", "b"), connect_timeout=2,
                        retries=0)
    with pytest.raises(ConnectError) as info:
        client.login()
    assert "\n" not in str(info.value) and "cannot reach http://127.0.0.1:9" in str(info.value)


def test_context_path_is_joined_to_listing_uris(archive):
    cfg = EmulatorConfig(context_path="/xnat")
    with Emulator(archive, cfg, users={"alice": "secret"}) as emu:
        assert emu.url.endswith("/xnat")
        f = _some_files(archive, 1)[0]
        with client_for(emu) as client:
            assert client.fetch_range(f.uri, 0, 10) == f.read(0, 10)



def test_one_relogin_for_all_threads_even_with_a_netrc_entry(emu, tmp_path, monkeypatch):
    """requests sends a ~/.netrc password on every request unless told otherwise; with it,
    each request in flight at expiry would open an XNAT session of its own."""
    host = emu.url.split("//", 1)[1].split(":", 1)[0]
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {host} login alice password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    opened = []
    open_session = emu.auth.open_session
    emu.auth.open_session = lambda *a: opened.append(a) or open_session(*a)
    with client_for(emu) as client:
        client.login()
        emu.expire_sessions()
        emu.config.latency = 0.3  # the four requests overlap
        threads = [threading.Thread(target=client.listing, args=("/data/projects",))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(opened) == 2  # the first login, then one shared re-login


def test_an_alias_token_logs_in_as_its_user(emu):
    """SSO sites: a token from 'Manage Alias Tokens' is a user/password pair for xnatfs."""
    alias, secret = emu.issue_token("alice")
    with client_for(emu, user=alias, password=secret) as client:
        client.login()
        assert client.listing("/data/projects")
    assert {r.user for r in emu.log.records() if r.path == "/data/projects"} == {"alice"}


# -- one retry policy, one deadline ---------------------------------------------------------

def _gets(emu, f) -> int:
    return emu.log.count(method="GET", path_prefix=encode_path(f.uri))


def _big(archive):
    return max(_some_files(archive, 1000), key=lambda f: f.size)


def test_a_file_whose_every_get_fails_costs_four_gets(emu, archive, monkeypatch):
    """The header phase is tried at most four times in all, whoever asks."""
    monkeypatch.setattr(retry, "PAUSES", QUICK_PAUSES)  # tries are counted, not waited for
    big = _big(archive)
    emu.config.fault_kinds = frozenset({"file"})
    with client_for(emu) as client:
        client.login()
        emu.config.error_rate = 1.0
        with pytest.raises(ServerError):
            client.open_file(big.uri, 0, 100)
        assert _gets(emu, big) == MAX_TRIES
        emu.log.clear()
        with pytest.raises(ServerError):
            client.open_file(big.uri, 0, 100, attempts=Attempts.within(30))
        assert _gets(emu, big) == MAX_TRIES
        assert emu.log.count(fault="error") == MAX_TRIES


def test_a_stalled_body_ends_at_the_deadline_with_both_phases_on_one_budget(emu, archive):
    """Every body stalls: a reader that resumes broken bodies with the same ``Attempts``
    gets ServerTimeout, and the server has seen at most four GETs."""
    big = _big(archive)
    emu.config.fault_kinds = frozenset({"file"})
    emu.config.stall_rate, emu.config.stall_seconds = 1.0, 30.0
    with client_for(emu) as client:
        client.login()
        began = time.monotonic()
        attempts = Attempts.within(2.0)
        got = 0
        with pytest.raises(ServerTimeout):
            while True:
                try:
                    with client.open_file(big.uri, got, attempts=attempts) as body:
                        for piece in body.chunks():
                            got += len(piece)
                    break
                except XnatfsError as exc:
                    attempts.again(exc, f"GET {big.uri}")
        elapsed = time.monotonic() - began
        print(f"ServerTimeout after {elapsed:.2f} s, {_gets(emu, big)} GETs")
        assert 1 <= _gets(emu, big) <= MAX_TRIES
        assert elapsed < 2 + 1 + 2  # generous: the deadline is 2 s
        # the dropped connection is not reused: the next GET is answered
        emu.config.stall_rate = 0.0
        assert client.fetch_range(big.uri, 0, 10) == big.read(0, 10)


def test_retry_after_sets_the_pause_and_one_past_the_deadline_ends_the_call(emu, archive,
                                                                            caplog):
    big = _big(archive)
    emu.config.fault_kinds = frozenset({"file"})
    with client_for(emu) as client:
        client.login()
        emu.config.error_rate, emu.config.retry_after = 1.0, 30.0
        with pytest.raises(ServerError, match="HTTP 503"):
            client.open_file(big.uri, 0, 100, attempts=Attempts.within(3.0))
        assert _gets(emu, big) == 1  # come back in 30 s: not within this call's 3 s
        emu.log.clear()
        emu.config.retry_after, emu.config.fault_streak = 1.0, 1  # one 503, then the bytes
        with caplog.at_level(logging.INFO, logger="xnatfs.xnat.retry"), \
                client.open_file(big.uri, 0, 200, attempts=Attempts.within(10.0)) as body:
            assert body.read(200) == big.read(0, 200)
        assert _gets(emu, big) == 2 and emu.log.count(status=503) == 1
        assert [r.getMessage() for r in caplog.records if "trying again in 1 s" in
                r.getMessage()]


def test_a_file_changed_since_it_was_opened_raises_changed():
    archive = synthetic_archive(SPEC)
    with Emulator(archive, EmulatorConfig(), users={"alice": "secret"}) as emu, \
            client_for(emu) as client:
        f = _big(archive)
        with client.open_file(f.uri, 0, 10) as body:
            opened = body.last_modified
            assert opened and body.attempts is not None and body.read(10) == f.read(0, 10)
        with client.open_file(f.uri, 10, 20, since=opened) as body:  # unchanged: served
            assert body.read(10) == f.read(10, 10)
        # an older revision put back: If-Unmodified-Since holds, Last-Modified tells
        f.resource.replace_file(f.relpath, SyntheticContent(99, f.size, f.content.mtime - 86400))
        emu.log.clear()
        with pytest.raises(Changed, match="changed on the server since it was opened"):
            client.open_file(f.uri, 10, 20, since=opened)
        assert _gets(emu, f) == 1 and emu.log.count(status=206) == 1
        # a newer revision: the server refuses the precondition with 412
        f.resource.replace_file(f.relpath, SyntheticContent(98, f.size, f.content.mtime + 2e5))
        emu.log.clear()
        with pytest.raises(Changed) as changed:
            client.open_file(f.uri, 10, 20, since=opened)
        assert _gets(emu, f) == 1 and not changed.value.transient
        assert changed.value.errno == errno.EIO
