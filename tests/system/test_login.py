"""``xnatfs login``, ``logout``, ``whoami``, ``token env`` and the stored login in every command.

The command line runs in child processes with HOME and the XDG folders in tmp_path and no
XNAT_* variables, against the emulator, which issues, expires and revokes tokens as XNAT does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests

from tests.support.mount import needs_fuse, tree_of, unmount
from tests.support.security import Secrets, cmdlines
from xnat_emulator import Emulator
from xnatfs.account import store, tokens
from xnatfs.account.store import Login
from xnatfs.mount.host import is_mounted
from xnatfs.xnat.client import XnatClient
from xnatfs.xnat.credentials import STORED, resolve_credentials

PASSWORD = "pw-Kx9+unlikely/7"  # alice's: a string no file holds by chance
pytestmark = pytest.mark.timeout(120)
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def emulator(make_emulator: Callable[..., Emulator]) -> Emulator:
    return make_emulator(users={"alice": PASSWORD})


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME whose config and cache folders the test (and its children) use."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def xnatfs(home: Path) -> Run:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith("XNAT_") and k != "NETRC"}
        return subprocess.run([sys.executable, "-m", "xnatfs", *args], capture_output=True,
                              text=True, env={**clean, **env}, timeout=60, check=False,
                              stdin=subprocess.DEVNULL)
    return run


def _index(home: Path) -> dict[str, Any]:
    return json.loads((home / ".config" / "xnatfs" / "logins.json").read_text())


def _rewrite(home: Path, url: str, **fields: float) -> None:
    """Move the stored token's clock (the server's stays as issued)."""
    path = home / ".config" / "xnatfs" / "logins.json"
    doc = json.loads(path.read_text())
    doc["logins"][url].update(fields)
    path.write_text(json.dumps(doc))


def _login(xnatfs: Run, emulator: Emulator) -> Login:
    done = xnatfs("login", emulator.url, "-u", "alice", "--insecure-http", XNAT_PASS=PASSWORD)
    assert done.returncode == 0, done.stderr
    login = store.load(emulator.url)
    assert login is not None
    return login


def test_login_ls_whoami_token_env_logout(emulator: Emulator, xnatfs: Run, home: Path) -> None:
    url = emulator.url
    plain = xnatfs("login", url, "-u", "alice", XNAT_PASS=PASSWORD)
    nobody = xnatfs("login", url, "--insecure-http")
    assert (plain.returncode, nobody.returncode) == (2, 2)
    assert "plain http" in plain.stderr and "-u USER" in nobody.stderr
    assert len((plain.stderr + nobody.stderr).splitlines()) == 2
    assert len(emulator.log) == 0  # refused before any request

    done = xnatfs("login", url, "-u", "alice", "--insecure-http", XNAT_PASS=PASSWORD)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rf"logged in to {url} as alice; token valid until \d{{4}}-.*\n",
                        done.stdout)
    login = store.load(url)
    assert login is not None and login.user == "alice" and not login.in_keyring
    assert emulator.auth.token_aliases() == {login.alias}
    assert emulator.log.count(method="DELETE", path_prefix="/data/JSESSION") == 1
    folder = home / ".config" / "xnatfs"
    assert (folder.stat().st_mode & 0o777, (folder / "logins.json").stat().st_mode & 0o777) \
        == (0o700, 0o600)
    (folder / "logins.json").chmod(0o644)  # loosened by hand: made private again when read
    assert store.load(url) == login and (folder / "logins.json").stat().st_mode & 0o777 == 0o600

    emulator.log.clear()
    listed = xnatfs("-vv", "ls")  # no URL, no credentials: the stored login and server
    project = xnatfs("ls", "PROJ01")
    assert listed.returncode == 0 and "PROJ01/" in listed.stdout, listed.stderr
    assert project.returncode == 0 and project.stdout.strip(), project.stderr
    assert {r.login for r in emulator.log} == {login.alias}
    whoami = xnatfs("whoami")
    assert whoami.stdout.startswith(f"alice at {url}; token valid until ")

    env = xnatfs("token", "env")
    assert env.stdout == f"XNAT_USER={login.alias} XNAT_PASS={login.secret}\n"
    assert "secret" in env.stderr and login.secret not in env.stderr
    job = dict(line.split("=", 1) for line in env.stdout.split())
    batch = xnatfs("ls", url, **job, XDG_CONFIG_HOME=str(home / "elsewhere"))
    assert batch.returncode == 0 and "PROJ01/" in batch.stdout  # a job script's environment

    logout = xnatfs("logout")
    assert logout.returncode == 0 and logout.stdout == f"logged out of {url}\n"
    assert emulator.auth.token_aliases() == set()
    assert requests.get(url + "/data/auth", auth=(login.alias, login.secret)).status_code == 401
    assert url not in _index(home)["logins"] and _index(home)["default"] is None
    after = xnatfs("ls", url)
    assert after.returncode == 3  # back to guest, which this server refuses

    for run in (listed, project, whoami, logout, after, plain, nobody, done, env, batch):
        assert PASSWORD not in run.stdout + run.stderr and "Traceback" not in run.stderr
        if run is not env:
            assert login.secret not in run.stdout + run.stderr
    assert Secrets.given(PASSWORD).assert_absent_below(home) >= 2  # the password: in no file at all


def test_sso_login_with_a_browser_session(emulator: Emulator, xnatfs: Run, home: Path) -> None:
    """SSO sites: the browser's JSESSIONID buys the token, and stays the browser's."""
    jsession = requests.post(f"{emulator.url}/data/JSESSION", auth=("alice", PASSWORD),
                             timeout=10).text
    done = xnatfs("login", emulator.url, "--insecure-http", XNAT_JSESSION=jsession)
    assert done.returncode == 0 and " as alice; " in done.stdout, done.stderr
    assert emulator.log.count(method="DELETE") == 0
    assert emulator.auth.session(jsession) is not None
    assert jsession not in done.stdout + done.stderr
    assert jsession.encode() not in (home / ".config" / "xnatfs" / "logins.json").read_bytes()


def test_an_expired_token_is_one_line_and_at_most_one_refused_request(
        emulator: Emulator, xnatfs: Run, home: Path) -> None:
    login = _login(xnatfs, emulator)
    _rewrite(home, emulator.url, expires=time.time() - 60)
    emulator.log.clear()
    known = xnatfs("ls")
    assert known.returncode == 3 and len(emulator.log) == 0  # known locally: not even asked
    assert re.fullmatch(rf"xnatfs: the stored login for {emulator.url} expired on .+: "
                        rf"run xnatfs login {emulator.url}\n", known.stderr)

    _rewrite(home, emulator.url, expires=login.expires)
    emulator.expire_tokens()  # the server's clock says otherwise
    refused = xnatfs("ls", "-R")
    assert refused.returncode == 3 and len(refused.stderr.splitlines()) == 1
    assert f"run xnatfs login {emulator.url}" in refused.stderr
    assert len(emulator.log) == 1 and emulator.log.count(status=401) == 1
    assert xnatfs("logout").returncode == 0  # the refused token is simply forgotten


def test_a_token_near_expiry_is_renewed_and_logout_revokes_both(
        emulator: Emulator, xnatfs: Run, home: Path) -> None:
    old = _login(xnatfs, emulator)
    shift = old.expires - (time.time() + 3600)  # as if 47 of its 48 hours had passed
    _rewrite(home, emulator.url, issued=old.issued - shift, expires=old.expires - shift)
    emulator.log.clear()
    done = xnatfs("ls")
    assert done.returncode == 0, done.stderr
    new = store.load(emulator.url)
    assert new is not None and new.alias != old.alias and not new.renewal_due()
    issued = emulator.log.select(path_prefix="/data/services/tokens/issue")
    assert [r.login for r in issued] == [old.alias]
    assert new.superseded[0][0] == old.alias
    assert emulator.auth.token_aliases() == {old.alias, new.alias}  # others may still use it
    assert xnatfs("ls").returncode == 0
    assert len(emulator.log.select(path_prefix="/data/services/tokens/issue")) == 1
    assert xnatfs("logout").returncode == 0
    assert emulator.auth.token_aliases() == set()


def test_a_long_run_renews_its_token_while_it_runs(make_emulator: Any, home: Path) -> None:
    # A 2-second token is due for renewal after 1 s, half its lifetime; the renewed one 1 s
    # later, when the keeper finds the logout.
    emulator = make_emulator(users={"alice": PASSWORD}, token_lifetime=2.0)
    with XnatClient(emulator.url, resolve_credentials(emulator.url, "alice", env={
            "XNAT_PASS": PASSWORD})) as client:
        client.login()
        store.save(tokens.issue(client))
    old = store.load(emulator.url)
    assert old is not None
    creds = resolve_credentials(emulator.url, env={})
    assert (creds.source, creds.user) == (STORED, old.alias)
    with XnatClient(emulator.url, creds) as client:
        tokens.log_in(client)
        deadline = time.monotonic() + 60
        while client.credentials.user == old.alias:
            assert time.monotonic() < deadline, "the token was not renewed"
            time.sleep(0.05)
        emulator.auth.invalidate_token(old.alias)
        emulator.expire_sessions()
        assert client.listing("/data/projects")  # logs in again with the renewed token
        fresh = store.load(emulator.url)
        assert fresh is not None and fresh.alias == client.credentials.user
        store.delete(emulator.url)  # a logout elsewhere: the next renewal must not undo it
        while tokens._KEEPERS:
            assert time.monotonic() < deadline, "the keeper did not notice the logout"
            time.sleep(0.05)
        assert store.load(emulator.url) is None


def test_credential_order(emulator: Emulator, home: Path, tmp_path: Path) -> None:
    url = emulator.url
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login nora password n\n")
    netrc.chmod(0o600)
    store.save(Login(url, "alice", "an-alias", "s3", time.time(), time.time() + 1e5))
    env = {"NETRC": str(netrc)}
    assert resolve_credentials(url, env=env).source == STORED  # before netrc
    assert resolve_credentials(url, env={**env, "XNAT_USER": "e", "XNAT_PASS": "p"}).user == "e"
    assert resolve_credentials(url, "alice", env=env).user == "an-alias"
    assert resolve_credentials(url, "nora", env=env).source == "netrc"  # someone else
    assert resolve_credentials(url, None, "JS", env=env).jsession == "JS"
    assert resolve_credentials(url, env=env, stored=False).source == "netrc"
    assert "s3" not in repr(store.load(url))


def test_the_keyring_holds_the_secret_where_one_really_exists(home: Path) -> None:
    import keyring
    from keyring.backend import KeyringBackend

    class Memory(KeyringBackend):
        priority = 1  # type: ignore[assignment]
        values: ClassVar[dict[tuple[str, str], str]] = {}

        def get_password(self, service: str, username: str) -> str | None:
            return self.values.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            self.values[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            self.values.pop((service, username), None)

    assert store.system_keyring() is None  # headless here: keyring's fail backend
    before = keyring.get_keyring()
    keyring.set_keyring(Memory())
    try:
        url = "https://xnat.example.org"
        saved = store.save(Login(url, "alice", "an-alias", "s3cr3t", 1.0, time.time() + 1e5))
        assert saved.in_keyring and Memory.values == {(store.SERVICE, url): "s3cr3t"}
        assert b"s3cr3t" not in store.index_path().read_bytes()
        loaded = store.load(url)
        assert loaded is not None and loaded.secret == "s3cr3t"
        store.delete(url)
        assert Memory.values == {} and store.load(url) is None
    finally:
        keyring.set_keyring(before)


@pytest.fixture
def mountpoint(home: Path) -> Iterator[Path]:
    point = home / "mnt"
    point.mkdir()
    yield point
    unmount(str(point))


@needs_fuse
@pytest.mark.fuse
def test_a_mount_uses_the_stored_login_and_shows_its_secret_nowhere(
        emulator: Emulator, xnatfs: Run, home: Path, mountpoint: Path) -> None:
    login = _login(xnatfs, emulator)
    cache = home / ".cache" / "xnatfs"
    started = xnatfs("-vv", "mount", str(mountpoint), "--cache-dir", str(cache))
    assert started.returncode == 0, started.stderr
    try:
        assert is_mounted(str(mountpoint))
        files = [p for p, kind in tree_of(mountpoint).items() if kind == "file"]
        (mountpoint / files[0]).read_bytes()
        argv = cmdlines()
        assert login.secret.encode() not in argv and PASSWORD.encode() not in argv
    finally:
        unmount(str(mountpoint))
    assert {r.login for r in emulator.log.select(kind="file")} == {login.alias}
    assert login.secret not in started.stdout + started.stderr
    assert Secrets.given(PASSWORD, login.alias + ":" + login.secret).assert_absent_below(home) > 2


@pytest.mark.parametrize("argv", [
    ["login", "http://127.0.0.1:9", "-u", "alice"],  # plain http, not allowed
    ["login", "ftp://example.org"],
    ["logout", "https://u:pw@example.org"],
    ["whoami"],  # no URL and no default server
    ["token"],
    ["token", "env", "--bogus"],
])
def test_account_misuse_is_one_line_and_exit_2(argv: list[str], home: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from xnatfs.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("xnatfs") and err.count("\n") == 1, err
