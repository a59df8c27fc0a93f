"""Icareus HTTP ceiling: how many calls per second the client sustains against the simulator,
and how many the simulator itself serves, each pinned to one core of this machine.

    .venv/bin/python bench/icareus_bench.py [--seconds 5] [--runs 5] [--inflight 64 256]

- The simulator runs in its own process (`start_simulator_process`), pinned to core 0, with no
  added latency.
- Client: a separate process pinned to core 1 runs `IcareusClient` with N calls in flight; each
  worker repeats the account life cycle addUser, activateProducts, addDevice, getUser,
  removeDevice, cancelProducts, removeUser (all seven calls, each with its own
  Idempotency-Key). Measured for each HTTP library under the client (aiohttp, httpx).
- Simulator ceiling: `wrk` (if installed; `apt-get install wrk`) pinned to core 1, cycling
  through pre-signed calls of all seven actions. Without wrk, several raw aiohttp load
  processes on the remaining cores stand in (less honest on a 2-core machine).
Each figure is the median of `--runs` runs of `--seconds` seconds (client: after a 1 s
warm-up): requests/s by the wall clock, and requests per CPU-second of the measured process
(client process, or simulator process) — what one fully used core sustains, which stays honest
when other work shares the machine. Prints one JSON object per figure, then a markdown table."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

import machine_info  # bench/machine_info.py, beside this script
from icareus_bridge.config import DEFAULT_OPERATION_PARAMS, IcareusSettings, RetrySettings
from icareus_bridge.icareus.client import IcareusClient
from icareus_bridge.icareus.signing import sign
from icareus_bridge.icareus.simulator import SimulatorHandle, start_simulator_process

ORG = "1001"
KEY = "bench-key"
SIM_CPU = 0
LOAD_CPU = 1


def machine() -> str:
    return f"{os.cpu_count()} cores, {machine_info.cpu_model()}, Python {platform.python_version()}"


# --- the client load (runs in its own pinned process) -------------------------------------------


async def client_load(base_url: str, backend: str, inflight: int, seconds: float) -> dict[str, Any]:
    settings = IcareusSettings(
        base_url=base_url,
        organization_id=ORG,
        key=SecretStr(KEY),
        http_backend=backend,  # type: ignore[arg-type]
        max_connections=inflight,
        max_in_flight=inflight,
        retry=RetrySettings(max_attempts=1),
    )
    calls = 0
    errors = 0
    counting = False
    stop_at = 0.0

    async def worker(w: int) -> None:
        nonlocal calls, errors
        i = 0
        while time.perf_counter() < stop_at:
            i += 1
            tag = f"{w}-{i}-{random.random()}"
            try:
                uid = (await client.add_user(f"B-{tag}", idempotency_key=f"a{tag}")).user_id
                assert uid is not None
                await client.activate_products(uid, ["1001", "1002"], idempotency_key=f"b{tag}")
                await client.add_device(uid, f"SN-{tag}", "SET_TOP_BOX", idempotency_key=f"c{tag}")
                await client.get_user(user_id=uid)
                await client.remove_device(uid, f"SN-{tag}", idempotency_key=f"d{tag}")
                await client.cancel_products(uid, ["1001", "1002"], idempotency_key=f"e{tag}")
                await client.remove_user(uid, idempotency_key=f"f{tag}")
                if counting:
                    calls += 7
            except Exception:
                errors += 1

    async with IcareusClient(settings) as client:
        stop_at = time.perf_counter() + 1.0  # warm-up: connections, caches
        await asyncio.gather(*(worker(w) for w in range(inflight)))
        counting = True
        started = time.perf_counter()
        cpu_started = time.process_time()
        stop_at = started + seconds
        await asyncio.gather(*(worker(w) for w in range(inflight)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    return {"rps": calls / elapsed, "per_cpu_s": calls / cpu, "calls": calls, "errors": errors}


def run_client_process(
    base_url: str, backend: str, inflight: int, seconds: float
) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, __file__, "_client", base_url, backend, str(inflight), str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        print(f"  warning: {result['errors']} failed cycles", file=sys.stderr)
    return float(result["rps"]), float(result["per_cpu_s"])


# --- the simulator ceiling -----------------------------------------------------------------------


def signed_requests(count: int) -> list[tuple[str, str]]:
    """(path+query, form body) for `count` calls spread over all seven actions."""
    from urllib.parse import urlencode

    actions = [
        ("user", "addUser", "add_user"),
        ("packages", "activateProducts", "activate_products"),
        ("devices", "addDevice", "add_device"),
        ("user", "getUser", "get_user"),
        ("devices", "removeDevice", "remove_device"),
        ("packages", "cancelProducts", "cancel_products"),
        ("user", "removeUser", "remove_user"),
    ]
    now = time.time()
    out = []
    for n in range(count):
        module, action, op = actions[n % len(actions)]
        uid = str(100_001 + (n // len(actions)) % 500)
        sample = {
            "externalId": f"W-{n // len(actions)}",
            "userId": uid if op != "get_user" else "",
            "productIds": "1001,1002",
            "deviceId": f"SN-{n}",
            "deviceType": "SET_TOP_BOX",
        }
        names = DEFAULT_OPERATION_PARAMS[op]
        values = [sample.get(p, "") for p in names]
        if op == "get_user":
            values = ["", f"W-{n // len(actions)}"]
        form = [("organizationId", ORG), *zip(names, values, strict=True)]
        form.append(("token", sign(ORG, values, KEY, now)))
        out.append((f"/api/{module}?action={action}", urlencode(form)))
    return out


WRK_SCRIPT = """
local requests = {}
local i = 0
for line in io.lines("%s") do
  local path, body = line:match("([^\\t]+)\\t(.*)")
  requests[#requests + 1] = wrk.format("POST", path,
    {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
request = function()
  i = i %% #requests + 1
  return requests[i]
end
"""


def cpu_seconds(pid: int) -> float:
    """user + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    sim: SimulatorHandle, connections: int, seconds: float, workdir: Path
) -> tuple[float, float]:
    data = workdir / "requests.tsv"
    data.write_text("\n".join(f"{p}\t{b}" for p, b in signed_requests(7 * 500)) + "\n")
    script = workdir / "icareus.lua"
    script.write_text(WRK_SCRIPT % data)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "-s", str(script), sim.root_url]
    assert sim.pid is not None
    cpu_before = cpu_seconds(sim.pid)
    out = subprocess.run(
        cmd, check=True, capture_output=True, text=True, preexec_fn=lambda: pin({LOAD_CPU})
    ).stdout
    cpu = cpu_seconds(sim.pid) - cpu_before
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            rate = float(line.split()[1])
            return rate, rate * seconds / cpu
    raise RuntimeError(f"wrk printed no rate:\n{out}")


