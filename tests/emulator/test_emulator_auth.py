"""Authentication, sessions, tokens, lockout, guest access and project permissions."""

from __future__ import annotations

import time
from typing import Any

import requests

from xnat_emulator import Archive, Emulator

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"


def test_basic_opens_one_session_and_the_cookie_is_reused(emulator: Emulator, login: Any) -> None:
    api = login(emulator)
    first = api.get("/data/projects")
    assert first.status_code == 200
    cookie = api.cookies["JSESSIONID"]
    assert len(cookie) == 32 and cookie == cookie.upper()
    assert '"' in first.headers["Set-Cookie"].split("SESSION_EXPIRATION_TIME=")[1]
    api.get("/data/projects")
    assert api.cookies["JSESSIONID"] == cookie  # Basic + live cookie: no new session
    plain = login(emulator, None)
    plain.cookies.set("JSESSIONID", cookie)
    assert plain.get("/data/auth").text == "User 'alice' is logged in"
    assert plain.get("/xapi/users/username").text == "alice"


def test_jsession_resource(emulator: Emulator, login: Any) -> None:
    api = login(emulator)
    token = api.post("/data/JSESSION")
    assert token.status_code == 200 and token.text == api.cookies["JSESSIONID"]
    assert token.headers["Content-Type"] == "text/plain;charset=ISO-8859-1"
    api.auth = None
    assert api.get("/data/JSESSION").text == token.text
    assert api.delete("/data/JSESSION").status_code == 200
    assert api.get("/data/projects").status_code == 401
    anonymous = login(emulator, None).get("/data/JSESSION")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="XNAT Protected Area"'


def test_services_auth_form(emulator: Emulator, login: Any) -> None:
    api = login(emulator, None)
    good = api.put("/data/services/auth", data={"username": "alice", "password": "secret"})
    assert good.status_code == 200 and good.text == api.cookies["JSESSIONID"]
    assert api.get("/data/projects").status_code == 200
    bad = api.put("/data/services/auth", data={"username": "alice", "password": "nope"})
    assert bad.status_code == 401 and "<h3>Authentication failed.</h3>" in bad.text


def test_wrong_password_has_no_www_authenticate(emulator: Emulator, login: Any) -> None:
    api = login(emulator, None)
    api.auth = ("alice", "wrong")
    response = api.get("/data/projects")
    assert response.status_code == 401
    assert "WWW-Authenticate" not in response.headers
    assert "HTTP Status 401" in response.text


def test_expired_session(make_emulator: Any, login: Any) -> None:
    emulator = make_emulator(session_timeout=0.2)
    api = login(emulator)
    api.get("/data/projects")
    cookie = api.cookies["JSESSIONID"]
    time.sleep(0.3)
    anonymous = login(emulator, None)
    anonymous.cookies.set("JSESSIONID", cookie)
    expired = anonymous.get("/data/projects")
    assert expired.status_code == 401
    assert expired.headers["WWW-Authenticate"] == 'Basic realm="XNAT"'
    browser = anonymous.get("/data/projects", headers={"User-Agent": BROWSER},
                            allow_redirects=False)
    assert browser.status_code == 302
    assert browser.headers["Location"] == "/app/template/Login.vm"
    followed = anonymous.get("/data/projects", headers={"User-Agent": BROWSER})
    assert followed.status_code == 200 and "Login.vm" in followed.text
    renewed = api.get("/data/projects")  # Basic still attached: silent re-login
    assert renewed.status_code == 200 and api.cookies["JSESSIONID"] != cookie


def test_html_login_page_on_expiry(make_emulator: Any, login: Any) -> None:
    emulator = make_emulator(html_login_on_expiry=True)
    api = login(emulator)
    api.get("/data/projects")
    emulator.expire_sessions()
    api.auth = None
    response = api.get("/data/projects?format=json")
    assert response.status_code == 200
    assert response.text.startswith("<!DOCTYPE html>")
    assert "<!-- BEGIN xnat-templates/screens/Login.vm -->" in response.text


def test_lockout(make_emulator: Any, login: Any) -> None:
    emulator = make_emulator(max_failed_logins=3)
    wrong = login(emulator, None)
    wrong.auth = ("bob", "wrong")
    for _ in range(3):
        assert wrong.get("/data/projects").status_code == 401
    assert login(emulator, "bob").get("/data/projects").status_code == 401  # locked
    assert login(emulator, "alice").get("/data/projects").status_code == 200
    wrong.auth = ("nobody", "x")
    assert wrong.get("/data/projects").status_code == 401


