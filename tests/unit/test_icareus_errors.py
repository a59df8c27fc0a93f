"""The one classification of Icareus outcomes, row by row, as a pure function and through the
client with an in-memory transport (only for answers a real socket test cannot easily make)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr

from icareus_bridge.config import IcareusSettings, RetrySettings
from icareus_bridge.icareus.client import IcareusClient
from icareus_bridge.icareus.errors import (
    EXCERPT_MAX_BYTES,
    AuthIcareusError,
    PermanentIcareusError,
    TransientIcareusError,
    classify,
    from_transport_error,
    parse_retry_after,
    redact,
    response_excerpt,
)


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_status_ok_is_success() -> None:
    outcome = classify("add_user", 200, {}, body(status="ok", userId="7"))
    assert outcome.body["userId"] == "7" and outcome.code is None


@pytest.mark.parametrize(
    ("operation", "code"),
    [
        ("add_user", "USER_EXISTS"),
        ("remove_user", "USER_NOT_FOUND"),
        ("get_user", "USER_NOT_FOUND"),
    ],
)
def test_already_so_answers_are_success(operation: str, code: str) -> None:
    outcome = classify(operation, 200, {}, body(status="error", code=code, userId="7"))
    assert outcome.code == code


@pytest.mark.parametrize(
    ("operation", "code"),
    [
        ("activate_products", "USER_NOT_FOUND"),
        ("add_device", "DEVICE_IN_USE"),
        ("remove_user", "USER_EXISTS"),
    ],
)
def test_other_status_errors_under_http_200_are_permanent(operation: str, code: str) -> None:
    with pytest.raises(PermanentIcareusError) as refused:
        classify(operation, 200, {}, body(status="error", code=code, message="no"))
    assert refused.value.code == code and refused.value.icareus_message == "no"
    assert refused.value.http_status == 200


@pytest.mark.parametrize("operation", ["add_user", "remove_user", "get_user", "add_device"])
@pytest.mark.parametrize("http_status", [200, 400, 401])
def test_invalid_token_is_the_bridges_own_failure_retried_never_a_refusal(
    operation: str, http_status: int
) -> None:
    answer = body(status="error", code="INVALID_TOKEN", message="invalid organization or token")
    with pytest.raises(AuthIcareusError) as refused:
        classify(operation, http_status, {}, answer)
    assert isinstance(refused.value, TransientIcareusError)
    assert not isinstance(refused.value, PermanentIcareusError)
    assert refused.value.reason == "auth" and refused.value.code == "INVALID_TOKEN"
    assert refused.value.http_status == http_status
    assert "INVALID_TOKEN" in refused.value.response_excerpt


@pytest.mark.parametrize("status", [401, 403])
def test_http_401_and_403_refuse_the_bridges_credentials(status: int) -> None:
    with pytest.raises(AuthIcareusError) as refused:
        classify("remove_device", status, {}, b"<html>no</html>")
    assert refused.value.code == f"HTTP_{status}" and refused.value.reason == "auth"


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_http_4xx_other_than_429_is_permanent(status: int) -> None:
    with pytest.raises(PermanentIcareusError) as refused:
        classify("remove_device", status, {}, b"<html>nope</html>")
    assert refused.value.code == f"HTTP_{status}" and refused.value.http_status == status


def test_http_4xx_with_an_icareus_body_keeps_its_code() -> None:
    with pytest.raises(PermanentIcareusError) as refused:
        classify("add_user", 400, {}, body(status="error", code="INVALID_PARAMETER"))
    assert refused.value.code == "INVALID_PARAMETER"


def test_http_429_is_transient_and_keeps_retry_after() -> None:
    with pytest.raises(TransientIcareusError) as throttled:
        classify("add_user", 429, {"Retry-After": "3"}, b"")
    assert throttled.value.reason == "throttled" and throttled.value.retry_after == 3.0


def test_retry_after_may_be_an_http_date() -> None:
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0) == 6.0
    assert parse_retry_after("not a date") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_http_5xx_is_transient_even_with_a_json_body(status: int) -> None:
    with pytest.raises(TransientIcareusError) as failed:
        classify("add_user", status, {}, body(status="error", code="X"))
    assert failed.value.reason == "server_error" and failed.value.http_status == status


@pytest.mark.parametrize("answer", [b"", b"<html>ok</html>", b"[1,2]", body(status="maybe")])
def test_a_body_that_is_not_an_icareus_answer_is_transient(answer: bytes) -> None:
    with pytest.raises(TransientIcareusError) as failed:
        classify("add_user", 200, {}, answer)
    assert failed.value.reason == "bad_body"


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (httpx.ConnectError("refused"), "connect"),
        (httpx.ConnectTimeout("slow connect"), "connect"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (TimeoutError(), "timeout"),
        (httpx.RemoteProtocolError("peer closed"), "reset"),
        (ConnectionResetError(), "reset"),
    ],
)
def test_transport_failures_are_transient(exc: BaseException, reason: str) -> None:
    assert from_transport_error("add_user", exc).reason == reason


def test_personal_data_and_secrets_are_redacted_from_excerpts_and_messages() -> None:
    answer = body(
        status="error",
        code="BAD",
        message="ada@example.com is taken",
        user={"firstName": "Ada", "phoneNumber": "+357", "token": "01abc", "userId": "9"},
    )
    with pytest.raises(PermanentIcareusError) as refused:
        classify("add_user", 200, {}, answer)
    text = str(refused.value) + refused.value.response_excerpt
    for secret in ("ada@example.com", "Ada", "+357", "01abc"):
        assert secret not in text
    assert '"userId":"9"' in refused.value.response_excerpt
    assert redact({"emailAddress": "x@y.z", "n": [{"key": "k"}]}) == {
        "emailAddress": "<redacted>",
        "n": [{"key": "<redacted>"}],
    }


def test_excerpts_are_at_most_one_kib() -> None:
    assert len(response_excerpt(b"x" * 5000).encode()) <= EXCERPT_MAX_BYTES
    assert len(response_excerpt(body(message="é" * 3000)).encode()) <= EXCERPT_MAX_BYTES


# --- through the client, with an in-memory transport --------------------------------------------


def client_with(handler: Callable[[httpx.Request], httpx.Response]) -> IcareusClient:
    settings = IcareusSettings(
        base_url="http://icareus.test/api",
        key=SecretStr("k"),
        retry=RetrySettings(
            max_attempts=3,
            initial_backoff_seconds=0.001,
            max_backoff_seconds=0.002,
            jitter_seconds=0.0,
        ),
    )
    return IcareusClient(settings, transport=httpx.MockTransport(handler))


def test_a_non_json_200_is_retried_and_then_a_transient_failure() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="<html>maintenance</html>")

    async def main() -> None:
        async with client_with(handler) as client:
            await client.remove_user("42", idempotency_key="req-1")

    with pytest.raises(TransientIcareusError) as failed:
        asyncio.run(main())
    assert failed.value.reason == "bad_body" and failed.value.attempts == 3
    assert [r.headers["Idempotency-Key"] for r in seen] == ["req-1"] * 3
    assert seen[0].url.params["action"] == "removeUser"


def test_a_refused_signature_is_retried_and_each_refusal_reported() -> None:
    seen: list[httpx.Request] = []
    refusals: list[AuthIcareusError] = []
    retries: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body(status="error", code="INVALID_TOKEN"))

    async def main() -> None:
        settings = IcareusSettings(
            base_url="http://icareus.test/api",
            key=SecretStr("k"),
            retry=RetrySettings(
                max_attempts=3, initial_backoff_seconds=0.001, max_backoff_seconds=0.002
            ),
        )
        client = IcareusClient(
            settings,
            transport=httpx.MockTransport(handler),
            on_retry=retries.append,
            on_auth_failure=refusals.append,
        )
        async with client:
            await client.remove_user("42", idempotency_key="req-1")

    with pytest.raises(AuthIcareusError) as failed:
        asyncio.run(main())
    assert failed.value.attempts == 3 and len(seen) == 3
    assert len(refusals) == 3 and retries == ["auth", "auth"]
    assert "k" not in {failed.value.message, failed.value.response_excerpt}


def test_add_user_success_without_a_user_id_is_not_accepted() -> None:
    answers = iter([b'{"status":"ok"}', b'{"status":"ok","userId":17}'])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=next(answers))

    async def main() -> str | None:
        async with client_with(handler) as client:
            return (await client.add_user("ACC", idempotency_key="r")).user_id

    assert asyncio.run(main()) == "17"