def pin(cpus: set[int]) -> None:
    os.sched_setaffinity(0, cpus)


# --- orchestration -------------------------------------------------------------------------------


def median_of(runs: int, measure: Any) -> dict[str, Any]:
    """Median wall-clock rate and median rate per CPU-second of the measured process (the
    second is what one fully used core sustains, even when other work shares the machine)."""
    samples = [measure() for _ in range(runs)]
    return {
        "median_rps": round(statistics.median(s[0] for s in samples)),
        "median_per_cpu_s": round(statistics.median(s[1] for s in samples)),
        "samples_rps": [round(s[0]) for s in samples],
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        pin({LOAD_CPU})
        _, base_url, backend, inflight, seconds = sys.argv[1:6]
        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:
            runner = asyncio.run
        print(json.dumps(runner(client_load(base_url, backend, int(inflight), float(seconds)))))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--inflight", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--backends", nargs="+", default=["aiohttp", "httpx"])
    parser.add_argument("--skip-client", action="store_true")
    parser.add_argument("--skip-simulator", action="store_true")
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        print("needs at least 2 cores (simulator and load on separate cores)", file=sys.stderr)
        return 2

    rows: list[dict[str, Any]] = []
    with start_simulator_process(org_id=ORG, key=KEY, cpus=[SIM_CPU]) as sim:
        admin = sim.admin()
        if not args.skip_client:
            for backend in args.backends:
                for inflight in args.inflight:

                    def measure(
                        backend: str = backend, inflight: int = inflight
                    ) -> tuple[float, float]:
                        admin.reset()
                        return run_client_process(sim.base_url, backend, inflight, args.seconds)

                    name = f"Icareus client ({backend}), {inflight} in flight"
                    rows.append({"benchmark": name, **median_of(args.runs, measure)})
                    print(json.dumps(rows[-1]), flush=True)
        if not args.skip_simulator:
            if shutil.which("wrk") is None:
                print("wrk not found: apt-get install wrk", file=sys.stderr)
                return 2
            with tempfile.TemporaryDirectory() as tmp:
                for inflight in args.inflight:

                    def measure_sim(inflight: int = inflight) -> tuple[float, float]:
                        admin.reset()
                        return run_wrk(sim, inflight, args.seconds, Path(tmp))

                    name = f"Icareus simulator (wrk), {inflight} connections"
                    rows.append({"benchmark": name, **median_of(args.runs, measure_sim)})
                    print(json.dumps(rows[-1]), flush=True)
        admin.close()

    print(f"\nmachine: {machine()}\n")
    print("| benchmark | median req/s | median req per CPU-second | runs (req/s) | load 1m |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['benchmark']} | {row['median_rps']:,} | {row['median_per_cpu_s']:,} "
            f"| {row['samples_rps']} | {row['load_avg_1m']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
