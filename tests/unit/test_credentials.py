"""Credential resolution: the order of sources, and that secrets never show."""

from __future__ import annotations

import pytest

from xnatfs.errors import UsageError
from xnatfs.xnat.credentials import Credentials, resolve_credentials

URL = "https://xnat.example.org/xnat"


@pytest.fixture
def netrc_file(tmp_path):
    path = tmp_path / "netrc"
    path.write_text("machine xnat.example.org login nora password n3trc\n")
    path.chmod(0o600)
    return str(path)


def test_jsession_on_the_command_line_wins(netrc_file):
    env = {"XNAT_USER": "eve", "XNAT_PASS": "e", "NETRC": netrc_file}
    creds = resolve_credentials(URL, "bob", "ABC123", env=env)
    assert creds.jsession == "ABC123" and creds.user is None


def test_command_line_user_is_prompted_for_a_password():
    asked = []
    creds = resolve_credentials(URL, "bob", env={}, prompt=lambda q: asked.append(q) or "pw",
                                can_prompt=True)
    assert (creds.user, creds.password, creds.source) == ("bob", "pw", "prompt")
    assert asked == ["Password for bob@xnat.example.org: "]


def test_command_line_user_takes_env_password_then_netrc(netrc_file):
    env = {"XNAT_PASS": "from-env"}
    assert resolve_credentials(URL, "bob", env=env).password == "from-env"
    env = {"NETRC": netrc_file}
    creds = resolve_credentials(URL, "nora", env=env, can_prompt=False)
    assert (creds.password, creds.source) == ("n3trc", "netrc")


def test_env_password_of_another_user_is_not_used():
    env = {"XNAT_USER": "eve", "XNAT_PASS": "eves"}
    with pytest.raises(UsageError, match="no password for bob"):
        resolve_credentials(URL, "bob", env=env, can_prompt=False)


def test_environment_then_jsession_env_then_netrc_then_guest(netrc_file):
    env = {"XNAT_USER": "eve", "XNAT_PASS": "e", "XNAT_JSESSION": "J", "NETRC": netrc_file}
    assert resolve_credentials(URL, env=env).user == "eve"
    del env["XNAT_USER"]
    assert resolve_credentials(URL, env=env).jsession == "J"
    del env["XNAT_JSESSION"]
    assert resolve_credentials(URL, env=env).user == "nora"
    assert resolve_credentials(URL, env={"NETRC": "/nonexistent"}).is_guest


def test_alias_token_is_a_user_password_pair():
    alias = "61e4f5db-33e0-4f06-86e7-a59217d65f5c"
    creds = resolve_credentials(URL, env={"XNAT_USER": alias, "XNAT_PASS": "s" * 64})
    assert creds.user == alias and creds.password == "s" * 64


def test_repr_never_shows_secrets():
    creds = Credentials("bob", "hunter2", jsession="SESSIONSECRET", source="prompt")
    assert "hunter2" not in repr(creds) and "SESSIONSECRET" not in repr(creds)
    assert set(creds.secrets()) == {"hunter2", "SESSIONSECRET"}


def test_broken_netrc_is_one_clear_error(tmp_path):
    bad = tmp_path / "netrc"
    bad.write_text("machine xnat.example.org login u password p extra\n")
    with pytest.raises(UsageError, match="cannot read"):
        resolve_credentials(URL, env={"NETRC": str(bad)})
