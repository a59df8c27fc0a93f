"""The one classification of Icareus outcomes: every answer or transport failure of a call is a
success (`Outcome`), a `TransientIcareusError` (retry it) or a `PermanentIcareusError` (reject).

| what happened                                              | result                          |
|------------------------------------------------------------|---------------------------------|
| JSON `status: ok`                                          | success                         |
| `USER_EXISTS` on add_user (its userId adopted)             | success                         |
| `USER_NOT_FOUND` on remove_user (and on get_user: no user) | success                         |
| `INVALID_TOKEN` (any HTTP status), HTTP 401, HTTP 403      | auth (transient): the bridge's  |
|                                                            | own key, org id or clock        |
| any other `status: error`, also under HTTP 200             | permanent, Icareus' code        |
| HTTP 4xx other than 401, 403, 429                          | permanent, `HTTP_<status>`/code |
| HTTP 429 (Retry-After kept)                                | transient `throttled`           |
| HTTP 5xx                                                   | transient `server_error`        |
| a body that is not a JSON object with a status             | transient `bad_body`            |
| connect error, timeout, reset (`from_transport_error`)     | transient, reason named after it |
| TLS: Icareus' certificate not verified, handshake refused  | tls (transient, an auth error): |
|                                                            | the bridge's own TLS settings   |

Messages and excerpts never carry the organization key, tokens or personal data."""

from __future__ import annotations

import email.utils
import json
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import httpx

from icareus_bridge.core.redaction import REDACTED
from icareus_bridge.core.redaction import redact as redact_with

TransientReason = Literal[
    "connect", "timeout", "reset", "throttled", "server_error", "bad_body", "auth", "tls"
]

# Icareus' refusals of the bridge's own credentials (organization id and signed token), and the
# HTTP statuses that say the same: the bridge is at fault, never the request it carried.
AUTH_CODES = frozenset({"INVALID_TOKEN"})
AUTH_HTTP_STATUSES = frozenset({401, 403})

EXCERPT_MAX_BYTES = 1024

# Operations on which an Icareus error code means "already as wanted".
SUCCESS_CODES: Mapping[str, frozenset[str]] = {
    "add_user": frozenset({"USER_EXISTS"}),
    "remove_user": frozenset({"USER_NOT_FOUND"}),
    "get_user": frozenset({"USER_NOT_FOUND"}),
}

# Field names whose values are secrets or personal data (compared case-insensitively).
SENSITIVE_FIELDS = frozenset(
    name.lower()
    for name in (
        "token",
        "key",
        "organizationKey",
        "secret",
        "password",
        "firstName",
        "lastName",
        "emailAddress",
        "email",
        "phoneNumber",
        "phone",
        "postalCode",
        "cityName",
        "city",
        "first_name",
        "last_name",
        "postal_code",
    )
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


class IcareusError(Exception):
    """A call that did not succeed. `attempts`, `first_failure_at` and `last_failure_at` (Unix
    seconds) are filled in by the client once retrying is over."""

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        http_status: int | None = None,
        response_excerpt: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.operation = operation
        self.http_status = http_status
        self.response_excerpt = response_excerpt
        self.attempts = 1
        now = time.time()
        self.first_failure_at = now
        self.last_failure_at = now


class TransientIcareusError(IcareusError):
    """Worth retrying: Icareus was unreachable, slow, throttling or failing internally."""

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        reason: TransientReason,
        retry_after: float | None = None,
        http_status: int | None = None,
        response_excerpt: str = "",
    ) -> None:
        super().__init__(
            message,
            operation=operation,
            http_status=http_status,
            response_excerpt=response_excerpt,
        )
        self.reason: TransientReason = reason
        self.retry_after = retry_after


class AuthIcareusError(TransientIcareusError):
    """Icareus refused the bridge's credentials (`code`: INVALID_TOKEN, or `HTTP_401` /
    `HTTP_403`): a wrong organization key or id, or a clock off by more than Icareus' window.
    The fault is this bridge's, not the request's: it is retried like any transient failure
    (reason `auth`) and never reported to CRM as a rejection."""

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        code: str,
        http_status: int | None = None,
        response_excerpt: str = "",
        reason: TransientReason = "auth",
    ) -> None:
        super().__init__(
            message,
            operation=operation,
            reason=reason,
            http_status=http_status,
            response_excerpt=response_excerpt,
        )
        self.code = code


