"""
The fake Omise's injected faults (``kplus_fsm.adapters.fake._faults``): scripted
API faults in process and over loopback; ``backend_error`` answered 400, before
or after the charge is made.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from fake_support import (
    WithFake,
    WithQuietFake,
    assert_error,
    charge_form,
    create_charge,
    form,
)

from kplus_fsm.adapters.fake import FakeOmise


class TestFaults(WithFake):
    """Scripted API faults, in process and over loopback."""

    @pytest.mark.parametrize(
        ("status", "code"),
        [(429, "too_many_requests"), (500, "internal_error"), (503, "service_unavailable")],
    )
    def test_error_status(self, api: httpx.Client, fake: FakeOmise, status: int, code: str) -> None:
        """An error object with the status; nothing is created; then back to normal."""
        fake.inject_fault("POST /charges", "error", status=status, retry_after=1)
        response = api.post("/charges", data=charge_form())
        assert_error(response, status, code)
        assert response.headers["Retry-After"] == "1"
        assert fake.charges() == []
        assert api.post("/charges", data=charge_form()).status_code == 200

    def test_html_body(self, api: httpx.Client, fake: FakeOmise) -> None:
        """A 502 HTML page instead of JSON."""
        fake.inject_fault("GET /charges/:id", "html")
        charge = create_charge(api)
        response = api.get(f"/charges/{charge['id']}")
        assert response.status_code == 502
        assert response.headers["Content-Type"].startswith("text/html")
        assert "<html>" in response.text
        with pytest.raises(json.JSONDecodeError):
            response.json()
        assert api.get(f"/charges/{charge['id']}").status_code == 200

    def test_truncated_json(self, api: httpx.Client, fake: FakeOmise) -> None:
        """A 200 whose JSON is cut; the request itself took effect."""
        fake.inject_fault("POST /charges", "truncated")
        response = api.post("/charges", data=charge_form())
        assert response.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            response.json()
        assert len(fake.charges()) == 1

    def test_slow(self, api: httpx.Client, fake: FakeOmise) -> None:
        """slow: the answer comes after the delay; beyond the read timeout, ReadTimeout."""
        fake.inject_fault("GET /charges", "slow", delay=0.2)
        started = time.monotonic()
        assert api.get("/charges").status_code == 200
        assert time.monotonic() - started >= 0.19
        fake.inject_fault("POST /charges", "slow", delay=30)
        with pytest.raises(httpx.ReadTimeout):
            api.post("/charges", data=charge_form(), timeout=httpx.Timeout(5.0, read=0.1))
        assert len(fake.charges()) == 1

    @pytest.mark.parametrize(
        ("kind", "error"),
        [
            ("commit_then_error", None),
            ("commit_then_drop", httpx.RemoteProtocolError),
            ("commit_then_timeout", httpx.ReadTimeout),
        ],
    )
    def test_commit_then_fail(
        self, api: httpx.Client, fake: FakeOmise, kind: Any, error: type[Exception] | None
    ) -> None:
        """The charge is created, but the caller sees a failure: look it up by metadata."""
        fake.inject_fault("POST /charges", kind)
        if error is None:
            assert_error(
                api.post("/charges", data=charge_form("pay_unknown")), 500, "internal_error"
            )
        else:
            with pytest.raises(error):
                api.post("/charges", data=charge_form("pay_unknown"))
        found = api.get("/search", params={"scope": "charge", "query": "pay_unknown"}).json()
        assert found["total"] == 1
        assert found["data"][0]["status"] == "pending"

    def test_faults_over_loopback(self, http: httpx.Client, fake: FakeOmise) -> None:
        """On a socket: dropped connections, timeouts, HTML, set through /_fake/faults."""
        added = http.post(
            "/_fake/faults", json={"route": "POST /charges", "kind": "commit_then_drop"}
        )
        assert added.json()["kind"] == "commit_then_drop"
        with pytest.raises(httpx.RemoteProtocolError):
            http.post("/charges", data=charge_form("pay_a"))
        http.post(
            "/_fake/faults",
            data={"route": "POST /charges", "kind": "commit_then_timeout", "delay": "3"},
        )
        with pytest.raises(httpx.ReadTimeout):
            http.post("/charges", data=charge_form("pay_b"), timeout=httpx.Timeout(5.0, read=0.3))
        http.post("/_fake/faults", json={"route": "* /charges/*", "kind": "html", "times": 2})
        page = http.get("/charges/chrg_test_any")
        assert (page.status_code, page.headers["Content-Type"]) == (502, "text/html")
        http.post("/_fake/faults", json={"route": "GET /charges", "kind": "slow", "delay": 0.2})
        started = time.monotonic()
        listed = http.get("/charges").json()
        assert time.monotonic() - started >= 0.19
        assert listed["total"] == 2
        assert http.delete("/_fake/faults").json()["cleared"] == 1
        assert http.get("/charges/chrg_test_any").status_code == 404
        bad = http.post("/_fake/faults", json={"route": "POST /charges", "kind": "meteor"})
        assert_error(bad, 400, "bad_request")


class TestBackendError(WithQuietFake):
    """ "An error occurred communicating with the provider … Please try again" under 400."""

    @pytest.mark.parametrize(("kind", "made"), [("error", 0), ("commit_then_error", 1)])
    def test_on_a_create(
        self, http: httpx.Client, fake: FakeOmise, official: Any, kind: Any, made: int
    ) -> None:
        fake.inject_fault("POST /charges", kind, code="backend_error")
        response = http.post("/charges", data=form("pay-backend"))
        assert response.status_code == 400
        body = response.json()
        assert (body["code"], body["location"]) == (
            "backend_error",
            "https://www.omise.co/api-errors#backend-error",
        )
        assert len(fake.charges()) == made
        fake.inject_fault("POST /charges", kind, code="backend_error")
        with pytest.raises(official.errors.BaseError):
            official.Charge.create(
                amount=150_000,
                currency="thb",
                return_uri="https://shop.example/r",
                source={"type": "mobile_banking_kbank"},
                metadata={"payment_id": "pay-backend-sdk"},
            )
        assert len(fake.charges()) == 2 * made

    def test_over_the_control_route(self, http: httpx.Client, fake: FakeOmise) -> None:
        added = http.post(
            "/_fake/faults",
            json={"route": "POST /charges", "kind": "commit_then_error", "code": "backend_error"},
        )
        assert added.status_code == 200
        assert http.post("/charges", data=form("pay-b2")).status_code == 400
        assert [c["metadata"]["payment_id"] for c in fake.charges()] == ["pay-b2"]
