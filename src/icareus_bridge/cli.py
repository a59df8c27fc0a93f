"""`icareus-bridge` console script: argument parsing only; each command lives in its own module
and is imported when it runs, so `--help` stays fast and no command's imports slow another."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from icareus_bridge.config import ConfigError

_N = TypeVar("_N", int, float)

EXIT_USAGE = 2
EXIT_NOT_BUILT = 3

# command name -> (module, function); a handler takes the parsed arguments and returns an exit code.
HANDLERS: dict[str, tuple[str, str]] = {
    "run": ("icareus_bridge.service", "main"),
    "simulator": ("icareus_bridge.icareus.simulator", "main"),
    "explain": ("icareus_bridge.ops.explain", "main"),
    "replay": ("icareus_bridge.ops.replay", "main"),
    "archive": ("icareus_bridge.ops.archive", "main"),
    "reset": ("icareus_bridge.ops.reset", "main"),
    "status": ("icareus_bridge.ops.status", "main"),
}


def _number(
    convert: Callable[[str], _N],
    in_range: Callable[[_N], bool],
    out_of_range: str,
    *,
    not_a_number: str | None = None,
    name: str,
) -> Callable[[str], _N]:
    """An argparse type: `convert` the text and require `in_range`. The messages are templates
    of `text`; without `not_a_number` a text that does not convert is argparse's own "invalid
    NAME value" error (the returned function is called `name`)."""

    def parse(text: str) -> _N:
        if not_a_number is None:
            value = convert(text)
        else:
            try:
                value = convert(text)
            except ValueError:
                raise argparse.ArgumentTypeError(not_a_number.format(text=text)) from None
        if not in_range(value):
            raise argparse.ArgumentTypeError(out_of_range.format(text=text))
        return value

    parse.__name__ = parse.__qualname__ = name
    return parse


_positive_int = _number(
    int, lambda v: v > 0, "must be a positive integer, got {text}", name="_positive_int"
)
_archive_days = _number(
    int,
    lambda v: v >= 0,
    "must be 0 or more days, got {text}",
    not_a_number="must be a whole number of days, got {text!r}",
    name="_archive_days",
)
_non_negative_float = _number(
    float, lambda v: not v < 0, "must be >= 0, got {text}", name="_non_negative_float"
)
_positive_float = _number(
    float,
    lambda v: v > 0 and v != float("inf"),
    "must be > 0, got {text}",
    not_a_number="must be a number > 0, got {text}",
    name="_positive_float",
)
_non_negative_int = _number(
    int,
    lambda v: v >= 0,
    "must be an integer >= 0, got {text}",
    not_a_number="must be an integer >= 0, got {text}",
    name="_non_negative_int",
)
_rate = _number(
    float, lambda v: 0.0 <= v <= 1.0, "must be between 0 and 1, got {text}", name="_rate"
)


def _config_file(text: str) -> Path:
    # Checked while parsing, so every command (built or not) reports a bad --config the same way.
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"cannot read {text}: no such file")
    return path


_Command = Callable[[str, str], argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icareus-bridge",
        description="Provisions CRM.COM subscription actions into Icareus Suite through Kafka.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config",
            type=_config_file,
            default=None,
            metavar="PATH",
            help="YAML configuration (default: the embedded config/bridge.yaml)",
        )
        return p

    _add_run(command)
    _add_simulator(command)
    _add_explain(command)
    _add_replay(command)
    _add_archive(command)
    _add_reset(command)
    _add_status(command)
    return parser


def _add_run(command: _Command) -> None:
    run = command("run", "run the bridge service (planner, dispatcher or both)")
    run.add_argument("--role", choices=["planner", "dispatcher", "all"], default="all")


