"""One redaction: one marker and one function, whichever part of the bridge shows data (logs,
Icareus excerpts and payloads, the client's sent form, explain's output)."""

from __future__ import annotations

from icareus_bridge.core.redaction import REDACTED, redact
from icareus_bridge.icareus import errors
from icareus_bridge.icareus.client import _shown_form
from icareus_bridge.observability import logging as log
from icareus_bridge.ops.explain import _redacted


def test_the_marker_is_the_same_everywhere() -> None:
    assert REDACTED == "<redacted>"
    assert log.redact({"last_name": "Lee"}) == {"last_name": REDACTED}
    assert errors.redact({"lastName": "Lee"}) == {"lastName": REDACTED}
    assert _redacted({"last_name": "Lee"}) == {"last_name": REDACTED}
    form = [("organizationId", "1"), ("externalId", "N-VP1"), ("firstName", "Ann")]
    assert _shown_form("add_user", form)["firstName"] == REDACTED


def test_sensitive_keys_are_replaced_at_any_depth_and_models_are_dumped() -> None:
    def sensitive(k: str) -> bool:
        return k == "secret"

    value = {"a": [{"secret": "s", "b": ("x", {"secret": None})}], "secret": {"deep": 1}}
    assert redact(value, sensitive) == {
        "a": [{"secret": REDACTED, "b": ["x", {"secret": REDACTED}]}],
        "secret": REDACTED,
    }


def test_keep_empty_leaves_nothing_to_hide_as_it_is() -> None:
    fields = {"email": None, "phone": "", "city": "Nicosia", "country_code": "CY"}
    shown = redact(fields, {"email", "phone", "city"}.__contains__, keep_empty=True)
    assert shown == {"email": None, "phone": "", "city": REDACTED, "country_code": "CY"}


def test_text_is_applied_to_every_other_string_and_depth_is_bounded() -> None:
    assert redact(["ann@x.org", {"k": "ann@x.org"}], bool, text=str.upper) == [
        "ANN@X.ORG",
        {"k": REDACTED},
    ]
    nested: object = {"phone": "+357"}
    for _ in range(3):
        nested = {"inner": nested}
    assert redact(nested, lambda k: False, max_depth=2) == {"inner": {"inner": {"inner": REDACTED}}}
    assert errors.redact("write to ann@example.org") == f"write to {REDACTED}"
