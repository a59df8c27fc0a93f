"""Client details that need no server: the form encoding and argument checks."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import pytest
from pydantic import SecretStr

from icareus_bridge.config import IcareusSettings
from icareus_bridge.icareus.client import IcareusClient, _form_body


@pytest.mark.parametrize(
    "fields",
    [
        [("organizationId", "1001"), ("userId", "42"), ("token", "016745e2a0" + "f" * 32)],
        [("externalId", "SUB 1/VP&x=y+z"), ("firstName", "Zoë"), ("emailAddress", "a@b.c")],
        [("productIds", "1001,1002"), ("deviceId", "sn-1_A.b~"), ("empty", "")],
    ],
)
def test_the_form_is_encoded_exactly_as_urlencode_would(fields: list[tuple[str, str]]) -> None:
    assert _form_body(fields) == urlencode(fields).encode("ascii")


def test_get_user_takes_exactly_one_identifier() -> None:
    async def main() -> None:
        settings = IcareusSettings(key=SecretStr("k"))
        async with IcareusClient(settings) as client:
            with pytest.raises(ValueError, match="exactly one"):
                await client.get_user()
            with pytest.raises(ValueError, match="exactly one"):
                await client.get_user(user_id="1", external_id="A")

    asyncio.run(main())
