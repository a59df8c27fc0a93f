"""A faithful Icareus Suite stand-in for tests, demos and load tests: the same signed form calls,
the same `status: ok|error` answers and error codes, users with their products and devices,
`Idempotency-Key` replays, fault injection, and an admin API under `/_sim` (ARCHITECTURE.md).

`create_app` builds the ASGI app; `main` serves it (the `icareus-bridge simulator` command);
`start_simulator_thread` / `start_simulator_process` run it on a free port for tests and
benchmarks; `SimulatorAdmin` / `AsyncSimulatorAdmin` talk to `/_sim/*`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple
from urllib.parse import unquote_plus, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from icareus_bridge.config import (
    DEFAULT_OPERATION_PARAMS,
    ConfigError,
    IcareusOperation,
    Settings,
    load_settings,
)
from icareus_bridge.core.model import product_order, sorted_products
from icareus_bridge.icareus.signing import CLOCK_WINDOW_SECONDS, redact_token, verify

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

FaultKind = Literal[
    "http_500", "http_503", "http_429", "status_error", "drop", "drop_after", "slow"
]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "http_500",
    "http_503",
    "http_429",
    "status_error",
    "drop",
    "drop_after",
    "slow",
)
_TRANSPORT_KEY = "icareus_sim.transport"
READY_PREFIX = "icareus simulator listening on "


# --- configuration ---------------------------------------------------------------------------


class FaultRates(BaseModel):
    """Share (0..1) of calls answered with each fault. `drop` closes the connection before
    anything is applied, `drop_after` after applying it; `slow` applies and answers after
    `slow_ms`; `status_error` is `status: error` under HTTP 200."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    http_500: float = Field(default=0.0, ge=0, le=1)
    http_503: float = Field(default=0.0, ge=0, le=1)
    http_429: float = Field(default=0.0, ge=0, le=1)
    status_error: float = Field(default=0.0, ge=0, le=1)
    drop: float = Field(default=0.0, ge=0, le=1)
    drop_after: float = Field(default=0.0, ge=0, le=1)
    slow: float = Field(default=0.0, ge=0, le=1)


class ScriptedFault(BaseModel):
    """The next `times` calls of `action` ("*" = any) get `fault`, in order, then it is used up."""

    model_config = ConfigDict(extra="forbid")
    fault: FaultKind
    action: str = "*"
    times: int = Field(default=1, ge=1)


class Faults(BaseModel):
    """Fault injection, the body of `POST /_sim/faults` (keys given replace the current ones).
    `rates` maps an action name (or "*" for all) to its `FaultRates`."""

    model_config = ConfigDict(extra="forbid")
    latency_ms: float = Field(default=0.0, ge=0)
    jitter_ms: float = Field(default=0.0, ge=0)
    outage: bool = False
    outage_mode: Literal["http_503", "drop"] = "http_503"
    retry_after_seconds: int = Field(default=1, ge=0)
    slow_ms: float = Field(default=30_000.0, ge=0)
    error_code: str = "INTERNAL_ERROR"
    rates: dict[str, FaultRates] = Field(default_factory=dict)
    script: list[ScriptedFault] = Field(default_factory=list)


