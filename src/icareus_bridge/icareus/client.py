"""The Icareus Suite adapter: one `IcareusClient` per process sends the six provisioning calls
(plus getUser) signed, with `Idempotency-Key`, under the one retry policy, and reports each
call as a `CallResult` or one of the `errors` classes."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

import aiohttp
import httpx

from icareus_bridge.config import DEFAULT_OPERATION_PARAMS, IcareusSettings
from icareus_bridge.core.model import ProvisioningRequest, RequestType, SubscriberProfile
from icareus_bridge.core.redaction import REDACTED
from icareus_bridge.icareus.errors import (
    AuthIcareusError,
    IcareusError,
    Outcome,
    TransientIcareusError,
    classify,
    from_transport_error,
    response_excerpt,
)
from icareus_bridge.icareus.retry import OnRetry, build_retrying
from icareus_bridge.icareus.signing import product_ids_param, redact_token, sign

ORGANIZATION_PARAM = "organizationId"
TOKEN_PARAM = "token"
IDEMPOTENCY_HEADER = "Idempotency-Key"

OPERATION_BY_REQUEST_TYPE: Mapping[RequestType, str] = {
    RequestType.ADD_USER: "add_user",
    RequestType.REMOVE_USER: "remove_user",
    RequestType.ACTIVATE_PRODUCTS: "activate_products",
    RequestType.CANCEL_PRODUCTS: "cancel_products",
    RequestType.ADD_DEVICE: "add_device",
    RequestType.REMOVE_DEVICE: "remove_device",
}

# Positions, among an operation's values, of personal data (add_user: first and last name,
# email, phone, postal code, city). `CallResult.request_payload` shows them redacted whatever
# the configured parameter names are, so results never carry them.
PERSONAL_VALUES: Mapping[str, frozenset[int]] = {"add_user": frozenset({1, 2, 3, 4, 6, 7})}


@dataclass(frozen=True, slots=True)
class IcareusUser:
    """What Icareus holds for one user (getUser)."""

    user_id: str
    external_id: str
    products: frozenset[str]
    devices: Mapping[str, str]  # device id -> device type


@dataclass(frozen=True, slots=True)
class CallResult:
    """One successful call. `request_payload` is the form sent with the token cut to its time
    part (the key is never in it) and personal values redacted; `code` is USER_EXISTS /
    USER_NOT_FOUND when Icareus said the wanted state already held; `latency_seconds` spans all
    attempts."""

    operation: str
    request_payload: dict[str, str]
    response_payload: dict[str, Any]
    http_status: int
    attempts: int
    latency_seconds: float
    code: str | None = None
    user_id: str | None = None
    user: IcareusUser | None = None
    first_failure_at: float | None = None
    last_failure_at: float | None = None


@dataclass(frozen=True, slots=True)
class _Operation:
    name: str
    url: str
    params: tuple[str, ...]


_Attempted = tuple["_Answer", "Outcome", str | None, IcareusUser | None]


@dataclass(slots=True)
class _Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    fields: list[tuple[str, str]] = field(default_factory=list)


class IcareusClient:
    """Async Icareus Suite client; one per process (it owns the keep-alive connection pool).

    `on_retry(reason)` is called before each retry (for metrics); `on_auth_failure(error)` on
    every attempt Icareus refuses for the bridge's credentials, as it happens (readiness and
    metrics should not wait for the retry budget). `transport` replaces the network, for unit
    tests only; `clock` gives Unix seconds for tokens."""

    def __init__(
        self,
        settings: IcareusSettings,
        *,
        on_retry: OnRetry | None = None,
        on_auth_failure: Callable[[AuthIcareusError], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._key = settings.secret_key()
        self._org = settings.organization_id
        self._on_retry = on_retry
        self._on_auth_failure = on_auth_failure
        self._clock = clock
        base = settings.base_url.rstrip("/")
        self._base_url = base
        self._ops: dict[str, _Operation] = {}
        for name, op in settings.operations.items():
            params = tuple(op.params) or DEFAULT_OPERATION_PARAMS.get(name, ())
            url = f"{base}/{quote(op.module)}?action={quote(op.action)}"
            self._ops[name] = _Operation(name, url, params)
        self._http: _HttpBackend
        if transport is not None or settings.http_backend == "httpx":
            self._http = _HttpxBackend(settings, transport)
        else:
            self._http = _AiohttpBackend(settings)

    async def __aenter__(self) -> IcareusClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- the operations --------------------------------------------------------------------

    async def add_user(
        self,
        external_id: str,
        profile: SubscriberProfile | None = None,
        *,
        idempotency_key: str,
    ) -> CallResult:
        """Register an account; `result.user_id` is Icareus' id (adopted on USER_EXISTS)."""
        p = profile
        values = [
            external_id,
            p.first_name if p else "",
            p.last_name if p else "",
            (p.email or "") if p else "",
            (p.phone or "") if p else "",
            (p.country_code or "") if p else "",
            (p.postal_code or "") if p else "",
            (p.city or "") if p else "",
        ]
        return await self._call("add_user", values, idempotency_key)

    async def remove_user(self, user_id: str, *, idempotency_key: str) -> CallResult:
        return await self._call("remove_user", [user_id], idempotency_key)

    async def activate_products(
        self, user_id: str, product_ids: Sequence[str], *, idempotency_key: str
    ) -> CallResult:
        values = [user_id, product_ids_param(product_ids)]
        return await self._call("activate_products", values, idempotency_key)

    async def cancel_products(
        self, user_id: str, product_ids: Sequence[str], *, idempotency_key: str
    ) -> CallResult:
        values = [user_id, product_ids_param(product_ids)]
        return await self._call("cancel_products", values, idempotency_key)

    async def add_device(
        self, user_id: str, device_id: str, device_type: str, *, idempotency_key: str
    ) -> CallResult:
        return await self._call("add_device", [user_id, device_id, device_type], idempotency_key)

    async def remove_device(
        self, user_id: str, device_id: str, *, idempotency_key: str
    ) -> CallResult:
        return await self._call("remove_device", [user_id, device_id], idempotency_key)

    async def get_user(
        self,
        user_id: str | None = None,
        external_id: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> CallResult:
        """Read one user by Icareus id or by account key; `result.user` is None if unknown."""
        if (user_id is None) == (external_id is None):
            raise ValueError("get_user takes exactly one of user_id and external_id")
        values = [user_id or "", external_id or ""]
        return await self._call("get_user", values, idempotency_key)

    async def send(self, request: ProvisioningRequest, user_id: str | None = None) -> CallResult:
        """Send one planned request, its request id as the idempotency key. `user_id` overrides
        the request's (for a request planned together with its account's ADD_USER)."""
        key = request.request_id
        if request.type is RequestType.ADD_USER:
            return await self.add_user(request.account_key, request.profile, idempotency_key=key)
        uid = user_id or request.user_id
        if not uid:
            raise ValueError(f"request {request.request_id} ({request.type}) has no user id")
        if request.type is RequestType.REMOVE_USER:
            return await self.remove_user(uid, idempotency_key=key)
        if request.type is RequestType.ACTIVATE_PRODUCTS:
            return await self.activate_products(uid, request.product_ids, idempotency_key=key)
        if request.type is RequestType.CANCEL_PRODUCTS:
            return await self.cancel_products(uid, request.product_ids, idempotency_key=key)
        device_id = request.device_id or ""
        if request.type is RequestType.ADD_DEVICE:
            return await self.add_device(
                uid, device_id, request.device_type or "", idempotency_key=key
            )
        return await self.remove_device(uid, device_id, idempotency_key=key)

    # --- one call: sign, send, classify, retry ---------------------------------------------

    async def _call(
        self, operation: str, values: list[str], idempotency_key: str | None
    ) -> CallResult:
        op = self._ops[operation]
        started = time.perf_counter()
        failures: list[float] = []  # Unix time of each failed attempt
        try:
            # The first attempt runs outside tenacity: nearly every call succeeds at once, and
            # setting up the retry machinery costs a visible share of the client's CPU.
            try:
                answer, outcome, user_id, user = await self._once(
                    op, values, idempotency_key, failures
                )
            except TransientIcareusError as first:
                elapsed = time.perf_counter() - started
                answer, outcome, user_id, user = await self._retry(
                    op, values, idempotency_key, first, failures, elapsed
                )
        except IcareusError as exc:
            exc.attempts = len(failures)
            exc.first_failure_at = failures[0]
            exc.last_failure_at = failures[-1]
            raise
        return CallResult(
            operation=operation,
            request_payload=_shown_form(op.name, answer.fields),
            response_payload=outcome.body,
            http_status=answer.status,
            attempts=len(failures) + 1,
            latency_seconds=time.perf_counter() - started,
            code=outcome.code,
            user_id=user_id,
            user=user,
            first_failure_at=failures[0] if failures else None,
            last_failure_at=failures[-1] if failures else None,
        )

    async def _retry(
        self,
        op: _Operation,
        values: list[str],
        idempotency_key: str | None,
        first: TransientIcareusError,
        failures: list[float],
        elapsed: float,
    ) -> _Attempted:
        pending: TransientIcareusError | None = first
        retrying = build_retrying(self._settings.retry, self._on_retry, elapsed=elapsed)
        async for attempt in retrying:
            with attempt:
                if pending is not None:
                    # Attempt 1 already ran; hand its failure to tenacity to decide the next.
                    failed, pending = pending, None
                    raise failed
                return await self._once(op, values, idempotency_key, failures)
        raise AssertionError("tenacity ended without an outcome")  # pragma: no cover

    async def _once(
        self,
        op: _Operation,
        values: list[str],
        idempotency_key: str | None,
        failures: list[float],
    ) -> _Attempted:
        try:
            answer = await self._attempt(op, values, idempotency_key)
            outcome = classify(op.name, answer.status, answer.headers, answer.body)
            user_id, user = self._reference(op, answer, outcome)
            return answer, outcome, user_id, user
        except IcareusError as exc:
            failures.append(time.time())
            if isinstance(exc, AuthIcareusError) and self._on_auth_failure is not None:
                self._on_auth_failure(exc)
            raise

    async def _attempt(
        self, op: _Operation, values: list[str], idempotency_key: str | None
    ) -> _Answer:
        fields = [(ORGANIZATION_PARAM, self._org), *zip(op.params, values, strict=True)]
        token = sign(self._org, values, self._key, self._clock())
        body = _form_body([*fields, (TOKEN_PARAM, token)])
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if idempotency_key:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        try:
            status, answer_headers, answer_body = await self._http.post(op.url, body, headers)
        except (httpx.TransportError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise from_transport_error(op.name, exc, self._base_url) from exc
        fields.append((TOKEN_PARAM, redact_token(token)))
        return _Answer(status, answer_headers, answer_body, fields)

    def _reference(
        self, op: _Operation, answer: _Answer, outcome: Outcome
    ) -> tuple[str | None, IcareusUser | None]:
        """The user id (add_user, get_user) and user (get_user) the answer carries."""
        if op.name == "add_user":
            raw_id = outcome.body.get("userId")
            if raw_id in (None, ""):
                raise TransientIcareusError(
                    f"Icareus {op.name}: answer has no userId",
                    operation=op.name,
                    reason="bad_body",
                    http_status=answer.status,
                    response_excerpt=response_excerpt(answer.body),
                )
            return str(raw_id), None
        if op.name == "get_user" and outcome.code is None:
            user = _parse_user(op.name, answer, outcome.body)
            return user.user_id, user
        return None, None


def _shown_form(operation: str, fields: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The sent form as results may show it: `fields` is organizationId, the operation's values
    in order, then the token; values at `PERSONAL_VALUES` positions are redacted."""
    personal = PERSONAL_VALUES.get(operation)
    if not personal:
        return dict(fields)
    return {
        name: REDACTED if i - 1 in personal and value else value
        for i, (name, value) in enumerate(fields)
    }


_PLAIN = re.compile(r"[A-Za-z0-9_.\-]*")


def _form_body(fields: Sequence[tuple[str, str]]) -> bytes:
    """The form as urlencode would write it; values that need no escaping skip quote_plus
    (ids, tokens and names mostly), which is most of urlencode's cost per call."""
    return "&".join(f"{_quoted(name)}={_quoted(value)}" for name, value in fields).encode("ascii")


def _quoted(text: str) -> str:
    return text if _PLAIN.fullmatch(text) else quote_plus(text)


class _HttpBackend(Protocol):
    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]: ...

    async def aclose(self) -> None: ...


class _HttpxBackend:
    def __init__(
        self, settings: IcareusSettings, transport: httpx.AsyncBaseTransport | None
    ) -> None:
        self._total_timeout = settings.total_timeout_seconds
        self._client = httpx.AsyncClient(
            verify=settings.tls_context(),
            timeout=httpx.Timeout(
                connect=settings.connect_timeout_seconds,
                read=settings.read_timeout_seconds,
                write=settings.read_timeout_seconds,
                pool=settings.total_timeout_seconds,
            ),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            transport=transport,
        )

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        async with asyncio.timeout(self._total_timeout):
            response = await self._client.post(url, content=body, headers=headers)
        return response.status_code, response.headers, response.content

    async def aclose(self) -> None:
        await self._client.aclose()


class _AiohttpBackend:
    # The session is opened on first use: aiohttp binds it to the running event loop.
    def __init__(self, settings: IcareusSettings) -> None:
        self._settings = settings
        self._tls = settings.tls_context()
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        s = self._settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=s.max_connections, limit_per_host=0, ssl=self._tls
            ),
            timeout=aiohttp.ClientTimeout(
                total=s.total_timeout_seconds,
                sock_connect=s.connect_timeout_seconds,
                sock_read=s.read_timeout_seconds,
            ),
        )
        return self._session

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        session = self._session or self._open()
        async with session.post(url, data=body, headers=headers) as response:
            return response.status, response.headers, await response.read()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _parse_user(operation: str, answer: _Answer, body: dict[str, Any]) -> IcareusUser:
    raw = body.get("user")
    try:
        assert isinstance(raw, dict)
        devices = {str(d["deviceId"]): str(d.get("deviceType") or "") for d in raw["devices"]}
        return IcareusUser(
            user_id=str(raw["userId"]),
            external_id=str(raw.get("externalId") or ""),
            products=frozenset(str(p) for p in raw["products"]),
            devices=devices,
        )
    except (AssertionError, KeyError, TypeError) as exc:
        raise TransientIcareusError(
            f"Icareus {operation}: answer has no readable user",
            operation=operation,
            reason="bad_body",
            http_status=answer.status,
            response_excerpt=response_excerpt(answer.body),
        ) from exc


__all__ = ["OPERATION_BY_REQUEST_TYPE", "CallResult", "IcareusClient", "IcareusUser"]
