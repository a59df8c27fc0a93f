"""The Icareus token: DOMAIN.md's worked example, and what the verifier accepts."""

from __future__ import annotations

import hashlib

import pytest

from icareus_bridge.core.model import AccountState, sorted_products
from icareus_bridge.icareus.signing import (
    product_ids_param,
    redact_token,
    sign,
    signing_string,
    token_time,
    verify,
)
from icareus_bridge.icareus.simulator import SimUser

EXAMPLE_TIME = 0x6745E2A0


def test_domain_example_remove_user_42_signs_org_user_time_key() -> None:
    assert token_time(EXAMPLE_TIME) == "6745e2a0"
    assert signing_string("1001", ["42"], "6745e2a0", "k") == "1001:42:6745e2a0:k"
    expected = "01" + "6745e2a0" + hashlib.md5(b"1001:42:6745e2a0:k").hexdigest()
    assert sign("1001", ["42"], "k", EXAMPLE_TIME) == expected


def test_absent_optional_values_count_as_empty_strings() -> None:
    token = sign("1001", ["", "SUB-1-VP1"], "k", EXAMPLE_TIME)
    assert token[10:] == hashlib.md5(b"1001::SUB-1-VP1:6745e2a0:k").hexdigest()


def test_a_token_verifies_within_the_window_only() -> None:
    token = sign("1001", ["42"], "k", EXAMPLE_TIME)
    assert verify(token, "1001", ["42"], "k", EXAMPLE_TIME + 300)
    assert verify(token, "1001", ["42"], "k", EXAMPLE_TIME - 300)
    assert not verify(token, "1001", ["42"], "k", EXAMPLE_TIME + 301)
    assert not verify(token, "1001", ["42"], "k", EXAMPLE_TIME - 301)


@pytest.mark.parametrize(
    ("org", "values", "key"),
    [("1002", ["42"], "k"), ("1001", ["43"], "k"), ("1001", ["42"], "other"), ("1001", [], "k")],
)
def test_a_token_does_not_verify_for_other_inputs(org: str, values: list[str], key: str) -> None:
    token = sign("1001", ["42"], "k", EXAMPLE_TIME)
    assert not verify(token, org, values, key, EXAMPLE_TIME)


@pytest.mark.parametrize(
    "token",
    ["", "02" + "6745e2a0" + "0" * 32, "01" + "6745E2A0" + "0" * 32, "01zzzzzzzz" + "0" * 32, "01"],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    assert not verify(token, "1001", ["42"], "k", EXAMPLE_TIME)


def test_product_ids_are_unique_ascending_and_comma_separated() -> None:
    assert product_ids_param(["1003", "10", "1001", "1003"]) == "10,1001,1003"
    assert product_ids_param(["B", "2", "A"]) == "2,A,B"


def test_signing_the_state_and_the_simulator_share_one_product_order() -> None:
    ids = ["10", "B", "2", "1001", "02", "A", "x5", "9"]
    expected = ("02", "2", "9", "10", "1001", "A", "B", "x5")
    assert sorted_products(ids) == expected
    assert product_ids_param(ids) == ",".join(expected)
    held = AccountState(distributor="VP1", account_key="N-VP1", products=frozenset(ids))
    assert held.model_dump()["products"] == list(expected)
    user = SimUser(user_id="7", external_id="N-VP1", products=set(ids))
    assert user.view()["products"] == list(expected)


def test_a_shown_token_keeps_version_and_time_only() -> None:
    token = sign("1001", ["42"], "k", EXAMPLE_TIME)
    assert redact_token(token) == "016745e2a0…"
