"""Token auth: ``Authorization: Token <t>`` (InfluxDB style) or ``Bearer <t>``, per scope."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import TypeVar, cast

from flask import Flask, current_app, request

from chargewatch.settings import Settings
from chargewatch.tokens import Scope, Tokens, load_tokens
from webapi.errors import ApiError

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)

TOKENS_EXTENSION = "chargewatch_tokens"  # app.extensions key; None when auth is disabled


def install_tokens(app: Flask, settings: Settings) -> None:
    """Load the tokens routes check, or switch auth off (loudly) when the settings say so."""
    if settings.auth.enabled:
        app.extensions[TOKENS_EXTENSION] = load_tokens(settings)
    else:
        logger.warning("token auth is disabled (CHARGEWATCH_AUTH__ENABLED=false): anyone can read and write")
        app.extensions[TOKENS_EXTENSION] = None


def _presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    return None


def require(scope: Scope) -> Callable[[F], F]:
    """Route decorator: 401 without a valid token, 403 when the token lacks ``scope``."""

    def decorate(view: F) -> F:
        @wraps(view)
        def guarded(*args, **kwargs):
            tokens: Tokens | None = current_app.extensions[TOKENS_EXTENSION]
            if tokens is not None:
                check(tokens, scope)
            return view(*args, **kwargs)

        vars(guarded)["required_scope"] = scope  # read by the OpenAPI builder
        return cast(F, guarded)  # functools.wraps keeps the view's signature

    return decorate


def check(tokens: Tokens, scope: Scope) -> None:
    token = _presented_token()
    challenge = {"WWW-Authenticate": 'Token realm="chargewatch"'}
    if token is None:
        raise ApiError(401, "unauthorized", "send 'Authorization: Token <token>'", headers=challenge)
    if tokens.grants(token, scope):
        return
    other: Scope = "read" if scope == "write" else "write"
    if tokens.grants(token, other):
        raise ApiError(403, "forbidden", f"this token has the {other} scope; this endpoint needs {scope}")
    raise ApiError(401, "unauthorized", "the token is not valid", headers=challenge)
