"""
The fake Omise's objects (``kplus_fsm.adapters.fake._objects``): error objects
as Omise records them (hyphenated ``location`` anchors) and the charge's newer
fields, against the official SDKs' recorded fixtures.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fake_support import (
    FIXTURES,
    WithQuietFake,
    create,
)

from kplus_fsm.adapters.fake import FakeOmise


class TestErrorObjects(WithQuietFake):
    """``location`` anchors use hyphens (omise-go's recorded 404, omise.co's errors page)."""

    def test_not_found_matches_the_recorded_fixture(self, http: httpx.Client) -> None:
        recorded = json.loads((FIXTURES / "omise-go" / "charges-404-get.json").read_text())
        response = http.get("/charges/chrg_test_missing")
        assert response.status_code == 404
        body = response.json()
        assert list(body) == list(recorded)  # the same keys, in the same order
        assert body["code"] == recorded["code"] == "not_found"
        assert body["location"].split("#")[1] == recorded["location"].split("#")[1] == "not-found"
        assert body["location"] == "https://www.omise.co/api-errors#not-found"

    def test_through_the_official_client(
        self, official: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        seen: list[dict[str, Any]] = []
        original = official.errors._raise_from_data

        def spy(data: dict[str, Any]) -> None:
            seen.append(data)
            original(data)

        monkeypatch.setattr(official.errors, "_raise_from_data", spy)
        with pytest.raises(official.errors.NotFoundError):
            official.Charge.retrieve("chrg_test_missing")
        monkeypatch.setattr(official, "api_secret", "skey_test_wrong")
        with pytest.raises(official.errors.AuthenticationFailureError):
            official.Charge.retrieve("chrg_test_missing")
        assert [d["location"] for d in seen] == [
            "https://www.omise.co/api-errors#not-found",
            "https://www.omise.co/api-errors#authentication-failure",
        ]


class TestChargeFields(WithQuietFake):
    """The newer fields of Omise's 2025 recordings."""

    def test_newer_fields(self, http: httpx.Client, fake: FakeOmise) -> None:
        charge = create(http, "pay-fields")
        for field, value in {
            "authorization_type": None,
            "authorized_amount": 150_000,
            "captured_amount": 150_000,
            "linked_account": None,
            "merchant_advice": None,
            "merchant_advice_code": None,
            "authorized_at": None,
            "multi_capture": False,
        }.items():
            assert charge[field] == value, field
        paid = fake.mark_as_paid(charge["id"])
        assert paid["authorized_at"] == paid["paid_at"] is not None
        assert {"qr_settings", "promotion_code"} <= set(charge["source"])