class SimulatorConfig(BaseModel):
    """What one simulator instance is: who it accepts and which products it sells."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    organization_id: str
    key: str = Field(repr=False)
    products: frozenset[str] = frozenset()
    operations: dict[str, IcareusOperation] = Field(default_factory=dict)
    api_prefix: str = "/api"
    faults: Faults = Field(default_factory=Faults)
    clock_window_seconds: int = CLOCK_WINDOW_SECONDS
    call_log_size: int = Field(default=10_000, ge=0)
    idempotency_cache_size: int = Field(default=1_000_000, ge=1)
    seed: int | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        organization_id: str | None = None,
        key: str | None = None,
        extra_products: Iterable[str] = (),
        faults: Faults | None = None,
    ) -> SimulatorConfig:
        """Organization, key, operations and API path from the `icareus` section; catalogue
        from `provider.service_mapping` plus `extra_products`."""
        icareus = settings.icareus
        prefix = urlsplit(icareus.base_url).path.rstrip("/")
        products = set(settings.provider.service_mapping.values()) | {
            p.strip() for p in extra_products if p.strip()
        }
        return cls(
            organization_id=organization_id or icareus.organization_id,
            key=key if key is not None else icareus.secret_key(),
            products=frozenset(products),
            operations=dict(icareus.operations),
            api_prefix=prefix,
            faults=faults or Faults(),
        )


# --- the simulated Icareus -------------------------------------------------------------------


@dataclass(slots=True)
class SimUser:
    user_id: str
    external_id: str
    products: set[str] = field(default_factory=set)
    devices: dict[str, str] = field(default_factory=dict)  # device id -> device type

    def view(self) -> dict[str, Any]:
        return {
            "userId": self.user_id,
            "externalId": self.external_id,
            "products": list(sorted_products(self.products)),
            "devices": [{"deviceId": d, "deviceType": t} for d, t in sorted(self.devices.items())],
        }


@dataclass(frozen=True, slots=True)
class _Spec:
    operation: str
    module: str
    action: str
    params: tuple[str, ...]


class Answer(NamedTuple):
    http_status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    status: str | None  # Icareus' "ok" / "error", None when the body is not an Icareus answer
    code: str | None


_JSON = (b"content-type", b"application/json")


def _json(http_status: int, payload: Mapping[str, Any], *extra: tuple[bytes, bytes]) -> Answer:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Answer(http_status, body, (_JSON, *extra), payload.get("status"), payload.get("code"))


def _error(code: str, message: str, **extra: Any) -> Answer:
    return _json(200, {"status": "error", "code": code, "message": message, **extra})


_OK = _json(200, {"status": "ok"})


class IcareusSimulator:
    """State, statistics, faults and the operations; the ASGI layer around it is thin."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        ops = config.operations or {
            name: IcareusOperation(module=m, action=a)
            for name, (m, a) in {
                "add_user": ("user", "addUser"),
                "remove_user": ("user", "removeUser"),
                "activate_products": ("packages", "activateProducts"),
                "cancel_products": ("packages", "cancelProducts"),
                "add_device": ("devices", "addDevice"),
                "remove_device": ("devices", "removeDevice"),
                "get_user": ("user", "getUser"),
            }.items()
        }
        self._specs: dict[tuple[str, str], _Spec] = {}
        for name, op in ops.items():
            params = tuple(op.params) or DEFAULT_OPERATION_PARAMS.get(name, ())
            self._specs[(op.module, op.action)] = _Spec(name, op.module, op.action, params)
        self._handlers: dict[str, Callable[[_Spec, dict[str, str]], tuple[Answer, bool]]] = {
            "add_user": self._add_user,
            "remove_user": self._remove_user,
            "activate_products": self._activate_products,
            "cancel_products": self._cancel_products,
            "add_device": self._add_device,
            "remove_device": self._remove_device,
            "get_user": self._get_user,
        }
        self._random = random.Random(config.seed)
        self.reset()

    # -- admin ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget users, statistics, the call log and idempotency keys; faults as at start."""
        self.users: dict[str, SimUser] = {}
        self.by_external: dict[str, SimUser] = {}
        self.device_owner: dict[str, str] = {}
        self._next_user = 100_001
        self.stats: dict[str, Any] = {
            "calls": 0,
            "effects": 0,
            "duplicates_suppressed": 0,
            "errors_injected": 0,
            "auth_failures": 0,
            "refused": 0,
            "by_action": {},
        }
        self.calls: deque[dict[str, Any]] = deque(maxlen=self.config.call_log_size or None)
        self._seq = 0
        self._answers: OrderedDict[str, Answer] = OrderedDict()
        self.set_faults(self.config.faults)

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._script = [f.model_copy() for f in faults.script]
        self._faulty = bool(faults.outage or faults.rates or self._script)

    def update_faults(self, changes: Mapping[str, Any]) -> Faults:
        merged = {**self.faults.model_dump(exclude={"script"}), **changes}
        if "script" not in changes:
            merged["script"] = [s.model_dump() for s in self._script]
        self.set_faults(Faults.model_validate(merged))
        return self.faults

    def state_view(self) -> dict[str, Any]:
        # User ids (numbers the simulator counts up) in the order of product ids: by value.
        users = sorted(self.users.values(), key=lambda u: product_order(u.user_id))
        return {"users": [u.view() for u in users]}

    def faults_view(self) -> dict[str, Any]:
        view = self.faults.model_dump()
        view["script"] = [s.model_dump() for s in self._script]
        return view

    # -- one call ---------------------------------------------------------------------------

    def spec(self, module: str, action: str) -> _Spec | None:
        return self._specs.get((module, action))

    def pick_fault(self, action: str) -> FaultKind | None:
        """The fault this call gets, if any: scripted ones first, then the rates."""
        if not self._faulty:
            return None
        for scripted in self._script:
            if scripted.action in ("*", action):
                scripted.times -= 1
                if scripted.times <= 0:
                    self._script.remove(scripted)
                self._faulty = bool(self.faults.outage or self.faults.rates or self._script)
                return scripted.fault
        rates = self.faults.rates.get(action) or self.faults.rates.get("*")
        if rates is None:
            return None
        draw = self._random.random()
        for kind in FAULT_KINDS:
            share: float = getattr(rates, kind)
            if draw < share:
                return kind
            draw -= share
        return None

    def latency(self) -> float:
        f = self.faults
        if not f.latency_ms and not f.jitter_ms:
            return 0.0
        return (f.latency_ms + self._random.uniform(0.0, f.jitter_ms)) / 1000.0

    def authorized(self, spec: _Spec, form: Mapping[str, str], now: float) -> bool:
        if form.get("organizationId") != self.config.organization_id:
            return False
        values = [form.get(p, "") for p in spec.params]
        return verify(
            form.get("token", ""),
            self.config.organization_id,
            values,
            self.config.key,
            now,
            self.config.clock_window_seconds,
        )

    def apply(self, spec: _Spec, form: dict[str, str]) -> Answer:
        answer, changed = self._handlers[spec.operation](spec, form)
        if changed:
            self.stats["effects"] += 1
        elif answer.status == "error":
            self.stats["refused"] += 1
        return answer

    def remember(self, key: str, answer: Answer) -> None:
        self._answers[key] = answer
        if len(self._answers) > self.config.idempotency_cache_size:
            self._answers.popitem(last=False)

    def log(self, entry: dict[str, Any]) -> None:
        if self.calls.maxlen == 0:
            return
        self._seq += 1
        entry["seq"] = self._seq
        self.calls.append(entry)

    # -- the operations: (answer, whether state changed) -------------------------------------

    def _param(self, spec: _Spec, form: Mapping[str, str], index: int) -> str:
        return form.get(spec.params[index], "") if index < len(spec.params) else ""

    def _user(self, spec: _Spec, form: Mapping[str, str]) -> SimUser | None:
        return self.users.get(self._param(spec, form, 0))

    def _add_user(self, spec: _Spec, form: dict[str, str]) -> tuple[Answer, bool]:
        external_id = self._param(spec, form, 0)
        if not external_id:
            return _error("INVALID_PARAMETER", "externalId is required"), False
        existing = self.by_external.get(external_id)
        if existing is not None:
            return (
                _error(
                    "USER_EXISTS", "a user with this externalId exists", userId=existing.user_id
                ),
                False,
            )
        user = SimUser(str(self._next_user), external_id)
        self._next_user += 1
        self.users[user.user_id] = user
        self.by_external[external_id] = user
        return _json(200, {"status": "ok", "userId": user.user_id}), True

    def _remove_user(self, spec: _Spec, form: dict[str, str]) -> tuple[Answer, bool]:
        user = self._user(spec, form)
        if user is None:
            return _error("USER_NOT_FOUND", "no such user"), False
        del self.users[user.user_id]
        del self.by_external[user.external_id]
        for device_id in user.devices:
            self.device_owner.pop(device_id, None)
        return _OK, True

    def _products(self, spec: _Spec, form: Mapping[str, str]) -> tuple[list[str], Answer | None]:
        raw = self._param(spec, form, 1)
        ids = [p for p in raw.split(",") if p]
        if not ids:
            return ids, _error("INVALID_PARAMETER", "productIds is required")
        unknown = [p for p in ids if p not in self.config.products]
        if unknown:
            return ids, _error("PRODUCT_NOT_FOUND", f"unknown product ids: {','.join(unknown)}")
        return ids, None

    def _user_products(
        self, spec: _Spec, form: Mapping[str, str]
    ) -> tuple[SimUser, list[str]] | Answer:
        """The user and product ids of an activate/cancel call, or the refusal to answer."""
        user = self._user(spec, form)
        if user is None:
            return _error("USER_NOT_FOUND", "no such user")
        ids, refused = self._products(spec, form)
        return refused if refused is not None else (user, ids)

    def _activate_products(self, spec: _Spec, form: dict[str, str]) -> tuple[Answer, bool]:
        target = self._user_products(spec, form)
        if isinstance(target, Answer):
            return target, False
        user, ids = target
        changed = not user.products.issuperset(ids)
        user.products.update(ids)
        return _OK, changed

    def _cancel_products(self, spec: _Spec, form: dict[str, str]) -> tuple[Answer, bool]:
        target = self._user_products(spec, form)
        if isinstance(target, Answer):
            return target, False
        user, ids = target
        changed = not user.products.isdisjoint(ids)
        user.products.difference_update(ids)
        return _OK, changed

    def _add_device(self, spec: _Spec, form: dict[str, str]) -> tuple[Answer, bool]:
        user = self._user(spec, form)
        if user is None:
            return _error("USER_NOT_FOUND", "no such user"), False
        device_id = self._param(spec, form, 1)
        device_type = self._param(spec, form, 2)
        if not device_id:
            return _error("INVALID_PARAMETER", "deviceId is required"), False
        owner = self.device_owner.get(device_id)
        if owner is not None and owner != user.user_id:
            return _error("DEVICE_IN_USE", "the device is registered to another user"), False
        changed = user.devices.get(device_id) != device_type
        user.devices[device_id] = device_type
        self.device_owner[device_id] = user.user_id
        return _OK, changed

    def _remove_device(self, spec: _Spec, form: dict[str, str]) -> tuple[Answer, bool]:
        user = self._user(spec, form)
        if user is None:
            return _error("USER_NOT_FOUND", "no such user"), False
        device_id = self._param(spec, form, 1)
        if device_id not in user.devices:
            return _OK, False  # already not there: repeating a removal is harmless
        del user.devices[device_id]
        self.device_owner.pop(device_id, None)
        return _OK, True

    def _get_user(self, spec: _Spec, form: dict[str, str]) -> tuple[Answer, bool]:
        user_id = self._param(spec, form, 0)
        external_id = self._param(spec, form, 1)
        user = self.users.get(user_id) if user_id else self.by_external.get(external_id)
        if user is None:
            return _error("USER_NOT_FOUND", "no such user"), False
        return _json(200, {"status": "ok", "user": user.view()}), False


