"""The operator's commands, each a module with its `main` (cli.py's HANDLERS): `replay`,
`archive` (and `archive search`), `reset`, `status` and `explain`; they reach Kafka only
through `icareus_bridge.kafka`."""

__all__ = ["archive", "archive_search", "explain", "replay", "reset", "status"]
