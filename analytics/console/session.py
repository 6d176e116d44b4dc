"""Console sign-in: the read token, typed once into a form, becomes a signed cookie.

The cookie is Flask's signed session (itsdangerous, HMAC-SHA1 over a key derived with SHA-256),
``HttpOnly`` (scripts cannot read it) and ``SameSite=Lax`` (other sites' forms and scripts do not
send it). The signing key is derived from the configured tokens, so every gunicorn worker derives
the same one and changing the tokens signs everyone out. The cookie holds no token, only a digest
of the one used, checked against the current tokens on every request. The API never looks at it:
``/v1/...`` keeps header auth.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import TypeVar, cast
from urllib.parse import urlsplit

from flask import Flask, current_app, redirect, request, session, url_for

from chargewatch.tokens import Tokens
from webapi.auth import TOKENS_EXTENSION

F = TypeVar("F", bound=Callable)

SESSION_HOURS = 12
_KEY_LABEL = b"chargewatch console session key v1"


def configure_sessions(app: Flask) -> None:
    """Give the app its cookie settings and signing key (auth disabled: a fixed key, nothing to guard)."""
    tokens: Tokens | None = app.extensions[TOKENS_EXTENSION]
    material = b"\x00".join(t.encode() for t in (*tokens.write, *tokens.read)) if tokens else b"auth disabled"
    app.config.update(
        SECRET_KEY=hmac.new(_KEY_LABEL, material, hashlib.sha256).hexdigest(),
        SESSION_COOKIE_NAME="chargewatch_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
    )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def sign_in(token: str) -> bool:
    """Start a session when ``token`` is a read token; False otherwise."""
    tokens: Tokens | None = current_app.extensions[TOKENS_EXTENSION]
    if tokens is not None and not tokens.grants(token, "read"):
        return False
    session.clear()
    session.permanent = True
    session["token_digest"] = _digest(token)
    session["signed_in_at"] = int(time.time())
    return True


def sign_out() -> None:
    session.clear()


def is_signed_in() -> bool:
    tokens: Tokens | None = current_app.extensions[TOKENS_EXTENSION]
    if tokens is None:
        return True
    digest = session.get("token_digest")
    signed_in_at = session.get("signed_in_at", 0)
    if not isinstance(digest, str) or time.time() - signed_in_at > SESSION_HOURS * 3600:
        return False
    # The token may have been removed from the configuration since: look for it again.
    return any(hmac.compare_digest(digest, _digest(t)) for t in tokens.read)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: only a path inside the console (never another site)."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and parts.path.startswith("/console/") and "\\" not in target:
            return target
    return url_for("console.fleet")


def signed_in(view: F) -> F:
    """Page decorator: to the sign-in form without a valid session."""

    @wraps(view)
    def guarded(*args, **kwargs):
        if not is_signed_in():
            return redirect(url_for("console.sign_in_form", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return cast(F, guarded)  # functools.wraps keeps the view's signature