# --- the HTTP face ---------------------------------------------------------------------------


def _parse_form(text: str) -> dict[str, str]:
    """application/x-www-form-urlencoded, like parse_qsl(keep_blank_values=True) but decoding
    only the parts that need it (the hot path of every call)."""
    form: dict[str, str] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        if "%" in value or "+" in value:
            value = unquote_plus(value)
        form[name] = value
    return form


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, answer: Answer) -> None:
    status, body, headers = answer.http_status, answer.body, answer.headers
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _drop(scope: Scope, send: Send) -> None:
    """Close the connection without an answer."""
    transport = scope.get(_TRANSPORT_KEY)
    if transport is not None:
        transport.abort()
        for _ in range(3):  # let the server notice the loss before the handler returns
            await asyncio.sleep(0)
        return
    # Not under uvicorn: start an answer that never completes, then fail the connection.
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]}
    )
    raise ConnectionAbortedError("injected connection drop")


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class IcareusApi:
    """The Icareus endpoints: `POST <prefix>/<module>?action=<action>`, form fields."""

    def __init__(self, sim: IcareusSimulator) -> None:
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sim = self.sim
        stats = sim.stats
        stats["calls"] += 1
        module = scope["path_params"]["module"]
        action = _parse_form(scope.get("query_string", b"").decode("latin-1")).get("action", "")
        by_action = stats["by_action"]
        by_action[action] = by_action.get(action, 0) + 1
        body = await _read_body(receive)
        form = _parse_form(body.decode("utf-8", errors="replace"))
        key = ""
        for name, value in scope["headers"]:
            if name == b"idempotency-key":
                key = value.decode("latin-1")
                break
        entry: dict[str, Any] = {
            "at": time.time(),
            "module": module,
            "action": action,
            "idempotencyKey": key or None,
            "params": {k: (redact_token(v) if k == "token" else v) for k, v in form.items()},
        }

        delay = sim.latency()
        if delay:
            await asyncio.sleep(delay)

        fault: FaultKind | None
        if sim.faults.outage:
            fault = "drop" if sim.faults.outage_mode == "drop" else "http_503"
        else:
            fault = sim.pick_fault(action)
        if fault in ("http_500", "http_503", "http_429", "status_error", "drop"):
            stats["errors_injected"] += 1
            entry["fault"] = fault
            sim.log(entry)
            if fault == "drop":
                entry["httpStatus"] = None
                await _drop(scope, send)
                return
            answer = self._injected(fault)
            entry["httpStatus"] = answer.http_status
            await _send(send, answer)
            return

        answer = self._process(module, action, form, key, entry)
        entry["httpStatus"] = answer.http_status
        entry["status"] = answer.status
        entry["code"] = answer.code
        if fault is not None:
            stats["errors_injected"] += 1
            entry["fault"] = fault
        sim.log(entry)
        if fault == "drop_after":
            await _drop(scope, send)
            return
        if fault == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_until_disconnect(receive), sim.faults.slow_ms / 1000.0)
        await _send(send, answer)

    def _injected(self, fault: FaultKind) -> Answer:
        if fault == "http_429":
            retry_after = str(self.sim.faults.retry_after_seconds).encode()
            return _json(
                429,
                {"status": "error", "code": "TOO_MANY_REQUESTS", "message": "slow down"},
                (b"retry-after", retry_after),
            )
        if fault == "status_error":
            return _error(self.sim.faults.error_code, "injected error")
        return Answer(
            500 if fault == "http_500" else 503,
            b"<html><body>Service unavailable</body></html>",
            ((b"content-type", b"text/html"),),
            None,
            None,
        )

    def _process(
        self, module: str, action: str, form: dict[str, str], key: str, entry: dict[str, Any]
    ) -> Answer:
        sim = self.sim
        spec = sim.spec(module, action)
        if spec is None:
            return _json(
                404,
                {"status": "error", "code": "UNKNOWN_ACTION", "message": f"{module}/{action}"},
            )
        if not sim.authorized(spec, form, time.time()):
            sim.stats["auth_failures"] += 1
            return _error("INVALID_TOKEN", "invalid organization or token")
        # No await from here to remember(): concurrent repeats of one key see one effect.
        if key:
            first = sim._answers.get(key)
            if first is not None:
                sim.stats["duplicates_suppressed"] += 1
                entry["duplicate"] = True
                return first
        answer = sim.apply(spec, form)
        if key:
            sim.remember(key, answer)
        return answer