def _add_simulator(command: _Command) -> None:
    sim = command("simulator", "run the Icareus Suite simulator (HTTP)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8085)
    sim.add_argument("--latency-ms", type=_non_negative_float, default=0.0)
    sim.add_argument("--jitter-ms", type=_non_negative_float, default=0.0)
    sim.add_argument(
        "--error-rate", type=_rate, default=0.0, help="share of calls answered HTTP 503"
    )
    sim.add_argument("--org-id", default=None, help="organization id (default: from config)")
    sim.add_argument("--key", default=None, help="organization key (default: from config)")
    sim.add_argument(
        "--products",
        default="",
        help="extra Icareus product ids in the catalogue, comma-separated",
    )
    sim.add_argument(
        "--faults",
        default=None,
        metavar="JSON",
        help="initial fault injection, same JSON as POST /_sim/faults",
    )
    sim.add_argument(
        "--tls-cert", default=None, metavar="FILE", help="serve HTTPS with this PEM certificate"
    )
    sim.add_argument("--tls-key", default=None, metavar="FILE", help="the key of --tls-cert")
    sim.add_argument(
        "--tls-client-ca",
        default=None,
        metavar="FILE",
        help="require client certificates signed by this CA (PEM; needs --tls-cert)",
    )


def _add_explain(command: _Command) -> None:
    explain = command("explain", "dry-run the state machine on one event given as JSON")
    explain.add_argument("--event", type=Path, required=True, metavar="FILE")
    explain.add_argument("--state", type=Path, default=None, metavar="FILE")


def _add_replay(command: _Command) -> None:
    replay = command("replay", "put dead letters back on their original topic")
    replay.add_argument(
        "--since", default=None, help="ISO-8601 time: dead letters last failed then or later"
    )
    replay.add_argument(
        "--until", default=None, help="ISO-8601 time: dead letters last failed before then"
    )
    replay.add_argument("--subscription", default=None, metavar="ID")
    replay.add_argument(
        "--request-id", default=None, metavar="ID", help="a request id (or event id)"
    )
    replay.add_argument("--reason", default=None, help="only this dlq.reason code")
    replay.add_argument("--stage", choices=["decode", "validate", "plan", "dispatch"], default=None)
    replay.add_argument("--limit", type=_positive_int, default=None, help="replay at most N")
    replay.add_argument(
        "--rate", type=_positive_float, default=None, help="records per second at most"
    )
    replay.add_argument("--dry-run", action="store_true", help="list, change nothing")
    replay.add_argument("--json", action="store_true", help="JSON lines instead of text")
    replay.add_argument(
        "--force",
        action="store_true",
        help="also replay stage decode/validate and dead letters past dlq.max_replays",
    )
    replay.add_argument(
        "--history", action="store_true", help="list the audit records of earlier replay runs"
    )


def _add_archive(command: _Command) -> None:
    archive = command("archive", "archive old provisioning requests, or search an archive")
    archive.add_argument(
        "--older-than",
        type=_archive_days,
        default=None,
        metavar="DAYS",
        help="archive results older than DAYS days (0 = everything up to now)",
    )
    archive.add_argument("--out", type=Path, default=None, metavar="DIR")
    archive.add_argument(
        "--codec",
        choices=["deflate", "zstandard"],
        default=None,
        help="compression of new archive files (default: archive.codec)",
    )
    archive.add_argument(
        "--delete",
        action="store_true",
        help="then delete archived records from the live topics (Kafka DeleteRecords), never "
        "past what the bridge's groups or archive.crm_group_id still have to read",
    )
    archive_sub = archive.add_subparsers(dest="archive_command", metavar="SUBCOMMAND")
    search = archive_sub.add_parser(
        "search",
        help="search an archive (checks every file's sha256 first)",
        description="search an archive (checks every file's sha256 first); filters combine "
        "with AND",
    )
    # Accepted here too, as on every command (search itself reads only DIR); SUPPRESS keeps an
    # `archive --config PATH search` from being overwritten by this default.
    search.add_argument(
        "--config",
        type=_config_file,
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="YAML configuration, as for every command (search reads only DIR)",
    )
    search.add_argument("--subscription", default=None, metavar="ID")
    search.add_argument("--request-id", default=None, metavar="ID")
    search.add_argument("--since", default=None, help="ISO-8601 time, results from then on")
    search.add_argument("--until", default=None, help="ISO-8601 time, results before then")
    search.add_argument("--state", choices=["COMPLETED", "REJECTED"], default=None)
    search.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    search.add_argument("dir", type=Path, metavar="DIR")


def _add_reset(command: _Command) -> None:
    reset = command("reset", "CRM's reset utility: bring Icareus back in line with CRM")
    target = reset.add_mutually_exclusive_group(required=True)
    target.add_argument("--subscription", metavar="ID")
    target.add_argument("--all", action="store_true", help="every subscription the bridge knows")
    reset.add_argument(
        "--dry-run",
        action="store_true",
        help="show what Icareus holds against what it should hold, and the requests; send nothing",
    )
    reset.add_argument(
        "--rate", type=_positive_float, default=None, help="subscriptions per second at most"
    )
    reset.add_argument("--json", action="store_true", help="with --dry-run: one JSON line each")


def _add_status(command: _Command) -> None:
    status = command("status", "what the bridge knows about one subscription, as JSON")
    status.add_argument("--subscription", required=True, metavar="ID")
    status.add_argument(
        "--results", type=_non_negative_int, default=10, metavar="N", help="latest results shown"
    )


def _resolve(name: str) -> Callable[[argparse.Namespace], int] | None:
    module_name, func_name = HANDLERS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    handler: Callable[[argparse.Namespace], int] = getattr(module, func_name)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = _resolve(args.command)
    if handler is None:
        print(f"icareus-bridge {args.command}: not built yet", file=sys.stderr)
        return EXIT_NOT_BUILT
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"icareus-bridge {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
