"""The Omise HTTP client: the wire (httpx.MockTransport) and real loopback HTTP."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from kplus_fsm import ChargeAPI
from kplus_fsm.adapters.omise import (
    CHARGES_CREATED_MAX_PAGES,
    ERROR_CODES,
    OmiseAPIError,
    OmiseClient,
    OmiseConfigurationError,
    OmiseServiceNotFoundError,
    OmiseTimeoutError,
    OmiseTransientError,
    OmiseUnavailableError,
    RetryPolicy,
    error_meaning,
)
from kplus_fsm.exceptions import GatewayError, GatewayRefusedError, GatewayUnavailableError
from kplus_fsm.testing import charge_json, error_json

SKEY = "skey_test_5xsecretsecretsecret01"
PKEY = "pkey_test_5xpublicpublicpublic01"

Handler = Callable[[httpx.Request], httpx.Response]


class Wire:
    """A MockTransport handler that records every request and the sleeps."""

    def __init__(self, *responses: httpx.Response | Exception | Handler) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(item, Exception):
            raise item
        if isinstance(item, httpx.Response):
            return item
        return item(request)

    def client(self, **kwargs: Any) -> OmiseClient:
        kwargs.setdefault("secret_key", SKEY)
        return OmiseClient(transport=httpx.MockTransport(self), sleep=self.sleeps.append, **kwargs)


def ok(obj: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=obj, headers=headers)


def raw(
    body: bytes, status: int, content_type: str = "text/html", **headers: str
) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"content-type": content_type, **headers})


HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


def search_json(*charges: dict[str, Any], page: int = 1, total_pages: int = 1) -> dict[str, Any]:
    return {
        "object": "search",
        "scope": "charge",
        "page": page,
        "per_page": 20,
        "total": len(charges),
        "total_pages": total_pages,
        "data": list(charges),
    }


class TestRequests:
    """What goes on the wire."""

    def test_basic_auth_with_the_secret_key_and_an_empty_password(self) -> None:
        wire = Wire(ok(charge_json(payment_id="p1", charge_id="chrg_test_1")))
        with wire.client() as client:
            client.retrieve_charge("chrg_test_1")
        expected = "Basic " + base64.b64encode(f"{SKEY}:".encode()).decode()
        assert wire.requests[0].headers["authorization"] == expected

    def test_version_user_agent_and_accept(self) -> None:
        wire = Wire(ok(charge_json(payment_id="p1", charge_id="chrg_test_1")))
        with wire.client(api_version="2019-05-29") as client:
            client.retrieve_charge("chrg_test_1")
        request = wire.requests[0]
        assert request.headers["omise-version"] == "2019-05-29"
        assert request.headers["user-agent"].startswith("kplus-fsm/")
        assert request.headers["accept"] == "application/json"
        assert request.method == "GET"
        assert request.url.path == "/charges/chrg_test_1"
        assert request.url.host == "api.omise.co"

    def test_create_charge_posts_json_with_an_inline_source(self) -> None:
        wire = Wire(ok(charge_json(payment_id="p1")))
        params = {
            "amount": 10_000,
            "currency": "THB",
            "return_uri": "https://shop.example/return",
            "metadata": {"payment_id": "p1"},
            "source": {"type": "mobile_banking_kbank", "platform_type": "IOS"},
        }
        with wire.client() as client:
            charge = client.create_charge(params)
        request = wire.requests[0]
        assert charge["object"] == "charge"
        assert request.method == "POST"
        assert request.url.path == "/charges"
        assert request.headers["content-type"] == "application/json"
        assert json.loads(request.content) == params
        assert request.url.query == b""

    def test_create_charge_with_a_source_id(self) -> None:
        wire = Wire(ok(charge_json(payment_id="p1")))
        with wire.client() as client:
            client.create_charge({"amount": 10_000, "currency": "THB", "source": "src_test_1"})
        assert json.loads(wire.requests[0].content)["source"] == "src_test_1"

    def test_create_source_uses_the_public_key_when_set(self) -> None:
        source = {"object": "source", "id": "src_test_1", "type": "mobile_banking_kbank"}
        wire = Wire(ok(source))
        with wire.client(public_key=PKEY) as client:
            client.create_source(amount=10_000, platform_type="ANDROID")
        request = wire.requests[0]
        assert request.headers["authorization"] == (
            "Basic " + base64.b64encode(f"{PKEY}:".encode()).decode()
        )
        assert json.loads(request.content) == {
            "amount": 10_000,
            "currency": "THB",
            "type": "mobile_banking_kbank",
            "platform_type": "ANDROID",
        }

    def test_create_source_falls_back_to_the_secret_key(self) -> None:
        wire = Wire(ok({"object": "source", "id": "src_test_1"}))
        with wire.client() as client:
            client.create_source(amount=10_000)
        assert (
            SKEY in base64.b64decode(wire.requests[0].headers["authorization"].split()[1]).decode()
        )

    def test_retrieve_source_with_only_a_public_key(self) -> None:
        wire = Wire(ok({"object": "source", "id": "src_test_1"}))
        with wire.client(secret_key=None, public_key=PKEY) as client:
            assert client.retrieve_source("src_test_1")["id"] == "src_test_1"
        assert wire.requests[0].url.path == "/sources/src_test_1"

    def test_get_parameters_go_in_the_query_string(self) -> None:
        listing = {"object": "list", "data": [], "offset": 40, "limit": 50, "total": 0}
        wire = Wire(ok(listing))
        with wire.client() as client:
            client.list_charges(
                offset=40,
                limit=50,
                from_=dt.datetime(2026, 1, 1, 7, tzinfo=dt.timezone(dt.timedelta(hours=7))),
                to="2026-01-02T00:00:00Z",
                order="reverse_chronological",
            )
        request = wire.requests[0]
        assert request.content == b""
        assert dict(request.url.params) == {
            "offset": "40",
            "limit": "50",
            "from": "2026-01-01T00:00:00Z",
            "to": "2026-01-02T00:00:00Z",
            "order": "reverse_chronological",
        }

    def test_search_charges(self) -> None:
        wire = Wire(ok(search_json()))
        with wire.client() as client:
            client.search_charges("order-42", page=2, per_page=10, filters={"status": "pending"})
        request = wire.requests[0]
        assert request.url.path == "/search"
        assert dict(request.url.params) == {
            "scope": "charge",
            "query": "order-42",
            "page": "2",
            "per_page": "10",
            "filters[status]": "pending",
        }

    def test_events_endpoints(self) -> None:
        event = {"object": "event", "id": "evnt_test_1", "key": "charge.complete"}
        wire = Wire(ok({"object": "list", "data": [event]}), ok(event))
        with wire.client() as client:
            assert client.list_charge_events("chrg_test_1")["data"][0]["id"] == "evnt_test_1"
            assert client.retrieve_event("evnt_test_1")["key"] == "charge.complete"
        assert [r.url.path for r in wire.requests] == [
            "/charges/chrg_test_1/events",
            "/events/evnt_test_1",
        ]

    def test_ids_cannot_change_the_path(self) -> None:
        wire = Wire(ok(charge_json(payment_id="p1", charge_id="../account")))
        with wire.client() as client:
            client.retrieve_charge("../account")
        assert wire.requests[0].url.raw_path == b"/charges/..%2Faccount"

    def test_base_url_of_a_fake(self) -> None:
        wire = Wire(ok(charge_json(payment_id="p1", charge_id="chrg_test_1")))
        with wire.client(base_url="http://127.0.0.1:9999/") as client:
            client.retrieve_charge("chrg_test_1")
        assert str(wire.requests[0].url) == "http://127.0.0.1:9999/charges/chrg_test_1"

    def test_is_a_charge_api(self) -> None:
        wire = Wire(ok({}))
        with wire.client() as client:
            api: ChargeAPI = client
            assert callable(api.find_charge)


class TestMisuse:
    """Configuration errors are raised before any request."""

    def test_no_secret_key(self) -> None:
        wire = Wire(ok({}))
        with wire.client(secret_key=None) as client, pytest.raises(OmiseConfigurationError):
            client.create_charge({"amount": 10_000})
        assert wire.requests == []

    @pytest.mark.parametrize("bad", ["", "   "])
    def test_empty_ids(self, bad: str) -> None:
        wire = Wire(ok({}))
        with wire.client() as client:
            with pytest.raises(OmiseConfigurationError):
                client.retrieve_charge(bad)
            with pytest.raises(OmiseConfigurationError):
                client.find_charge(bad)
        assert wire.requests == []

    def test_limit_out_of_range(self) -> None:
        with Wire(ok({})).client() as client, pytest.raises(ValueError, match="limit"):
            client.list_charges(limit=101)


class TestErrors:
    """Every answer becomes a charge, an OmiseAPIError or an OmiseUnavailableError."""

    def test_error_object_is_a_definite_refusal(self) -> None:
        wire = Wire(ok(error_json("invalid_charge", "amount must be at least 2000"), status=400))
        with wire.client() as client, pytest.raises(OmiseAPIError) as info:
            client.create_charge({"amount": 1})
        exc = info.value
        assert isinstance(exc, GatewayRefusedError)
        assert (exc.http_status, exc.code, exc.message) == (
            400,
            "invalid_charge",
            "amount must be at least 2000",
        )
        assert exc.location == "https://www.omise.co/api-errors#invalid-charge"
        assert exc.error["code"] == "invalid_charge"
        assert str(exc) == "HTTP 400 invalid_charge: amount must be at least 2000"
        assert (exc.method, exc.path) == ("POST", "/charges")

    def test_not_found_is_not_retried(self) -> None:
        wire = Wire(ok(error_json("not_found", "charge chrg_x was not found"), status=404))
        with wire.client() as client, pytest.raises(OmiseAPIError) as info:
            client.retrieve_charge("chrg_x")
        assert info.value.code == "not_found"
        assert len(wire.requests) == 1

    def test_html_502_is_unavailable_not_a_json_error(self) -> None:
        wire = Wire(raw(HTML_502, 502))
        with (
            wire.client(retry=RetryPolicy(attempts=1)) as client,
            pytest.raises(OmiseUnavailableError) as info,
        ):
            client.retrieve_charge("chrg_x")
        exc = info.value
        assert not isinstance(exc, json.JSONDecodeError)
        assert isinstance(exc, GatewayUnavailableError)
        assert exc.http_status == 502
        assert "not JSON" in str(exc)
        assert "text/html" in str(exc)
        assert exc.__cause__ is None

    @pytest.mark.parametrize(
        "body",
        [
            b'{"object": "charge", "id": "chrg_x", "amou',
            b"",
            b"[1, 2]",
            b'"charge"',
            b'{"object": "refund", "id": "chrg_x"}',
            b"\xff\xfe\x00garbage",
        ],
    )
    def test_a_2xx_that_is_not_a_charge_is_unavailable(self, body: bytes) -> None:
        wire = Wire(raw(body, 200, "application/json"))
        with wire.client() as client, pytest.raises(OmiseUnavailableError) as info:
            client.retrieve_charge("chrg_x")
        assert info.value.http_status == 200
        assert len(wire.requests) == 1  # garbage with a 200 is not retried

    def test_a_create_answered_with_garbage_is_unknown(self) -> None:
        wire = Wire(raw(b'{"object": "charge", "id": "chrg', 200, "application/json"))
        with wire.client() as client, pytest.raises(OmiseUnavailableError):
            client.create_charge({"amount": 10_000})

    def test_another_charge_than_asked_is_unavailable(self) -> None:
        wire = Wire(ok(charge_json(payment_id="p1", charge_id="chrg_other")))
        with wire.client() as client, pytest.raises(OmiseUnavailableError, match="another"):
            client.retrieve_charge("chrg_x")

    def test_5xx_error_object_is_unavailable(self) -> None:
        wire = Wire(ok(error_json("internal_error", "oops"), status=503))
        with (
            wire.client(retry=RetryPolicy(attempts=1)) as client,
            pytest.raises(OmiseUnavailableError) as info,
        ):
            client.retrieve_charge("chrg_x")
        assert info.value.http_status == 503
        assert info.value.error is not None
        assert info.value.error["code"] == "internal_error"

    def test_429_is_unavailable_with_retry_after(self) -> None:
        wire = Wire(
            ok(error_json("too_many_requests", "slow down"), status=429, **{"Retry-After": "7"})
        )
        with wire.client() as client, pytest.raises(OmiseUnavailableError) as info:
            client.create_charge({"amount": 10_000})
        assert (info.value.http_status, info.value.retry_after) == (429, 7.0)
        assert len(wire.requests) == 1

    def test_4xx_without_an_error_object_is_unavailable(self) -> None:
        wire = Wire(raw(b"<h1>Forbidden by proxy</h1>", 403))
        with wire.client() as client, pytest.raises(OmiseUnavailableError) as info:
            client.retrieve_charge("chrg_x")
        assert info.value.http_status == 403

    def test_connect_timeout_is_a_timeout_error(self) -> None:
        wire = Wire(httpx.ConnectTimeout("timed out"))
        with wire.client() as client, pytest.raises(TimeoutError) as info:
            client.retrieve_charge("chrg_x")
        exc = info.value
        assert isinstance(exc, OmiseTimeoutError)
        assert isinstance(exc, GatewayUnavailableError)
        assert exc.http_status is None
        assert "connect timeout" in str(exc)
        assert len(wire.requests) == 3  # a safe read: retried

    def test_connection_error(self) -> None:
        wire = Wire(httpx.ConnectError("connection refused"))
        with (
            wire.client(retry=RetryPolicy(attempts=2)) as client,
            pytest.raises(OmiseUnavailableError) as info,
        ):
            client.retrieve_charge("chrg_x")
        assert not isinstance(info.value, TimeoutError)
        assert "ConnectError" in str(info.value)
        assert len(wire.requests) == 2


class TestRetries:
    """Safe reads only, bounded, with backoff and Retry-After."""

    def test_429_with_retry_after_then_success(self) -> None:
        charge = charge_json(payment_id="p1", charge_id="chrg_x")
        wire = Wire(
            ok(error_json("too_many_requests", "slow"), status=429, **{"Retry-After": "2"}),
            ok(charge),
        )
        with capture_logs() as logs, wire.client() as client:
            assert client.retrieve_charge("chrg_x")["id"] == "chrg_x"
        assert len(wire.requests) == 2
        assert wire.sleeps == [2.0]
        retries = [e for e in logs if e["event"] == "omise_retry"]
        assert len(retries) == 1
        assert retries[0]["log_level"] == "warning"
        assert (retries[0]["status"], retries[0]["attempt"]) == (429, 1)

    def test_retry_after_as_an_http_date(self) -> None:
        when = time.time() + 3
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(when))
        wire = Wire(
            raw(b"busy", 503, **{"Retry-After": date}),
            ok(charge_json(payment_id="p1", charge_id="chrg_x")),
        )
        with wire.client() as client:
            client.retrieve_charge("chrg_x")
        assert len(wire.sleeps) == 1
        assert 0.0 <= wire.sleeps[0] <= 4.0

    def test_a_retry_after_beyond_the_cap_ends_the_retries(self) -> None:
        wire = Wire(raw(b"busy", 503, **{"Retry-After": "3600"}))
        with wire.client() as client, pytest.raises(OmiseUnavailableError) as info:
            client.retrieve_charge("chrg_x")
        assert info.value.retry_after == 3600.0
        assert len(wire.requests) == 1
        assert wire.sleeps == []

    def test_500s_exhaust_the_retries_with_jittered_backoff(self) -> None:
        wire = Wire(raw(b"<h1>500</h1>", 500))
        policy = RetryPolicy(attempts=4, base_delay=0.5, max_delay=1.5)
        with wire.client(retry=policy) as client, pytest.raises(OmiseUnavailableError) as info:
            client.list_charges()
        assert info.value.http_status == 500
        assert len(wire.requests) == 4
        assert len(wire.sleeps) == 3
        for n, slept in enumerate(wire.sleeps, start=1):
            assert 0.0 <= slept <= min(1.5, 0.5 * 2 ** (n - 1))

    @pytest.mark.parametrize(
        "failure",
        [
            raw(b"<h1>500</h1>", 500),
            raw(b"", 503),
            httpx.ReadTimeout("timed out"),
            httpx.ConnectTimeout("timed out"),
            httpx.RemoteProtocolError("peer closed connection"),
        ],
        ids=["500", "503", "read-timeout", "connect-timeout", "reset"],
    )
    def test_a_create_is_never_retried(self, failure: httpx.Response | Exception) -> None:
        wire = Wire(failure, ok(charge_json(payment_id="p1")))
        with wire.client() as client, pytest.raises(OmiseUnavailableError):
            client.create_charge({"amount": 10_000, "metadata": {"payment_id": "p1"}})
        assert len(wire.requests) == 1
        assert wire.sleeps == []

    def test_a_create_source_is_never_retried(self) -> None:
        wire = Wire(raw(b"", 502))
        with wire.client() as client, pytest.raises(OmiseUnavailableError):
            client.create_source(amount=10_000)
        assert len(wire.requests) == 1

    def test_a_read_timeout_on_create_is_a_timeout_error(self) -> None:
        wire = Wire(httpx.ReadTimeout("timed out"))
        with wire.client() as client, pytest.raises(OmiseTimeoutError, match="read timeout"):
            client.create_charge({"amount": 10_000})

    def test_create_uses_the_long_timeout(self) -> None:
        seen: list[dict[str, Any]] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request.extensions["timeout"])
            if request.method == "POST":
                return ok(charge_json(payment_id="p1"))
            return ok(charge_json(payment_id="p1", charge_id="chrg_x"))

        with Wire(handler).client() as client:
            client.create_charge({"amount": 10_000})
            client.retrieve_charge("chrg_x")
        assert seen[0]["read"] == 60.0
        assert seen[1]["read"] == 30.0

    def test_retries_disabled(self) -> None:
        wire = Wire(raw(b"", 502))
        with (
            wire.client(retry=RetryPolicy(attempts=1)) as client,
            pytest.raises(OmiseUnavailableError),
        ):
            client.retrieve_charge("chrg_x")
        assert len(wire.requests) == 1


CALLS: list[Callable[[OmiseClient], object]] = [
    lambda c: c.retrieve_charge("chrg_x"),
    lambda c: c.create_charge({"amount": 10_000}),
    lambda c: c.create_source(amount=10_000),
]


class TestSecrecy:
    """No key in any exception text, repr or log line."""

    def test_repr(self) -> None:
        with Wire(ok({})).client(public_key=PKEY) as client:
            text = repr(client)
        assert SKEY not in text
        assert PKEY not in text
        assert "secret_key=set" in text

    def test_exceptions_and_logs(self) -> None:
        echo = error_json("authentication_failure", f"the key {SKEY} is not valid")
        scenarios: list[httpx.Response | Exception] = [
            ok(echo, status=401),
            raw(HTML_502, 502),
            ok(error_json("bad", f"leaked {SKEY}"), status=500),
            raw(b'{"object": "charge", "id', 200, "application/json"),
            httpx.ConnectTimeout("timed out"),
            httpx.ReadTimeout("timed out"),
            httpx.ConnectError("refused"),
            raw(b"", 429, **{"Retry-After": "1"}),
        ]
        errors: list[BaseException] = []
        with capture_logs() as logs:
            for scenario in scenarios:
                wire = Wire(scenario)
                with wire.client(public_key=PKEY) as client:
                    for call in CALLS:
                        with pytest.raises((OmiseAPIError, OmiseUnavailableError)) as info:
                            call(client)
                        errors.append(info.value)
                        assert f"Basic {base64.b64encode(f'{SKEY}:'.encode()).decode()}" not in str(
                            info.value
                        )
        assert len(errors) == 3 * len(scenarios)
        for exc in errors:
            for text in (str(exc), repr(exc), *map(str, exc.args), str(vars(exc))):
                assert SKEY not in text, text
                assert PKEY not in text, text
                assert "authorization" not in text.lower()
        assert any(isinstance(e, OmiseAPIError) and "[redacted]" in e.message for e in errors)
        assert logs, "expected log lines"
        for entry in logs:
            text = json.dumps(entry, default=str)
            assert SKEY not in text
            assert PKEY not in text
            assert "authorization" not in text.lower()

    def test_one_debug_line_per_request(self) -> None:
        wire = Wire(ok(charge_json(payment_id="p1", charge_id="chrg_x")))
        with capture_logs() as logs, wire.client() as client:
            client.retrieve_charge("chrg_x")
        lines = [e for e in logs if e["event"] == "omise_request"]
        assert len(lines) == 1
        line = lines[0]
        assert line["log_level"] == "debug"
        assert (line["method"], line["path"], line["status"], line["attempt"]) == (
            "GET",
            "/charges/chrg_x",
            200,
            1,
        )
        assert isinstance(line["elapsed_ms"], float)
        assert line["error"] is None
        assert set(line) == {
            "error",
            "event",
            "log_level",
            "method",
            "path",
            "status",
            "attempt",
            "elapsed_ms",
        }


class TestFindCharge:
    """find_charge keeps exact metadata matches only and returns the newest."""

    def test_exact_matches_only_newest_wins(self) -> None:
        older = charge_json(
            payment_id="order-1",
            charge_id="chrg_old",
            created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        )
        newer = charge_json(
            payment_id="order-1",
            charge_id="chrg_new",
            created_at=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
        )
        near = charge_json(
            payment_id="order-10",
            charge_id="chrg_near",
            created_at=dt.datetime(2026, 1, 3, tzinfo=dt.UTC),
        )
        no_meta = charge_json(payment_id=None, charge_id="chrg_none", description="order-1")
        wire = Wire(ok(search_json(near, newer, no_meta, older)))
        with wire.client() as client:
            found = client.find_charge("order-1")
        assert found is not None
        assert found["id"] == "chrg_new"
        params = dict(wire.requests[0].url.params)
        assert (params["scope"], params["query"]) == ("charge", "order-1")

    def test_none_when_nothing_matches_exactly(self) -> None:
        near = charge_json(payment_id="order-10", charge_id="chrg_near")
        with Wire(ok(search_json(near))).client() as client:
            assert client.find_charge("order-1") is None

    def test_pages_are_followed(self) -> None:
        first = charge_json(payment_id="order-10", charge_id="chrg_a")
        second = charge_json(payment_id="order-1", charge_id="chrg_b")
        wire = Wire(
            ok(search_json(first, page=1, total_pages=2)),
            ok(search_json(second, page=2, total_pages=2)),
        )
        with wire.client() as client:
            found = client.find_charge("order-1")
        assert found is not None
        assert found["id"] == "chrg_b"
        assert [r.url.params["page"] for r in wire.requests] == ["1", "2"]

    def test_pages_are_bounded(self) -> None:
        """Ten pages at most; an incomplete scan without a match is no answer, not None."""
        wire = Wire(ok(search_json(page=1, total_pages=1000)))
        with wire.client() as client, pytest.raises(OmiseUnavailableError) as info:
            client.find_charge("order-1")
        assert len(wire.requests) == 10
        assert "incomplete" in str(info.value)

    def test_search_errors_propagate(self) -> None:
        wire = Wire(raw(b"", 502))
        with (
            wire.client(retry=RetryPolicy(attempts=1)) as client,
            pytest.raises(OmiseUnavailableError),
        ):
            client.find_charge("order-1")


# --------------------------------------------------------------- real loopback


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    hits: int
    mode: str

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the reset and truncated modes break connections on purpose


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        self.server.hits += 1
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        mode = self.server.mode
        if mode == "slow":
            time.sleep(0.6)
        if mode == "reset":
            # SO_LINGER with a zero timeout: close() sends a TCP RST.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        body = json.dumps(charge_json(payment_id="p1", charge_id="chrg_x")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if mode == "truncated":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:20])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer


@pytest.fixture
def loopback() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.hits = 0
    server.mode = "ok"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _real_client(server: _Server, **kwargs: Any) -> OmiseClient:
    host, port = server.server_address[:2]
    sleeps: list[float] = []
    return OmiseClient(
        secret_key=SKEY,
        base_url=f"http://{host!s}:{port}",
        sleep=sleeps.append,
        **kwargs,
    )


class TestLoopback:
    """Real HTTP over 127.0.0.1, no mock transport."""

    def test_a_real_round_trip(self, loopback: _Server) -> None:
        with _real_client(loopback) as client:
            assert client.retrieve_charge("chrg_x")["id"] == "chrg_x"
        assert loopback.hits == 1

    def test_a_slow_read_times_out(self, loopback: _Server) -> None:
        loopback.mode = "slow"
        quick = httpx.Timeout(2.0, read=0.15)
        with _real_client(loopback, timeout=quick, retry=RetryPolicy(attempts=1)) as client:
            started = time.monotonic()
            with pytest.raises(OmiseTimeoutError, match="read timeout") as info:
                client.retrieve_charge("chrg_x")
            assert time.monotonic() - started < 0.55
        assert isinstance(info.value, TimeoutError)

    def test_a_slow_create_times_out_once(self, loopback: _Server) -> None:
        loopback.mode = "slow"
        with (
            _real_client(loopback, create_timeout=httpx.Timeout(2.0, read=0.15)) as client,
            pytest.raises(OmiseTimeoutError),
        ):
            client.create_charge({"amount": 10_000})
        time.sleep(0.05)
        assert loopback.hits == 1

    def test_a_connection_reset(self, loopback: _Server) -> None:
        loopback.mode = "reset"
        with (
            _real_client(loopback, retry=RetryPolicy(attempts=2, base_delay=0)) as client,
            pytest.raises(OmiseUnavailableError) as info,
        ):
            client.retrieve_charge("chrg_x")
        assert info.value.http_status is None
        assert not isinstance(info.value, TimeoutError)
        assert loopback.hits == 2

    def test_a_truncated_body(self, loopback: _Server) -> None:
        loopback.mode = "truncated"
        with (
            _real_client(loopback, retry=RetryPolicy(attempts=1)) as client,
            pytest.raises(OmiseUnavailableError),
        ):
            client.retrieve_charge("chrg_x")

    def test_nothing_listening(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        client = OmiseClient(
            secret_key=SKEY, base_url=f"http://127.0.0.1:{port}", retry=RetryPolicy(attempts=1)
        )
        with client, pytest.raises(OmiseUnavailableError) as info:
            client.retrieve_charge("chrg_x")
        assert SKEY not in str(info.value)


# ------------------------------------------------------------ the error table

#: Every documented Omise error code, what it means for a caller, and its HTTP
#: status where documented: written out from the Opn docs' *API errors* page
#: (400 Bad Request: backend_error "Please try again", bad_request, …), the older
#: omise.co errors page, the official SDKs' exception maps and recorded tests.
#: An independent oracle: not derived from ERROR_CODES.
ERROR_ORACLE: dict[str, tuple[int | None, str]] = {
    "authentication_failure": (401, "refused"),
    "backend_error": (400, "retry"),
    "bad_request": (400, "refused"),
    "brand_not_supported": (400, "refused"),
    "documents_locked": (400, "refused"),
    "expired_charge": (400, "refused"),
    "failed_capture": (400, "refused"),
    "failed_expire": (400, "refused"),
    "failed_fraud_check": (400, "refused"),
    "failed_multi_currency": (400, "refused"),
    "failed_refund": (400, "refused"),
    "failed_void": (None, "refused"),
    "invalid_amount": (None, "refused"),
    "invalid_bank_account": (None, "refused"),
    "invalid_card": (None, "refused"),
    "invalid_card_token": (None, "refused"),
    "invalid_charge": (400, "refused"),
    "invalid_filter": (None, "refused"),
    "invalid_filters": (None, "refused"),
    "invalid_link": (None, "refused"),
    "invalid_page": (None, "refused"),
    "invalid_recipient": (None, "refused"),
    "invalid_scope": (None, "refused"),
    "locked_out": (None, "refused"),
    "missing_card": (None, "refused"),
    "not_found": (404, "refused"),
    "service_not_found": (None, "refused"),
    "used_token": (None, "refused"),
}
FIXTURES = Path(__file__).parent.parent / "fixtures" / "omise"


class TestErrorTable:
    """ERROR_CODES against the oracle; each meaning as the client raises it."""

    def test_the_table_matches_the_oracle(self) -> None:
        assert {c: (r.status, r.meaning) for c, r in ERROR_CODES.items()} == ERROR_ORACLE
        assert all(row.code == code and row.source for code, row in ERROR_CODES.items())

    def test_the_docs_table_is_the_same_table(self) -> None:
        """docs/omise-facts.md's error table lists the same codes, statuses and meanings."""
        text = (Path(__file__).parents[2] / "docs" / "omise-facts.md").read_text(encoding="utf-8")
        section = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
        rows = {}
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 4 and cells[0].startswith("`"):
                status = None if cells[1] == "—" else int(cells[1])
                rows[cells[0].strip("`")] = (status, cells[2])
        assert rows == ERROR_ORACLE

    @pytest.mark.parametrize("code", sorted(ERROR_ORACLE))
    def test_each_code_on_a_create(self, code: str) -> None:
        status, meaning = ERROR_ORACLE[code]
        wire = Wire(ok(error_json(code, f"{code} happened"), status=status or 400))
        with wire.client() as client, pytest.raises(GatewayError) as info:
            client.create_charge({"amount": 10_000})
        assert len(wire.requests) == 1  # a create is never retried
        if meaning == "retry":
            assert isinstance(info.value, OmiseTransientError)
            assert isinstance(info.value, GatewayUnavailableError)
        else:
            assert isinstance(info.value, OmiseAPIError)
            assert isinstance(info.value, GatewayRefusedError)
            assert isinstance(info.value, OmiseServiceNotFoundError) is (
                code == "service_not_found"
            )

    @pytest.mark.parametrize(
        ("status", "code", "meaning"),
        [
            (400, "backend_error", "retry"),
            (400, "invalid_charge", "refused"),
            (404, "not_found", "refused"),
            (422, "an_undocumented_code", "refused"),
            (429, "too_many_requests", "retry"),
            (429, "bad_request", "retry"),
            (500, "internal_error", "retry"),
            (503, "invalid_charge", "retry"),
        ],
    )
    def test_error_meaning(self, status: int, code: str, meaning: str) -> None:
        assert error_meaning(status, code) == meaning

    def test_backend_error_on_a_create_is_an_unknown_outcome(self) -> None:
        body = error_json("backend_error", "backend error")
        wire = Wire(ok(body, status=400))
        with wire.client() as client, pytest.raises(OmiseTransientError) as info:
            client.create_charge({"amount": 10_000})
        exc = info.value
        assert (exc.http_status, exc.code, exc.error) == (400, "backend_error", body)
        assert "try again" in str(exc)
        assert (exc.method, exc.path) == ("POST", "/charges")

    def test_backend_error_on_a_read_is_retried_like_a_5xx(self) -> None:
        charge = charge_json(payment_id="order-1", charge_id="chrg_x")
        wire = Wire(ok(error_json("backend_error", "backend error"), status=400), ok(charge))
        with wire.client(retry=RetryPolicy(attempts=3, base_delay=0.01)) as client:
            assert client.retrieve_charge("chrg_x")["id"] == "chrg_x"
        assert len(wire.requests) == 2
        assert len(wire.sleeps) == 1
        always = Wire(ok(error_json("backend_error", "backend error"), status=400))
        with (
            always.client(retry=RetryPolicy(attempts=3, base_delay=0.0)) as client,
            pytest.raises(OmiseTransientError),
        ):
            client.retrieve_charge("chrg_x")
        assert len(always.requests) == 3

    def test_service_not_found_is_a_typed_refusal(self) -> None:
        body = error_json("service_not_found", "service not found")
        wire = Wire(ok(body, status=404))
        with (
            wire.client(public_key=PKEY) as client,
            pytest.raises(OmiseServiceNotFoundError) as info,
        ):
            client.create_source(amount=2_000)
        assert isinstance(info.value, OmiseAPIError)
        assert (info.value.code, info.value.http_status) == ("service_not_found", 404)
        assert "2017-11-02" in (OmiseServiceNotFoundError.__doc__ or "")

    def test_a_recorded_error_body_from_omise_go(self) -> None:
        """omise-go's recorded 404 body becomes an OmiseAPIError field for field."""
        recorded = json.loads((FIXTURES / "omise-go" / "charges-404-get.json").read_text())
        wire = Wire(ok(recorded, status=404))
        with wire.client() as client, pytest.raises(OmiseAPIError) as info:
            client.retrieve_charge("missing")
        exc = info.value
        assert (exc.code, exc.message, exc.location) == (
            recorded["code"],
            recorded["message"],
            recorded["location"],
        )
        assert exc.error == recorded
        assert len(wire.requests) == 1


