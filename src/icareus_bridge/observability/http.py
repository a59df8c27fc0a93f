"""The process's small HTTP face for operators: `/metrics` (Prometheus), `/healthz` (the
process is alive) and `/readyz` (every role has reported ready: partitions assigned, state
restored, broker and Icareus reachable). A stdlib WSGI server in a daemon thread."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST

from icareus_bridge.observability.metrics import Metrics

StartResponse = Callable[..., Any]


class Readiness:
    """Named readiness checks the roles report into; ready when all registered ones are."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, tuple[bool, str]] = {}

    def register(self, name: str, detail: str = "starting") -> None:
        with self._lock:
            self._checks.setdefault(name, (False, detail))

    def set(self, name: str, ready: bool, detail: str = "") -> None:
        with self._lock:
            self._checks[name] = (ready, detail)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: {"ready": r, "detail": d} for k, (r, d) in sorted(self._checks.items())}

    def passing(self) -> dict[str, bool]:
        """Per check: does it pass (for the `icareus_bridge_ready` gauges)."""
        with self._lock:
            return {k: r for k, (r, _) in self._checks.items()}

    @property
    def ready(self) -> bool:
        with self._lock:
            return bool(self._checks) and all(r for r, _ in self._checks.values())


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


class HealthServer:
    """Serves /metrics, /healthz and /readyz until `stop()`; `port` is the bound port."""

    def __init__(self, host: str, port: int, metrics: Metrics, readiness: Readiness) -> None:
        self._metrics = metrics
        self._readiness = readiness
        metrics.watch_readiness(readiness.passing)
        self._server = make_server(
            host, port, self._app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body = self._metrics.render()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [body]
        if path == "/healthz":
            return self._json(start_response, "200 OK", {"status": "alive"})
        if path == "/readyz":
            ready = self._readiness.ready
            payload = {
                "status": "ready" if ready else "not ready",
                "checks": self._readiness.snapshot(),
            }
            status = "200 OK" if ready else "503 Service Unavailable"
            return self._json(start_response, status, payload)
        return self._json(start_response, "404 Not Found", {"error": f"no such path {path}"})

    @staticmethod
    def _json(start_response: StartResponse, status: str, payload: Any) -> Iterable[bytes]:
        body = json.dumps(payload).encode()
        start_response(status, [("Content-Type", "application/json")])
        return [body]
