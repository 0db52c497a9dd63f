"""
The fake Omise's switches (``kplus_fsm.adapters.fake._options``): every switch
through the constructor, ``set_options`` and ``/_fake/options``, bad values
refused; the account switches (K PLUS enabled, API version).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import httpx
import pytest
from fake_support import (
    PK,
    SK,
    WithQuietFake,
    form,
)

from kplus_fsm.adapters.fake import (
    FakeOmise,
    FakeOmiseError,
    FakeOptions,
)


class TestOptions(WithQuietFake):
    """Every switch: the constructor, set_options, /_fake/options; bad values refused."""

    def test_defaults(self, http: httpx.Client) -> None:
        assert http.get("/_fake/options").json() == {
            "object": "fake_options",
            "expiry_model": "bank_timeout",
            "charge_lifetime": 7 * 24 * 3600.0,
            "bank_timeout": 600.0,
            "expiry_webhook": True,
            "expire_endpoint": False,
            "search_metadata": True,
            "search_lag": 0.0,
            "kplus_enabled": True,
            "api_version": "2019-05-29",
            "rate_limit": None,
            "rate_burst": 10,
            "retry_after_header": True,
        }

    def test_every_switch_over_http(self, http: httpx.Client, fake: FakeOmise) -> None:
        body = {
            "expiry_model": "lifetime",
            "charge_lifetime": 120,
            "bank_timeout": 60,
            "expiry_webhook": "off",
            "expire_endpoint": "yes",
            "search_metadata": False,
            "search_lag": 2.5,
            "kplus_enabled": "true",
            "api_version": "2017-11-02",
            "rate_limit": 50,
            "rate_burst": 3,
            "retry_after_header": "no",
        }
        answer = http.post("/_fake/options", json=body).json()
        assert answer["charge_lifetime"] == 120.0
        assert fake.options == FakeOptions(
            expiry_model="lifetime",
            charge_lifetime=dt.timedelta(seconds=120),
            bank_timeout=dt.timedelta(seconds=60),
            expiry_webhook=False,
            expire_endpoint=True,
            search_metadata=False,
            search_lag=2.5,
            kplus_enabled=True,
            api_version="2017-11-02",
            rate_limit=50.0,
            rate_burst=3,
            retry_after_header=False,
        )

    @pytest.mark.parametrize(
        "body",
        [
            {"expiry_model": "forever"},
            {"charge_lifetime": 0},
            {"bank_timeout": -1},
            {"search_lag": "soon"},
            {"search_lag": -1},
            {"rate_limit": 0},
            {"rate_burst": 0},
            {"api_version": "yesterday"},
            {"expiry_webhook": "perhaps"},
            {"colour": "red"},
        ],
    )
    def test_bad_switches_change_nothing(
        self, http: httpx.Client, fake: FakeOmise, body: dict[str, Any]
    ) -> None:
        before = fake.options
        refused = http.post("/_fake/options", json=body)
        assert (refused.status_code, refused.json()["code"]) == (400, "bad_request")
        assert fake.options == before

    def test_constructor_and_set_options_refuse_bad_values(self, fake: FakeOmise) -> None:
        for bad in (
            {"expiry_model": "forever"},
            {"charge_lifetime": dt.timedelta(0)},
            {"search_lag": math.inf},
            {"rate_limit": -1.0},
        ):
            with pytest.raises(ValueError):
                FakeOmise(secret_key=SK, public_key=PK, **bad)
            with pytest.raises(ValueError):
                fake.set_options(**bad)
        with pytest.raises(ValueError, match="colour"):
            fake.set_options(colour="red")

    def test_a_refused_control_is_a_fake_error(self, fake: FakeOmise) -> None:
        with pytest.raises(FakeOmiseError) as caught:
            fake.expire("chrg_test_nothing")
        assert (caught.value.status, caught.value.code) == (404, "not_found")


class TestAccount(WithQuietFake):
    """K PLUS not enabled, or an API version before 2017-11-02: service_not_found."""

    def test_kplus_disabled(self, http: httpx.Client, fake: FakeOmise, official: Any) -> None:
        fake.set_options(kplus_enabled=False)
        refused = http.post("/charges", data=form("pay-disabled"))
        assert (refused.status_code, refused.json()["code"]) == (404, "service_not_found")
        source = http.post(
            "/sources", data={"amount": "2000", "currency": "THB", "type": "mobile_banking_kbank"}
        )
        assert source.json()["code"] == "service_not_found"
        with pytest.raises(official.errors.BaseError, match="not enabled"):
            official.Source.create(amount=2000, currency="thb", type="mobile_banking_kbank")
        assert fake.charges() == []

    def test_old_api_version(self, http: httpx.Client, fake: FakeOmise, official: Any) -> None:
        headers = {"Omise-Version": "2015-11-17"}
        refused = http.post("/charges", data=form("pay-old"), headers=headers)
        assert (refused.status_code, refused.json()["code"]) == (404, "service_not_found")
        assert (
            http.post(
                "/charges", data=form("pay-new"), headers={"Omise-Version": "2017-11-02"}
            ).status_code
            == 200
        )
        official.api_version = "2014-07-27"
        with pytest.raises(official.errors.BaseError, match="2017-11-02"):
            official.Charge.create(
                amount=2000,
                currency="thb",
                return_uri="https://r",
                source={"type": "mobile_banking_kbank"},
            )
        fake.set_options(api_version="2015-11-17")  # the account's default, no header
        assert http.post("/charges", data=form("pay-default")).json()["code"] == "service_not_found"
