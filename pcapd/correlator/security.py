"""Who may change things: a configured token, a session cookie, CSRF tokens.

Reading needs nothing (the page listens on loopback by default). Capturing
and clearing need, all at once: [correlator] token configured, read_only
false, and either an `Authorization: Bearer <token>` header (scripts; a
browser never sends one cross-site) or a session started by typing the token
into /login plus the session's CSRF token in the form. The session cookie is
HttpOnly and SameSite=Strict, signed with a key derived from the token, so
changing the token ends every session. The token never reaches a page.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import Flask, abort, request, session

from pcapd.core.config import CorrelatorConfig

CSRF_FIELD = "csrf"
SESSION_MAX_AGE = 8 * 3600


def configure(app: Flask, config: CorrelatorConfig) -> None:
    token = config.token.reveal() if config.token else secrets.token_hex(32)
    app.secret_key = hashlib.sha256(b"pcapd-correlator-session\0" + token.encode()).digest()
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="pcapd_correlator",
        PERMANENT_SESSION_LIFETIME=SESSION_MAX_AGE,
    )


def changes_allowed(config: CorrelatorConfig) -> str | None:
    """None when state may change at all, else why not (shown to the user)."""
    if config.read_only:
        return "this correlator is read-only ([correlator] read_only = true)"
    if config.token is None:
        return "no [correlator] token is configured, so nothing can be changed"
    return None


def token_matches(config: CorrelatorConfig, given: str) -> bool:
    if config.token is None:
        return False
    return hmac.compare_digest(given.encode(), config.token.reveal().encode())


def logged_in() -> bool:
    return bool(session.get("auth"))


def log_in() -> None:
    session.clear()
    session.permanent = True
    session["auth"] = True
    session[CSRF_FIELD] = secrets.token_urlsafe(32)


def csrf_token() -> str:
    value = session.get(CSRF_FIELD)
    return value if isinstance(value, str) else ""


def require_change(config: CorrelatorConfig) -> None:
    """Abort 403 unless this POST may change state; says which rule failed."""
    why = changes_allowed(config)
    if why:
        abort(403, why)
    bearer = request.headers.get("Authorization", "")
    if bearer.startswith("Bearer "):
        if token_matches(config, bearer[7:]):
            return
        abort(403, "the bearer token does not match [correlator] token")
    if not logged_in():
        abort(403, "log in with the correlator token first (/login)")
    given = request.form.get(CSRF_FIELD, "")
    expected = csrf_token()
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        abort(403, "the form's CSRF token is missing or wrong; reload the page and try again")
