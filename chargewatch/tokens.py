"""API tokens: a write scope for devices, a read scope for queries.

Tokens come from the environment (``CHARGEWATCH_AUTH__WRITE_TOKENS``/``..._READ_TOKENS``); a scope
the environment leaves empty takes its token from ``<data_dir>/tokens.json``, which is generated on
first use with owner-only permissions. ``chargewatch tokens`` shows them.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from chargewatch.settings import Settings

Scope = Literal["read", "write"]


@dataclass(frozen=True)
class Tokens:
    write: tuple[str, ...]
    read: tuple[str, ...]
    generated_file: Path | None = None

    def grants(self, token: str, scope: Scope) -> bool:
        """Constant-time check that ``token`` is one of the scope's tokens."""
        candidates = self.write if scope == "write" else self.read
        given = token.encode()
        matched = False
        for candidate in candidates:
            # No short-circuit: the time taken does not depend on which token matched.
            matched |= hmac.compare_digest(given, candidate.encode())
        return matched


def load_tokens(settings: Settings) -> Tokens:
    """Tokens per scope from the settings, falling back to the generated tokens file."""
    write, read = tuple(settings.auth.write_tokens), tuple(settings.auth.read_tokens)
    if write and read:
        return Tokens(write, read)
    stored = _read_or_create(settings.tokens_path)
    return Tokens(write or (stored["write"],), read or (stored["read"],), settings.tokens_path)


def _read_or_create(path: Path) -> dict[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = {"write": "cw_w_" + secrets.token_hex(20), "read": "cw_r_" + secrets.token_hex(20)}
    # Written whole to a private temporary file, then linked into place: os.link fails when the
    # file exists, so when several processes start at once exactly one set of tokens wins, and
    # nobody ever reads a half-written file.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tokens-")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(fresh, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
            return fresh
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)
    try:
        stored = json.loads(path.read_text())
        return {"write": str(stored["write"]), "read": str(stored["read"])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"tokens file {path} is unreadable ({err}); delete it to generate new tokens") from err