# `TlsIcareusError.code`: Icareus' certificate failed verification (unknown CA, expired, wrong
# host name), or the TLS handshake failed otherwise (e.g. Icareus wants a client certificate).
TLS_CERTIFICATE_UNVERIFIED = "TLS_CERTIFICATE_UNVERIFIED"
TLS_HANDSHAKE_FAILED = "TLS_HANDSHAKE_FAILED"


class TlsIcareusError(AuthIcareusError):
    """The TLS link to Icareus could not be authenticated: the bridge did not accept Icareus'
    certificate (`code` TLS_CERTIFICATE_UNVERIFIED) or the handshake failed
    (TLS_HANDSHAKE_FAILED). Like a refused signature it is the bridge's fault (its
    `icareus.ca_file`, client certificate or `base_url`), never the request's: an
    `AuthIcareusError` with reason `tls`, retried, never a rejection. `detail` is the TLS
    library's own reason (e.g. "unable to get local issuer certificate")."""

    def __init__(self, message: str, *, operation: str, code: str, detail: str) -> None:
        super().__init__(message, operation=operation, code=code, reason="tls")
        self.detail = detail


class PermanentIcareusError(IcareusError):
    """Icareus refused the call; repeating it cannot help. `code` is Icareus' error code (or
    `HTTP_<status>` when the answer had none) and `icareus_message` its message, redacted."""

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        code: str,
        icareus_message: str,
        http_status: int | None = None,
        response_excerpt: str = "",
    ) -> None:
        super().__init__(
            message,
            operation=operation,
            http_status=http_status,
            response_excerpt=response_excerpt,
        )
        self.code = code
        self.icareus_message = icareus_message


@dataclass(frozen=True, slots=True)
class Outcome:
    """A successful answer: the JSON body, and the Icareus code when success came as an error
    code that means "already so" (USER_EXISTS, USER_NOT_FOUND), else None."""

    body: dict[str, Any]
    code: str | None = None


def redact(value: Any) -> Any:
    """A copy of a JSON value with secrets and personal data replaced, emails masked in text."""
    return redact_with(value, _is_sensitive_field, text=_masked_emails)


def _is_sensitive_field(name: str) -> bool:
    return name.lower() in SENSITIVE_FIELDS


def _masked_emails(text: str) -> str:
    return _EMAIL.sub(REDACTED, text)


def response_excerpt(body: bytes, parsed: Any = None) -> str:
    """At most 1 KiB of the answer, redacted; for DLQ headers and error reports."""
    if parsed is None:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
    if parsed is not None:
        text = json.dumps(redact(parsed), separators=(",", ":"), ensure_ascii=False)
    else:
        text = _masked_emails(body.decode("utf-8", errors="replace"))
    raw = text.encode("utf-8")
    if len(raw) <= EXCERPT_MAX_BYTES:
        return text
    return raw[: EXCERPT_MAX_BYTES - 3].decode("utf-8", errors="ignore") + "..."


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value


