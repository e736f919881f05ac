"""The emulator's alias tokens keep XNAT's rules: a configured lifetime, expiry and
invalidation refuse the token, and the request log names the alias a session logged in with."""

from __future__ import annotations

from typing import Any

import requests

from xnat_emulator import Emulator


def test_token_lifetime_expiry_and_invalidation(make_emulator: Any, login: Any) -> None:
    emulator: Emulator = make_emulator(token_lifetime=600)
    token = login(emulator).get("/data/services/tokens/issue").json()
    assert token["estimatedExpirationTime"] - token["created"] == 600_000
    alias, secret = token["alias"], token["secret"]
    emulator.log.clear()
    assert requests.get(emulator.url + "/data/auth", auth=(alias, secret)).ok
    assert {(r.user, r.login) for r in emulator.log} == {("alice", alias)}

    emulator.expire_tokens()
    assert requests.get(emulator.url + "/data/auth", auth=(alias, secret)).status_code == 401
    api = login(emulator)
    assert api.get(f"/data/services/tokens/validate/{alias}/{secret}").json() == {"valid": None}

    alias, secret = emulator.issue_token("alice")
    renewed = requests.get(emulator.url + "/data/services/tokens/issue", auth=(alias, secret))
    assert renewed.json()["xdatUserId"] == "alice" and renewed.json()["alias"] != alias
    assert api.get(f"/data/services/tokens/invalidate/{alias}").json() == {"result": "OK"}
    assert requests.get(emulator.url + "/data/auth", auth=(alias, secret)).status_code == 401
    assert emulator.auth.token_aliases() == {renewed.json()["alias"]}
