"""The security gate in front of every request, and the endpoints that change security state.

Mirrors the layering of a real deployment (docs/xnat-api.md §8): Basic credentials are checked on
every path (a wrong password is a Tomcat 401 *without* WWW-Authenticate), a live JSESSIONID
cookie of the same user spares re-authentication, and an unauthenticated request to a data
path gets 401 + WWW-Authenticate (non-browser), a 302 to the login page (browser), or,
as an option, 200 with the login page.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

from xnat_emulator import pages
from xnat_emulator.auth import GUEST, Auth, Session
from xnat_emulator.knobs import EmulatorConfig
from xnat_emulator.routes import HttpError, Target
from xnat_emulator.transfer import Response

OPEN_PATHS = {"", "/app/template/Login.vm", "/data/JSESSION", "/data/services/auth",
              "/xapi/siteConfig/buildInfo"}
_BROWSER = re.compile(r"MSIE|Mozilla|AppleWebKit|Opera")


@dataclass
class Visitor:
    """Who is asking, once the gate has looked at the credentials."""

    user: str | None = None
    session: Session | None = None
    new_session: bool = False


class Gate:
    """Decides who a request comes from, and answers the endpoints that log in and out."""

    def __init__(self, auth: Auth, config: EmulatorConfig) -> None:
        self.auth = auth
        self.config = config

    def admit(self, path: str, headers: dict[str, str]) -> Visitor | Response:
        """The visitor, or the answer that turns them away."""
        visitor = Visitor()
        session_id = _cookie(headers.get("cookie", ""), "JSESSIONID")
        if session_id:
            visitor.session = self.auth.session(session_id)
        credentials = _basic(headers.get("authorization", ""))
        session = visitor.session
        if credentials is not None:
            name, password = credentials
            if session is None or name not in (session.user, session.login):
                user = self.auth.authenticate(name, password)
                session = self.auth.open_session(user, name) if user else None
                if session is None:
                    return Response(401, [("Content-Type", "text/html;charset=utf-8")],
                                    pages.tomcat_error(401, pages.LOGIN_FAILED), kind="auth")
                visitor.session, visitor.new_session = session, True
        if visitor.session is not None:
            visitor.user = visitor.session.user
        elif not self.config.require_login:
            visitor.user = GUEST
        elif path.rstrip("/") not in OPEN_PATHS:
            return self.turn_away(headers.get("user-agent", ""))
        return visitor

    def turn_away(self, user_agent: str) -> Response:
        ctx = self.config.path_prefix
        if _BROWSER.search(user_agent) and "XNATDesktopClient" not in user_agent:
            return Response(302, [("Location", f"{ctx}/app/template/Login.vm"),
                                  ("Content-Length", "0")], kind="auth")
        if self.config.html_login_on_expiry:
            return Response(200, [("Content-Type", "text/html;charset=UTF-8")],
                            pages.login_page(ctx), kind="auth")
        return Response(401, [("WWW-Authenticate", 'Basic realm="XNAT"'),
                              ("Content-Type", "text/html;charset=utf-8")],
                        pages.tomcat_error(401, "Full authentication is required to access "
                                                "this resource"), kind="auth")

    def cookies(self, visitor: Visitor) -> list[str]:
        """Set-Cookie values for this answer: the session if new, and the expiry stamp."""
        path = self.config.path_prefix or "/"
        values = []
        if visitor.new_session and visitor.session is not None:
            values.append(f"JSESSIONID={visitor.session.id}; Path={path}; HttpOnly")
        timeout = int(self.config.session_timeout * 1000)
        values.append(f'SESSION_EXPIRATION_TIME="{int(time.time() * 1000)},{timeout}"; '
                      f"Version=1; Path={path}")
        return values

    # -- endpoints that change security state ---------------------------------------------

    def endpoint(self, target: Target, method: str, visitor: Visitor, body: bytes) -> Response:
        kind = target.kind
        if kind == "jsession":
            return self._jsession(method, visitor)
        if kind == "services_auth":
            return self._services_auth(method, visitor, body)
        if kind == "auth":
            return _text(f"User '{visitor.user}' is logged in")
        if kind == "token_issue":
            if visitor.user in (None, GUEST):
                raise HttpError(403, "Forbidden")
            token = self.auth.issue_token(visitor.user)  # type: ignore[arg-type]
            return _json(token.as_json())
        if kind == "token_validate":
            alias, _, secret = (target.path or "").partition(":")
            return _json({"valid": self.auth.validate_token(alias, secret)})
        assert kind == "token_invalidate"
        self.auth.invalidate_token(target.path or "")
        return _json({"result": "OK"})

    def _jsession(self, method: str, visitor: Visitor) -> Response:
        if method == "DELETE":
            if visitor.session is not None:
                self.auth.close_session(visitor.session.id)
            return Response(200, [("Content-Type", "text/plain;charset=ISO-8859-1")], kind="auth")
        if visitor.session is None and visitor.user == GUEST:
            visitor.session, visitor.new_session = self.auth.open_session(GUEST, GUEST), True
        if visitor.session is None:
            return Response(401, [("WWW-Authenticate", 'Basic realm="XNAT Protected Area"'),
                                  ("Content-Type", "text/html;charset=ISO-8859-1")],
                            pages.restlet_status(401, "The request requires user authentication"),
                            kind="auth")
        return _text(visitor.session.id, "ISO-8859-1")

    def _services_auth(self, method: str, visitor: Visitor, body: bytes) -> Response:
        if method not in ("PUT", "POST"):
            raise HttpError(405, "Method Not Allowed")
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        name, password = form.get("username", ""), form.get("password", "")
        user = self.auth.authenticate(name, password)
        session = self.auth.open_session(user, name) if user else None
        if session is None:
            return Response(401, [("Content-Type", "text/html;charset=ISO-8859-1")],
                            pages.restlet_status(401, "Authentication failed."), kind="auth")
        visitor.user, visitor.session, visitor.new_session = user, session, True
        return _text(session.id, "ISO-8859-1")


def _text(text: str, charset: str = "UTF-8") -> Response:
    return Response(200, [("Content-Type", f"text/plain;charset={charset}")], text.encode(),
                    kind="auth")


def _json(document: object) -> Response:
    return Response(200, [("Content-Type", "application/json")], json.dumps(document).encode(),
                    kind="auth")


def _cookie(header: str, name: str) -> str | None:
    """A cookie's value; by hand, as ``SimpleCookie`` gives up on the quoted comma in
    SESSION_EXPIRATION_TIME."""
    for pair in header.split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key == name:
            return value.strip('"')
    return None


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, _, password = base64.b64decode(encoded.strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return name, password