# ---------------------------------------------------------- charges_created


def list_json(
    charges: list[dict[str, Any]], *, offset: int, total: int, limit: int = 100
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": charges,
        "limit": limit,
        "offset": offset,
        "total": total,
        "order": "chronological",
        "location": "/charges",
        "from": "2026-01-01T00:00:00Z",
        "to": "2026-01-02T00:00:00Z",
    }


def numbered(start: int, count: int) -> list[dict[str, Any]]:
    return [
        charge_json(payment_id=f"p-{n}", charge_id=f"chrg_{n}") for n in range(start, start + count)
    ]


SINCE = dt.datetime(2026, 1, 1, 12, 0, 0, 700_000, tzinfo=dt.UTC)
UNTIL = dt.datetime(2026, 1, 1, 12, 5, 0, 200_000, tzinfo=dt.UTC)


class TestChargesCreated:
    """Every charge created in a window, page after page; never an incomplete scan."""

    def test_pages_offsets_and_parameters(self) -> None:
        wire = Wire(
            ok(list_json(numbered(0, 100), offset=0, total=237)),
            ok(list_json(numbered(100, 100), offset=100, total=237)),
            ok(list_json(numbered(200, 37), offset=200, total=237)),
        )
        with wire.client() as client:
            got = [c["id"] for c in client.charges_created(since=SINCE, until=UNTIL)]
        assert got == [f"chrg_{n}" for n in range(237)]
        params = [dict(r.url.params) for r in wire.requests]
        assert [p["offset"] for p in params] == ["0", "100", "200"]
        for p in params:
            assert (p["limit"], p["order"]) == ("100", "chronological")
            # Rounded outwards to whole seconds: the window never shrinks.
            assert (p["from"], p["to"]) == ("2026-01-01T12:00:00Z", "2026-01-01T12:05:01Z")
        assert all(r.method == "GET" and r.url.path == "/charges" for r in wire.requests)

    def test_lazy_and_empty(self) -> None:
        wire = Wire(ok(list_json([], offset=0, total=0)))
        with wire.client() as client:
            scan = client.charges_created(since=SINCE, until=UNTIL)
            assert wire.requests == []  # nothing is read before iterating
            assert list(scan) == []
        assert len(wire.requests) == 1

    def test_naive_datetimes_are_utc(self) -> None:
        wire = Wire(ok(list_json([], offset=0, total=0)))
        with wire.client() as client:
            list(
                client.charges_created(since=dt.datetime(2026, 1, 1), until=dt.datetime(2026, 1, 2))
            )
        params = dict(wire.requests[0].url.params)
        assert (params["from"], params["to"]) == ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z")

    def test_misuse_is_refused_at_the_call(self) -> None:
        wire = Wire(ok(list_json([], offset=0, total=0)))
        with wire.client() as client, pytest.raises(OmiseConfigurationError):
            client.charges_created(since=UNTIL, until=SINCE)
        with OmiseClient(public_key=PKEY) as keyless, pytest.raises(OmiseConfigurationError):
            keyless.charges_created(since=SINCE, until=UNTIL)
        assert wire.requests == []

    def test_a_window_too_large_is_no_answer(self) -> None:
        wire = Wire(
            ok(list_json(numbered(0, 100), offset=0, total=CHARGES_CREATED_MAX_PAGES * 100 + 1))
        )
        with wire.client() as client:
            scan = client.charges_created(since=SINCE, until=UNTIL)
            with pytest.raises(OmiseUnavailableError, match="incomplete"):
                next(scan)
        assert len(wire.requests) == 1

    def test_a_window_that_keeps_growing_stops_at_the_bound(self) -> None:
        def growing(request: httpx.Request) -> httpx.Response:
            offset = int(request.url.params["offset"])
            return ok(list_json(numbered(offset, 100), offset=offset, total=offset + 150))

        wire = Wire(growing)
        seen: list[dict[str, Any]] = []
        with wire.client() as client, pytest.raises(OmiseUnavailableError, match="incomplete"):
            seen.extend(client.charges_created(since=SINCE, until=UNTIL))
        # Page 50 reports 5,050 charges: more than 50 pages can hold.
        assert len(wire.requests) == CHARGES_CREATED_MAX_PAGES
        assert len(seen) == (CHARGES_CREATED_MAX_PAGES - 1) * 100

    def test_short_pages_stop_at_the_bound(self) -> None:
        """A server that answers 60 per page: 50 pages hold 3,000 of 4,000: incomplete."""

        def capped(request: httpx.Request) -> httpx.Response:
            offset = int(request.url.params["offset"])
            return ok(list_json(numbered(offset, 60), offset=offset, total=4_000, limit=60))

        wire = Wire(capped)
        seen: list[dict[str, Any]] = []
        with wire.client() as client, pytest.raises(OmiseUnavailableError, match="incomplete"):
            seen.extend(client.charges_created(since=SINCE, until=UNTIL))
        assert len(wire.requests) == CHARGES_CREATED_MAX_PAGES
        assert len(seen) == CHARGES_CREATED_MAX_PAGES * 60

    @pytest.mark.parametrize(
        "page",
        [
            {"object": "list", "data": "nope", "total": 1},
            {"object": "list", "data": [], "total": None},
            {"object": "list", "data": [{"object": "refund", "id": "rfnd_1"}], "total": 1},
            {"object": "list", "data": [[1]], "total": 1},
        ],
    )
    def test_malformed_pages_are_no_answer(self, page: dict[str, Any]) -> None:
        with Wire(ok(page)).client() as client, pytest.raises(OmiseUnavailableError):
            list(client.charges_created(since=SINCE, until=UNTIL))

    def test_a_throttled_page_is_retried(self) -> None:
        wire = Wire(
            ok(error_json("too_many_requests", "slow"), status=429, **{"Retry-After": "2"}),
            ok(list_json(numbered(0, 3), offset=0, total=3)),
        )
        with wire.client() as client:
            assert len(list(client.charges_created(since=SINCE, until=UNTIL))) == 3
        assert wire.sleeps == [2.0]
