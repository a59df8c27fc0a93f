"""A small Confluent schema registry client for the codec: register the bridge's schemas under
`<topic>-value` and fetch writer schemas by id. Answers are cached; ids never change meaning."""

from __future__ import annotations

import json
from typing import Any

import httpx

from icareus_bridge.codec.errors import SchemaRegistryError

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class SchemaRegistryClient:
    """The two registry calls the codec needs, over httpx (synchronous: called once per schema,
    then served from the cache)."""

    def __init__(
        self,
        url: str,
        *,
        user_info: str | None = None,
        timeout_seconds: float = 5.0,
        client: httpx.Client | None = None,
    ) -> None:
        auth: tuple[str, str] | None = None
        if user_info:
            user, _, password = user_info.partition(":")
            auth = (user, password)
        self._client = client or httpx.Client(
            base_url=url.rstrip("/"),
            auth=auth,
            timeout=timeout_seconds,
            headers={"Accept": _CONTENT_TYPE},
        )
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, str] = {}

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return self._client.request(
                method,
                path,
                content=json.dumps(body) if body is not None else None,
                headers={"Content-Type": _CONTENT_TYPE} if body is not None else None,
            )
        except httpx.HTTPError as exc:
            raise SchemaRegistryError(f"schema registry {method} {path}: {exc!r}") from exc

    def register(self, subject: str, schema: str) -> int:
        """The id of `schema` under `subject`, registering it if new (the registry answers with
        the existing id when the schema is already there)."""
        key = (subject, schema)
        known = self._ids.get(key)
        if known is not None:
            return known
        resp = self._call("POST", f"/subjects/{subject}/versions", {"schema": schema})
        if resp.status_code != 200:
            raise SchemaRegistryError(
                f"schema registry refused {subject}: HTTP {resp.status_code} {resp.text[:200]}"
            )
        schema_id = int(resp.json()["id"])
        self._ids[key] = schema_id
        self._schemas[schema_id] = schema
        return schema_id

    def schema_by_id(self, schema_id: int) -> str | None:
        """The schema text registered under `schema_id`, or None when the registry has none."""
        known = self._schemas.get(schema_id)
        if known is not None:
            return known
        resp = self._call("GET", f"/schemas/ids/{schema_id}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise SchemaRegistryError(f"schema registry id {schema_id}: HTTP {resp.status_code}")
        text = str(resp.json()["schema"])
        self._schemas[schema_id] = text
        return text


__all__ = ["SchemaRegistryClient"]
