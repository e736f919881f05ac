"""The HTML an XNAT deployment answers with: Restlet status pages, Tomcat error pages, the
login and home pages, and the proxy pages a fault stands in for.

Clients detect HTML by its first bytes and scrape ``<h3>`` (xnatpy) or the "Logged in as"
line, so these follow the real markup where it is known (docs/xnat-api.md §8, §11).
"""

from __future__ import annotations

from html import escape

_RFC = "http://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html"
_SECTIONS = {400: "4.1", 401: "4.2", 403: "4.4", 404: "4.5", 405: "4.6", 416: "4.17",
             500: "5.1", 501: "5.2"}
REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Temporarily Unavailable",
           504: "Gateway Time-out"}
LOGIN_FAILED = (
    "Your login attempt failed because the username and password combination you provided "
    "was invalid or your user already has the maximum number of user sessions open. After 20 "
    "failed login attempts, your user account will be locked. If you believe your account is "
    "currently locked, you can unlock it by resetting your password."
)


def restlet_status(status: int, message: str) -> bytes:
    """Restlet 1.1 ``StatusFilter`` page, ``<h3>`` holding the message."""
    link = f"{_RFC}#sec10.{_SECTIONS.get(status, '5.1')}"
    return (
        "<html>\n<head>\n   <title>Status page</title>\n</head>\n<body>\n"
        f"<h3>{escape(message, quote=False)}</h3><p>You can get technical details "
        f'<a href="{link}">here</a>.<br>\n'
        'Please continue your visit at our <a href="/">home page</a>.\n</p>\n</body>\n</html>\n'
    ).encode("latin-1", "replace")


def tomcat_error(status: int, message: str) -> bytes:
    """Tomcat's error page, which Spring Security's ``sendError`` produces."""
    title = f"HTTP Status {status} – {REASONS.get(status, 'Error')}"
    return (
        f'<!doctype html><html lang="en"><head><title>{title}</title></head><body>'
        f"<h1>{title}</h1><hr class=\"line\" /><p><b>Type</b> Status Report</p>"
        f"<p><b>Message</b> {escape(message)}</p><hr class=\"line\" />"
        "<h3>Apache Tomcat/9.0</h3></body></html>"
    ).encode()


def proxy_error(status: int) -> bytes:
    """What nginx in front of XNAT says when the upstream fails or is too slow."""
    line = f"{status} {REASONS[status]}"
    return (
        f"<html>\r\n<head><title>{line}</title></head>\r\n<body>\r\n"
        f"<center><h1>{line}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


def login_page(context_path: str) -> bytes:
    return (
        "<!DOCTYPE html>\n<html><head><title>XNAT</title></head><body>\n"
        "<!-- BEGIN xnat-templates/screens/Login.vm -->\n"
        f'<form name="form1" method="post" action="{escape(context_path)}/login" '
        'class="optOut" id="login_form">\n'
        '<input type="text" id="username" name="username"/>\n'
        '<input type="password" name="password" autocomplete="off"/>\n'
        '<button class="submit" id="loginButton" type="submit" name="login">Login</button>\n'
        "</form>\n<!-- END xnat-templates/screens/Login.vm -->\n</body></html>\n"
    ).encode()


def home_page(user: str) -> bytes:
    """The site home page, with the "Logged in as" line xnatpy looks for."""
    if user == "guest":
        who = '<span id="user_info">Logged in as: <span style="color:red;">Guest</span>'
    else:
        who = ('<span id="user_info">Logged in as: &nbsp;<a id="username-link" '
               f'href="/app/template/XDATScreen_UpdateUser.vm">{escape(user)}</a>')
    return (f"<!DOCTYPE html>\n<html><head><title>XNAT</title></head><body>\n{who}</span>\n"
            "</body></html>\n").encode()


def item_page(kind: str, label: str) -> bytes:
    """The HTML a single-item URL gives without ``format=json``."""
    return (f"<!DOCTYPE html>\n<html><head><title>XNAT</title></head><body>\n"
            f"<h2>{escape(kind)}: {escape(label)}</h2>\n</body></html>\n").encode()