class SimulatorApp(Starlette):
    """Starlette, plus the one thing a fault needs from the server: the connection, so a
    `drop` can really close it (uvicorn's `send` is a method of the connection's cycle)."""

    simulator: IcareusSimulator
    api: IcareusApi
    api_prefix: str

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is not None:
                scope[_TRANSPORT_KEY] = transport
            # Icareus calls skip Starlette's middleware and router, which cost a visible share
            # of the CPU per call at load-test rates; the route stays registered as well.
            path: str = scope["path"]
            if scope["method"] == "POST" and path.startswith(self.api_prefix):
                module = path[len(self.api_prefix) :]
                if module and "/" not in module:
                    scope["path_params"] = {"module": module}
                    await self.api(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def create_app(config: SimulatorConfig) -> SimulatorApp:
    """The simulator as an ASGI app: Icareus under `config.api_prefix`, admin under `/_sim`."""
    sim = IcareusSimulator(config)
    api = IcareusApi(sim)

    async def state(request: Request) -> Response:
        return JSONResponse(sim.state_view())

    async def stats(request: Request) -> Response:
        return JSONResponse(sim.stats)

    async def calls(request: Request) -> Response:
        action = request.query_params.get("action")
        entries = [c for c in sim.calls if action is None or c["action"] == action]
        limit = request.query_params.get("limit")
        if limit:
            entries = entries[-int(limit) :]
        return JSONResponse({"calls": entries})

    async def faults(request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = await request.json()
                if not isinstance(changes, dict):
                    raise ValueError("faults must be a JSON object")
                sim.update_faults(changes)
            except (ValueError, ValidationError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(sim.faults_view())

    async def reset(request: Request) -> Response:
        sim.reset()
        return JSONResponse({"status": "ok"})

    prefix = config.api_prefix.rstrip("/")
    app = SimulatorApp(
        routes=[
            Route(prefix + "/{module}", api, methods=["POST"]),
            Route("/_sim/state", state, methods=["GET"]),
            Route("/_sim/stats", stats, methods=["GET"]),
            Route("/_sim/calls", calls, methods=["GET"]),
            Route("/_sim/faults", faults, methods=["GET", "POST"]),
            Route("/_sim/reset", reset, methods=["POST"]),
        ]
    )
    app.simulator = sim
    app.api = api
    app.api_prefix = prefix + "/"
    return app


# --- running it ------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


@dataclass(frozen=True, slots=True)
class SimulatorTls:
    """HTTPS for the simulator: its certificate chain and key (PEM files), and optionally the CA
    whose client certificates it requires (for tests of a client certificate)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def check(self) -> None:
        """Load the files once, so a bad one stops the start with a message naming it."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"--tls-cert/--tls-key: cannot load {self.cert_file} with {self.key_file}: "
                f"{getattr(exc, 'strerror', None) or getattr(exc, 'reason', None) or exc}"
            ) from exc
        if self.client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=str(self.client_ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"--tls-client-ca: cannot load {self.client_ca_file}: "
                    f"{getattr(exc, 'strerror', None) or getattr(exc, 'reason', None) or exc}"
                ) from exc


def _uvicorn_server(app: SimulatorApp, tls: SimulatorTls | None = None) -> Any:
    import uvicorn

    loop = "uvloop" if _importable("uvloop") else "asyncio"
    http = "httptools" if _importable("httptools") else "h11"
    config = uvicorn.Config(
        app,
        loop=loop,
        http=http,
        access_log=False,
        proxy_headers=False,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
        backlog=4096,
        **_uvicorn_tls(tls),
    )
    return uvicorn.Server(config)


def _uvicorn_tls(tls: SimulatorTls | None) -> dict[str, Any]:
    if tls is None:
        return {}
    options: dict[str, Any] = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
    if tls.client_ca_file is not None:
        options.update(ssl_ca_certs=str(tls.client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def main(args: argparse.Namespace) -> int:
    """`icareus-bridge simulator`: serve until SIGINT/SIGTERM."""
    settings = load_settings(args.config)
    faults = Faults()
    if getattr(args, "faults", None):
        try:
            faults = Faults.model_validate_json(args.faults)
        except ValidationError as exc:
            raise ConfigError(f"--faults: {exc}") from exc
    changes: dict[str, Any] = {}
    if args.latency_ms:
        changes["latency_ms"] = args.latency_ms
    if args.jitter_ms:
        changes["jitter_ms"] = args.jitter_ms
    if args.error_rate:
        rates = dict(faults.rates)
        rates["*"] = (rates.get("*") or FaultRates()).model_copy(
            update={"http_503": args.error_rate}
        )
        changes["rates"] = rates
    faults = faults.model_copy(update=changes)
    tls = _tls_arguments(args)
    products = [p for p in (args.products or "").split(",") if p.strip()]
    config = SimulatorConfig.from_settings(
        settings,
        organization_id=args.org_id,
        key=args.key,
        extra_products=products,
        faults=faults,
    )
    # uvicorn stops on SIGINT/SIGTERM, then re-raises the signal to the handler it found:
    # make that handler a clean exit 0 rather than a traceback or a 143. Installed before the
    # ready line, so a signal sent as soon as it appears is not lost.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_cleanly)
    if not 0 <= args.port <= 65535:
        raise ConfigError(
            f"--port: must be between 0 and 65535 (0 = any free port), got {args.port}"
        )
    try:
        sock = _bind(args.host, args.port)
    except socket.gaierror as exc:
        raise ConfigError(f"--host: cannot listen on {args.host!r}: {exc.strerror}") from exc
    except OSError as exc:
        print(
            f"icareus-bridge simulator: cannot listen on {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"{READY_PREFIX}{'https' if tls else 'http'}://{shown}:{port} "
        f"(api {config.api_prefix}, organization {config.organization_id}, "
        f"{len(config.products)} products)",
        flush=True,
    )
    server = _uvicorn_server(create_app(config), tls)
    server.run(sockets=[sock])
    return 0


def _tls_arguments(args: argparse.Namespace) -> SimulatorTls | None:
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    client_ca = getattr(args, "tls_client_ca", None)
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("--tls-client-ca: needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        missing = "--tls-key" if key is None else "--tls-cert"
        raise ConfigError(f"{missing}: --tls-cert and --tls-key go together")
    tls = SimulatorTls(Path(cert), Path(key), Path(client_ca) if client_ca else None)
    tls.check()
    return tls


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


class SimulatorHandle:
    """A running simulator. `base_url` is what `icareus.base_url` should be; `admin_url` is the
    `/_sim` root. `stop()` ends it (idempotent); also a context manager."""

    def __init__(
        self,
        host: str,
        port: int,
        api_prefix: str,
        stopper: Callable[[], None],
        *,
        scheme: str = "http",
        ca_file: Path | str | None = None,
    ) -> None:
        shown = f"[{host}]" if ":" in host else host
        self.host = host
        self.port = port
        self.ca_file = ca_file  # what the admin client trusts over https
        self.root_url = f"{scheme}://{shown}:{port}"
        self.base_url = self.root_url + api_prefix
        self.admin_url = self.root_url + "/_sim"
        self.pid: int | None = None  # the child process, for start_simulator_process
        self._stopper = stopper
        self._stopped = False

    def admin(self) -> SimulatorAdmin:
        return SimulatorAdmin(self.admin_url, ca_file=self.ca_file)

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stopper()

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_simulator_thread(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tls: SimulatorTls | None = None,
    ca_file: Path | str | None = None,
) -> SimulatorHandle:
    """Serve `config` from a daemon thread of this process (port 0 = a free one), over HTTPS
    with `tls` (`ca_file`: what the handle's admin client trusts). Cheap to start; the
    listening socket exists when this returns, so calls can be made at once."""
    if tls is not None:
        tls.check()
    sock = _bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    server = _uvicorn_server(create_app(config), tls)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="icareus-simulator", daemon=True
    )
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    scheme = "https" if tls else "http"
    return SimulatorHandle(
        bound_host, bound_port, config.api_prefix, stop, scheme=scheme, ca_file=ca_file
    )


def start_simulator_process(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    org_id: str | None = None,
    key: str | None = None,
    products: Sequence[str] = (),
    latency_ms: float = 0.0,
    jitter_ms: float = 0.0,
    faults: Faults | Mapping[str, Any] | None = None,
    config_path: Path | str | None = None,
    cpus: Sequence[int] | None = None,
    ready_timeout: float = 30.0,
    tls: SimulatorTls | None = None,
    ca_file: Path | str | None = None,
) -> SimulatorHandle:
    """Run `icareus-bridge simulator` as a child process (port 0 = a free one), pinned to
    `cpus` if given, over HTTPS with `tls`; returns once it listens. The key travels in the
    environment, not argv."""
    cmd = [sys.executable, "-m", "icareus_bridge.cli", "simulator", "--host", host]
    cmd += ["--port", str(port), "--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms)]
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    if org_id is not None:
        cmd += ["--org-id", org_id]
    if products:
        cmd += ["--products", ",".join(products)]
    if faults is not None:
        faults_model = faults if isinstance(faults, Faults) else Faults.model_validate(faults)
        cmd += ["--faults", faults_model.model_dump_json()]
    if tls is not None:
        cmd += ["--tls-cert", str(tls.cert_file), "--tls-key", str(tls.key_file)]
        if tls.client_ca_file is not None:
            cmd += ["--tls-client-ca", str(tls.client_ca_file)]
    env = dict(os.environ)
    if key is not None:
        env["ICAREUS_BRIDGE__ICAREUS__KEY"] = key
    cpu_set = set(cpus) if cpus else None

    def pin() -> None:
        if cpu_set:
            os.sched_setaffinity(0, cpu_set)

    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, env=env, text=True, preexec_fn=pin if cpu_set else None
    )
    assert proc.stdout is not None
    line = _read_line(proc.stdout, ready_timeout)
    if not line.startswith(READY_PREFIX):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"simulator did not start (exit {proc.poll()}): {line.strip()!r}")
    url = urlsplit(line[len(READY_PREFIX) :].split()[0])
    api_prefix = line.split("(api ", 1)[1].split(",", 1)[0]
    assert url.hostname is not None and url.port is not None

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    handle = SimulatorHandle(
        url.hostname, url.port, api_prefix, stop, scheme=url.scheme, ca_file=ca_file
    )
    handle.pid = proc.pid
    return handle


def _read_line(stream: Any, timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


# --- admin clients ---------------------------------------------------------------------------


def _admin_verify(ca_file: Path | str | None) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else True


class SimulatorAdmin:
    """Blocking client of `/_sim/*`."""

    def __init__(
        self, admin_url: str, timeout: float = 10.0, *, ca_file: Path | str | None = None
    ) -> None:
        self._http = httpx.Client(
            base_url=admin_url.rstrip("/"), timeout=timeout, verify=_admin_verify(ca_file)
        )

    def state(self) -> dict[str, Any]:
        return self._get("/state")

    def stats(self) -> dict[str, Any]:
        return self._get("/stats")

    def calls(self, action: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        params = {k: str(v) for k, v in (("action", action), ("limit", limit)) if v is not None}
        calls: list[dict[str, Any]] = self._get("/calls", params)["calls"]
        return calls

    def faults(self) -> dict[str, Any]:
        return self._get("/faults")

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        response = self._http.post("/faults", json=changes)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def reset(self) -> None:
        self._http.post("/reset").raise_for_status()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SimulatorAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        response = self._http.get(path, params=params)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


class AsyncSimulatorAdmin:
    """Async client of `/_sim/*`, for code already inside an event loop."""

    def __init__(
        self, admin_url: str, timeout: float = 10.0, *, ca_file: Path | str | None = None
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=admin_url.rstrip("/"), timeout=timeout, verify=_admin_verify(ca_file)
        )

    async def state(self) -> dict[str, Any]:
        return await self._get("/state")

    async def stats(self) -> dict[str, Any]:
        return await self._get("/stats")

    async def calls(
        self, action: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        params = {k: str(v) for k, v in (("action", action), ("limit", limit)) if v is not None}
        calls: list[dict[str, Any]] = (await self._get("/calls", params))["calls"]
        return calls

    async def set_faults(self, **changes: Any) -> dict[str, Any]:
        response = await self._http.post("/faults", json=changes)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def reset(self) -> None:
        (await self._http.post("/reset")).raise_for_status()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncSimulatorAdmin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        response = await self._http.get(path, params=params)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


__all__ = [
    "AsyncSimulatorAdmin",
    "FaultRates",
    "Faults",
    "IcareusSimulator",
    "ScriptedFault",
    "SimulatorAdmin",
    "SimulatorConfig",
    "SimulatorHandle",
    "SimulatorTls",
    "create_app",
    "main",
    "start_simulator_process",
    "start_simulator_thread",
]