def test_session_cap(make_emulator: Any, login: Any) -> None:
    emulator = make_emulator(max_sessions=2)
    for _ in range(2):  # no cookie jar kept: each request logs in again
        assert requests.get(emulator.url + "/data/projects", auth=("alice", "secret")).ok
    capped = requests.get(emulator.url + "/data/projects", auth=("alice", "secret"))
    assert capped.status_code == 401


def test_alias_tokens(emulator: Emulator, login: Any) -> None:
    issued = login(emulator).get("/data/services/tokens/issue")
    token = issued.json()
    assert len(token["secret"]) == 64 and token["xdatUserId"] == "alice"
    assert token["estimatedExpirationTime"] - token["created"] == 2 * 24 * 3600 * 1000
    api = login(emulator, None)
    api.auth = (token["alias"], token["secret"])
    assert api.get(emulator.url).cookies.get("JSESSIONID")  # xnatpy's token login
    api.auth = None
    assert api.get("/data/auth").text == "User 'alice' is logged in"
    alias, secret = emulator.issue_token("bob")
    assert requests.get(emulator.url + "/xapi/users/username", auth=(alias, secret)).text == "bob"
    valid = api.get(f"/data/services/tokens/validate/{alias}/{secret}").json()
    assert valid == {"valid": "bob"}
    api.get(f"/data/services/tokens/invalidate/{alias}")
    assert requests.get(emulator.url + "/data/auth", auth=(alias, secret)).status_code == 401


def test_open_urls(emulator: Emulator, login: Any) -> None:
    anonymous = login(emulator, None)
    info = anonymous.get("/xapi/siteConfig/buildInfo")
    assert info.status_code == 200 and info.json()["version"].startswith("1.8")
    assert anonymous.get("/xapi/siteConfig/buildInfo/version").status_code == 401
    root = anonymous.get("")
    assert root.status_code == 200 and "Login.vm" in root.text
    assert anonymous.get("/data/version").status_code == 401  # security runs before routing


def test_guest_access(make_emulator: Any, login: Any, hostile_archive: Archive) -> None:
    emulator = make_emulator(hostile_archive, require_login=False)
    guest = login(emulator, None)
    assert 'color:red;">Guest</span>' in guest.get("").text
    projects = {p["ID"] for p in guest.get("/data/projects").json()["ResultSet"]["Result"]}
    assert "PRIVATE" not in projects and {"HOSTILE", "PROTECTED"} <= projects
    assert guest.get("/data/JSESSION").status_code == 200
    assert guest.get("/data/services/tokens/issue").status_code == 403
    assert guest.get("/data/projects/PROTECTED/subjects").status_code == 403


def test_private_and_protected_projects(hostile_emulator: Emulator, login: Any,
                                        hostile_archive: Archive) -> None:
    member, outsider = login(hostile_emulator, "alice"), login(hostile_emulator, "bob")
    visible = {p["ID"] for p in outsider.get("/data/projects").json()["ResultSet"]["Result"]}
    assert "PRIVATE" not in visible and "PROTECTED" in visible
    for project in ("PRIVATE", "PROTECTED"):
        experiment = hostile_archive.projects[project].experiments[0]
        subject = experiment.parent
        assert member.get(f"/data/projects/{project}/subjects").status_code == 200
        assert member.get(f"/data/experiments/{experiment.id}/scans").status_code == 200
        assert outsider.get(f"/data/projects/{project}/subjects/{subject.id}").status_code == 404
        assert outsider.get(f"/data/experiments/{experiment.id}").status_code == 404
    assert outsider.get("/data/projects/PRIVATE").status_code == 404
    assert outsider.get("/data/projects/PRIVATE/subjects").status_code == 404
    assert outsider.get("/data/projects/PROTECTED").status_code == 200
    assert outsider.get("/data/projects/PROTECTED/subjects").status_code == 403
    assert outsider.get("/data/projects/PROTECTED/experiments").status_code == 403
    everything = outsider.get("/data/experiments").json()["ResultSet"]["Result"]
    assert not {e["project"] for e in everything} & {"PRIVATE", "PROTECTED"}


def test_read_only(emulator: Emulator, login: Any) -> None:
    assert login(emulator).delete("/data/projects/PROJ01").status_code == 405
