"""`icareus-bridge run`: the service process. Loads the configuration, claims its instance ids
on this host, serves /metrics, /healthz and /readyz, waits for the broker (saying so, with its
address), sets up the topics, and runs the planner and/or the dispatcher in their own threads
until SIGTERM (or SIGINT): the first signal lets each role finish its open transaction and exit
0; a second one exits at once."""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from icareus_bridge.config import Settings, load_settings
from icareus_bridge.kafka.admin import StartupError, ensure_topics, wait_for_broker
from icareus_bridge.kafka.clients import FatalClientError
from icareus_bridge.kafka.identity import (
    IdentityError,
    InstanceClaim,
    claim_instance,
    resolve_instance_id,
)
from icareus_bridge.observability.http import HealthServer, Readiness
from icareus_bridge.observability.logging import configure_logging, get_logger
from icareus_bridge.observability.metrics import Metrics

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 4
# Readiness check of the start-up itself (broker reached, topics set up).
STARTUP_CHECK = "startup"
EXIT_FORCED = 130

# A role runs until the stop event is set, then returns (raising means it failed).
RoleRunner = Callable[[Settings, Metrics, Readiness, threading.Event], None]


# Generation-0 threshold of the garbage collector while the service runs: the planner makes
# many short-lived model objects per event and none of them form cycles worth a collection
# every 700 allocations (measured in bench/plan_bench.py and bench/planner_bench.py).
GC_THRESHOLD = (50_000, 20, 100)


