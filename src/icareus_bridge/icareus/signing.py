"""The Icareus call signature (DOMAIN.md): token = "01" + T + M, T = Unix seconds as 8 lowercase
hex digits, M = MD5 hex of organizationId, the call's parameters in order, T and the key, joined
with ":". Shared by the client (signs) and the simulator (verifies)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from icareus_bridge.core.model import sorted_products

TOKEN_VERSION = "01"
TOKEN_LENGTH = len(TOKEN_VERSION) + 8 + 32
CLOCK_WINDOW_SECONDS = 300


def token_time(unix_seconds: float) -> str:
    """T: whole Unix seconds as 8 lowercase hex digits."""
    return f"{int(unix_seconds) & 0xFFFFFFFF:08x}"


def signing_string(organization_id: str, values: Sequence[str], t: str, key: str) -> str:
    """What M is the MD5 of; contains the key, so it is never logged."""
    return ":".join([organization_id, *values, t, key])


def sign(organization_id: str, values: Sequence[str], key: str, unix_seconds: float) -> str:
    """The token for one call; `values` are the parameters after organizationId, in order,
    absent optional ones as ""."""
    t = token_time(unix_seconds)
    digest = hashlib.md5(
        signing_string(organization_id, values, t, key).encode("utf-8"), usedforsecurity=False
    ).hexdigest()
    return TOKEN_VERSION + t + digest


def verify(
    token: str,
    organization_id: str,
    values: Sequence[str],
    key: str,
    now: float,
    window_seconds: int = CLOCK_WINDOW_SECONDS,
) -> bool:
    """True when `token` is a version-01 signature of these values made within the window."""
    if len(token) != TOKEN_LENGTH or not token.startswith(TOKEN_VERSION):
        return False
    t = token[2:10]
    try:
        signed_at = int(t, 16)
    except ValueError:
        return False
    if t != t.lower() or abs(int(now) - signed_at) > window_seconds:
        return False
    expected = hashlib.md5(
        signing_string(organization_id, values, t, key).encode("utf-8"), usedforsecurity=False
    ).hexdigest()
    return hmac.compare_digest(expected, token[10:])


def product_ids_param(product_ids: Iterable[str]) -> str:
    """productIds as sent and signed: unique, in product order (numeric ids by value, "2"
    before "10"; any others after them, as text), comma-separated."""
    return ",".join(sorted_products(set(product_ids)))


def redact_token(token: str) -> str:
    """A token safe to show: its version and time, never the signature."""
    return token[:10] + "…" if len(token) > 10 else "…"


__all__ = [
    "CLOCK_WINDOW_SECONDS",
    "TOKEN_VERSION",
    "product_ids_param",
    "redact_token",
    "sign",
    "signing_string",
    "token_time",
    "verify",
]