def classify(operation: str, http_status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    """Decide what one HTTP answer means; returns the success or raises the error."""
    try:
        parsed: Any = json.loads(body) if body else None
    except ValueError:
        parsed = None

    if http_status == 429:
        retry_after = parse_retry_after(_header(headers, "Retry-After"))
        raise TransientIcareusError(
            f"Icareus {operation}: throttled (HTTP 429, Retry-After {retry_after})",
            operation=operation,
            reason="throttled",
            retry_after=retry_after,
            http_status=http_status,
            response_excerpt=response_excerpt(body, parsed),
        )
    if http_status >= 500:
        raise TransientIcareusError(
            f"Icareus {operation}: server error (HTTP {http_status})",
            operation=operation,
            reason="server_error",
            retry_after=parse_retry_after(_header(headers, "Retry-After")),
            http_status=http_status,
            response_excerpt=response_excerpt(body, parsed),
        )
    status = parsed.get("status") if isinstance(parsed, dict) else None
    if not 200 <= http_status < 300:
        code = str(parsed.get("code") or f"HTTP_{http_status}") if status else f"HTTP_{http_status}"
        message = str(parsed.get("message") or "") if status else ""
        raise _refused(operation, code, message, http_status, body, parsed)
    if not isinstance(parsed, dict) or status not in ("ok", "error"):
        raise TransientIcareusError(
            f"Icareus {operation}: answer is not a JSON object with a status (HTTP {http_status})",
            operation=operation,
            reason="bad_body",
            http_status=http_status,
            response_excerpt=response_excerpt(body, parsed),
        )
    if status == "ok":
        return Outcome(parsed)
    code = str(parsed.get("code") or "UNKNOWN_ERROR")
    if code in SUCCESS_CODES.get(operation, frozenset()):
        return Outcome(parsed, code)
    raise _refused(operation, code, str(parsed.get("message") or ""), http_status, body, parsed)


def _refused(
    operation: str, code: str, message: str, http_status: int, body: bytes, parsed: Any
) -> IcareusError:
    """The refusal for Icareus' `code` and `message` (redacted here): of the bridge's own
    credentials, or of the request."""
    message = redact(message)
    if code in AUTH_CODES or http_status in AUTH_HTTP_STATUSES:
        return AuthIcareusError(
            f"Icareus refused the bridge's credentials on {operation}: {code} (HTTP "
            f"{http_status}); check icareus.key or key_file, icareus.organization_id and "
            "the clock",
            operation=operation,
            code=code,
            http_status=http_status,
            response_excerpt=response_excerpt(body, parsed),
        )
    return PermanentIcareusError(
        f"Icareus refused {operation}: {code}"
        + (f": {message}" if message else "")
        + f" (HTTP {http_status})",
        operation=operation,
        code=code,
        icareus_message=message,
        http_status=http_status,
        response_excerpt=response_excerpt(body, parsed),
    )


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error under a transport failure (aiohttp and httpx wrap it), if it is one that
    the bridge's TLS settings cause; a connection cut during the handshake is a reset."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # aiohttp's errors are SSLError subclasses themselves, holding the real one inside.
        nested = getattr(current, "certificate_error", None) or getattr(current, "os_error", None)
        if isinstance(nested, ssl.SSLError):
            current = nested
            continue
        if isinstance(current, ssl.SSLError) and not isinstance(
            current, (ssl.SSLEOFError, ssl.SSLZeroReturnError)
        ):
            return current
        current = current.__cause__ or current.__context__
    return None


def _tls_error(operation: str, failure: ssl.SSLError, base_url: str) -> TlsIcareusError:
    if isinstance(failure, ssl.SSLCertVerificationError):
        code = TLS_CERTIFICATE_UNVERIFIED
        detail = getattr(failure, "verify_message", None) or failure.reason or str(failure)
        what = f"certificate verification failed ({detail})"
        fix = "check icareus.ca_file (the CA that signed Icareus' certificate) and the host name"
    else:
        code = TLS_HANDSHAKE_FAILED
        detail = getattr(failure, "reason", None) or str(failure)
        what = f"TLS handshake failed ({detail})"
        fix = "check icareus.client_cert_file, icareus.client_key_file and icareus.ca_file"
    return TlsIcareusError(
        f"Icareus {operation} at {base_url}: {what}; {fix}",
        operation=operation,
        code=code,
        detail=str(detail)[:200],
    )


def from_transport_error(
    operation: str, exc: BaseException, base_url: str = ""
) -> TransientIcareusError:
    """Map a transport failure (httpx, aiohttp, or the OS underneath) to its transient reason;
    a TLS failure of the bridge's settings to a `TlsIcareusError` naming `base_url`."""
    failure = _tls_failure(exc)
    if failure is not None:
        return _tls_error(operation, failure, base_url or "icareus.base_url")
    reason: TransientReason
    if isinstance(exc, (httpx.ConnectTimeout, aiohttp.ConnectionTimeoutError)):
        reason = "connect"
    elif isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        reason = "timeout"
    elif isinstance(
        exc, (httpx.ConnectError, aiohttp.ClientConnectorError, ConnectionRefusedError)
    ):
        reason = "connect"
    else:
        reason = "reset"
    detail = type(exc).__name__ + (f": {str(exc)[:200]}" if str(exc) else "")
    return TransientIcareusError(
        f"Icareus {operation}: {reason} ({detail})", operation=operation, reason=reason
    )


__all__ = [
    "AUTH_CODES",
    "AUTH_HTTP_STATUSES",
    "EXCERPT_MAX_BYTES",
    "TLS_CERTIFICATE_UNVERIFIED",
    "TLS_HANDSHAKE_FAILED",
    "AuthIcareusError",
    "IcareusError",
    "Outcome",
    "PermanentIcareusError",
    "TlsIcareusError",
    "TransientIcareusError",
    "TransientReason",
    "classify",
    "from_transport_error",
    "parse_retry_after",
    "redact",
    "response_excerpt",
]