def tune_gc() -> None:
    """Move everything allocated at start-up out of the collector's way and collect rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def run_planner(
    settings: Settings, metrics: Metrics, readiness: Readiness, stop: threading.Event
) -> None:
    """The planner role: built from the configuration, runs until `stop` is set."""
    from icareus_bridge.codec import Codec
    from icareus_bridge.core.feedback import apply_result
    from icareus_bridge.core.plan import plan
    from icareus_bridge.pipeline.planner import Planner, PlannerLogic

    logic = PlannerLogic(settings, Codec.from_settings(settings), plan, apply_result)
    Planner(settings, logic, metrics, readiness).run(stop)


def dispatcher_runner() -> RoleRunner:
    """The dispatcher role's entry point: `icareus_bridge.pipeline.dispatcher.run_dispatcher`
    with the same signature as `run_planner`."""
    module = importlib.import_module("icareus_bridge.pipeline.dispatcher")
    runner: RoleRunner = module.run_dispatcher
    return runner


@dataclass
class _Role:
    name: str
    runner: RoleRunner
    thread: threading.Thread | None = None
    error: BaseException | None = field(default=None)


def _install_signal_handlers(stop: threading.Event, log: Any) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("second signal, exiting at once", signal=signum)
            os._exit(EXIT_FORCED)
        log.info("signal received, finishing open work", signal=signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _claim_ids(settings: Settings, roles: list[_Role]) -> list[InstanceClaim]:
    """Each role's instance ids for this process (`IdentityError`, e.g. another process has
    them)."""
    claims: list[InstanceClaim] = []
    for role in roles:
        section = settings.planner if role.name == "planner" else settings.dispatcher
        instance = resolve_instance_id(section.instance_id)
        try:
            claims.append(claim_instance(settings.kafka, role.name, section.group_id, instance))
        except IdentityError:
            for claim in claims:
                claim.release()
            raise
    return claims


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.logging.level, settings.logging.format)
    log = get_logger("icareus_bridge.service")
    role_arg: str = getattr(args, "role", "all") or "all"

    roles: list[_Role] = []
    if role_arg in ("planner", "all"):
        roles.append(_Role("planner", run_planner))
    if role_arg in ("dispatcher", "all"):
        try:
            roles.append(_Role("dispatcher", dispatcher_runner()))
        except (ImportError, AttributeError) as exc:
            print(f"icareus-bridge run: the dispatcher is not available: {exc}", file=sys.stderr)
            return EXIT_STARTUP

    # Before any Kafka work: a second process with these ids would fence the first.
    try:
        claims = _claim_ids(settings, roles)
    except IdentityError as exc:
        log.error("start-up refused", error=str(exc))
        print(f"icareus-bridge run: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return _serve(settings, roles, role_arg, log)
    finally:
        for claim in claims:
            claim.release()


def _serve(settings: Settings, roles: list[_Role], role_arg: str, log: Any) -> int:
    """Everything after the ids are claimed: HTTP, the broker wait, topics, the roles."""
    metrics = Metrics()
    readiness = Readiness()
    readiness.register(
        STARTUP_CHECK, f"waiting for the Kafka broker at {settings.kafka.bootstrap_servers}"
    )
    for role in roles:  # each role's own check (named after it) is false until it says ready
        readiness.register(role.name, "waiting for partitions")
    try:
        server = HealthServer(settings.http.host, settings.http.port, metrics, readiness).start()
    except OSError as exc:
        message = f"http.port={settings.http.port}: cannot listen on {settings.http.host}: {exc}"
        log.error("start-up refused", error=message)
        print(f"icareus-bridge run: {message}", file=sys.stderr)
        return EXIT_CONFIG
    log.info("http listening", host=settings.http.host, port=server.port, roles=role_arg)

    stop = threading.Event()
    _install_signal_handlers(stop, log)
    try:
        ready = _broker_and_topics(settings, readiness, stop, log)
    except StartupError as exc:
        server.stop()
        log.error("start-up refused", error=str(exc))
        print(f"icareus-bridge run: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    if not ready:
        server.stop()
        log.info("stopped before the broker answered")
        return EXIT_OK
    tune_gc()
    _run_roles(settings, roles, metrics, readiness, stop, log)
    server.stop()
    return _exit_code(roles, log)


def _broker_and_topics(
    settings: Settings, readiness: Readiness, stop: threading.Event, log: Any
) -> bool:
    """Wait for the broker (False: stopped before it answered), then set up the topics."""
    bootstrap = settings.kafka.bootstrap_servers
    limit = settings.kafka.startup_wait_seconds
    log.info(
        "waiting for the Kafka broker",
        bootstrap_servers=bootstrap,
        wait_limit_seconds=limit if limit > 0 else "none",
    )
    if not wait_for_broker(
        settings.kafka,
        stop,
        on_wait=lambda waited, error: log.warning(
            "still waiting for the Kafka broker",
            bootstrap_servers=bootstrap,
            waited_seconds=round(waited),
            error=error,
        ),
    ):
        return False
    readiness.set(STARTUP_CHECK, False, "setting up topics")
    reports = ensure_topics(settings.kafka, settings.topics)
    log.info("kafka broker answered", bootstrap_servers=bootstrap)
    for r in reports:
        log.info(
            "topic ready",
            topic=r.name,
            partitions=r.partitions,
            created=r.created,
            cleanup_policy=r.cleanup_policy,
        )
    readiness.set(STARTUP_CHECK, True, "broker reached, topics ready")
    return True


def _run_roles(
    settings: Settings,
    roles: list[_Role],
    metrics: Metrics,
    readiness: Readiness,
    stop: threading.Event,
    log: Any,
) -> None:
    """Each role in its own thread; a failing role stops the others. Returns when all ended."""
    for role in roles:

        def body(r: _Role = role) -> None:
            try:
                r.runner(settings, metrics, readiness, stop)
            except BaseException as exc:
                r.error = exc
                log.exception("role failed", role=r.name)
                stop.set()

        role.thread = threading.Thread(target=body, name=role.name, daemon=True)
        role.thread.start()

    # The main thread only waits (short joins keep it responsive to signals).
    while any(x.thread is not None and x.thread.is_alive() for x in roles):
        for x in roles:
            if x.thread is not None:
                x.thread.join(timeout=0.2)


def _exit_code(roles: list[_Role], log: Any) -> int:
    failed = [x.name for x in roles if x.error is not None]
    if failed:
        for x in roles:
            if isinstance(x.error, FatalClientError):
                log.error("stage stopped on a fatal Kafka error", role=x.name, error=str(x.error))
                print(f"icareus-bridge run: {x.error}", file=sys.stderr)
        log.error("stopped after a failure", roles=failed)
        return EXIT_FAILED
    log.info("stopped")
    return EXIT_OK
