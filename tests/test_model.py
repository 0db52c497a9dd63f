"""Tests of the value types: payment request validation, input parsing, enums."""

from __future__ import annotations

from typing import Any

import pytest

import kplus_fsm
from kplus_fsm import (
    TERMINAL,
    ChargeView,
    CreateError,
    PaymentRequest,
    Status,
    WebhookEvent,
)
from kplus_fsm.exceptions import (
    InvalidInputError,
    InvalidPaymentRequestError,
    KplusFSMError,
    MalformedInputError,
)
from kplus_fsm.testing import charge_json, error_json, webhook_json

GOOD: dict[str, Any] = {
    "payment_id": "order-1",
    "amount": 10_000,
    "return_uri": "https://shop.example/return",
}


def make(**changes: object) -> PaymentRequest:
    """PaymentRequest.create with GOOD fields, some changed."""
    return PaymentRequest.create(**{**GOOD, **changes})


def refused(field: str, **changes: object) -> InvalidPaymentRequestError:
    """Assert that the changed request is refused for ``field``; return the error."""
    with pytest.raises(InvalidPaymentRequestError) as info:
        make(**changes)
    assert info.value.field == field
    return info.value


class TestAmount:
    """amount: an int (not bool, not float) from 2000 to 15,000,000 satang."""

    @pytest.mark.parametrize("amount", [2_000, 2_001, 10_000, 15_000_000])
    def test_in_range_is_accepted(self, amount: int) -> None:
        assert make(amount=amount).amount == amount

    @pytest.mark.parametrize("amount", [1_999, 15_000_001, 0, -2_000])
    def test_out_of_range_is_refused_with_the_limits(self, amount: int) -> None:
        err = refused("amount", amount=amount)
        assert "2000" in err.limit
        assert "15000000" in err.limit
        assert str(amount) in str(err)

    @pytest.mark.parametrize("amount", [True, False, 2000.0, "2000", None, [2000]])
    def test_non_integers_are_refused(self, amount: object) -> None:
        err = refused("amount", amount=amount)
        assert "integer" in err.limit


class TestCurrency:
    """currency: THB in any case, stored upper-case."""

    @pytest.mark.parametrize("currency", ["thb", "THB", "Thb"])
    def test_thb_in_any_case_is_stored_upper(self, currency: str) -> None:
        assert make(currency=currency).currency == "THB"

    def test_default_is_thb(self) -> None:
        assert make().currency == "THB"

    @pytest.mark.parametrize("currency", ["USD", "usd", "", None, 764])
    def test_other_currencies_are_refused(self, currency: object) -> None:
        err = refused("currency", currency=currency)
        assert "THB" in err.limit


class TestPlatformType:
    """platform_type: IOS or ANDROID in any case, or absent."""

    @pytest.mark.parametrize(
        ("given", "stored"), [("ios", "IOS"), ("IOS", "IOS"), ("Android", "ANDROID")]
    )
    def test_known_platforms_are_stored_upper(self, given: str, stored: str) -> None:
        assert make(platform_type=given).platform_type == stored

    def test_absent_is_fine(self) -> None:
        assert make(platform_type=None).platform_type is None
        assert make().platform_type is None

    @pytest.mark.parametrize("given", ["WEB", "web", "", "windows", 1])
    def test_other_platforms_are_refused(self, given: object) -> None:
        err = refused("platform_type", platform_type=given)
        assert "IOS" in err.limit
        assert "ANDROID" in err.limit


class TestReturnUri:
    """return_uri: an absolute URI; http(s) ones need a host."""

    @pytest.mark.parametrize(
        "uri",
        [
            "https://x/y",
            "https://shop.example/return?order=1",
            "http://localhost:8000/cb",
            "myapp://return",
            "com.shop.app:/callback",
        ],
    )
    def test_absolute_uris_are_accepted(self, uri: str) -> None:
        assert make(return_uri=uri).return_uri == uri

    @pytest.mark.parametrize(
        "uri",
        [
            "relative/path",
            "/absolute/path/only",
            "https://",
            "http:///nohost",
            "has space",
            "https://shop.example/a b",
            "https://shop.example/\x00",
            "",
            "1http://x/y",
            "myapp:",
            "https://x/" + "y" * 2048,
            None,
            42,
        ],
    )
    def test_other_values_are_refused(self, uri: object) -> None:
        err = refused("return_uri", return_uri=uri)
        assert "absolute URI" in err.limit


class TestPaymentId:
    """payment_id: 1 to 64 safe characters starting with a letter or digit."""

    @pytest.mark.parametrize("pid", ["a", "A" * 64, "order_1:2.3-x", "7"])
    def test_safe_ids_are_accepted(self, pid: str) -> None:
        assert make(payment_id=pid).payment_id == pid

    @pytest.mark.parametrize(
        "pid", ["a" * 65, "a b", "", "ก", "-abc", ".abc", "abc\n", "a/b", None, 17]
    )
    def test_other_ids_are_refused(self, pid: object) -> None:
        err = refused("payment_id", payment_id=pid)
        assert "64" in err.limit


class TestDescriptionAndMetadata:
    """description length and metadata shape."""

    def test_description_up_to_255_is_accepted(self) -> None:
        assert make(description="d" * 255).description == "d" * 255

    @pytest.mark.parametrize("description", ["d" * 256, 5])
    def test_longer_or_non_string_description_is_refused(self, description: object) -> None:
        err = refused("description", description=description)
        assert "255" in err.limit

    def test_metadata_must_not_carry_payment_id(self) -> None:
        err = refused("metadata", metadata={"payment_id": "x", "cart": 1})
        assert "payment_id" in err.limit

    @pytest.mark.parametrize("metadata", [["a"], "text", {1: "x"}])
    def test_metadata_must_be_an_object_with_string_keys(self, metadata: object) -> None:
        refused("metadata", metadata=metadata)

    def test_metadata_is_normalised_to_json(self) -> None:
        req = make(metadata={"tags": ("a", "b"), "n": {"k": (1, 2.5)}, "ok": None})
        assert req.metadata == {"tags": ["a", "b"], "n": {"k": [1, 2.5]}, "ok": None}
        assert make(metadata={"tags": ["a", "b"], "n": {"k": [1, 2.5]}, "ok": None}) == req

    @pytest.mark.parametrize(
        "value",
        [object(), {1, 2}, b"bytes", float("nan"), float("inf"), {1: "int key"}, [[{2: 3}]]],
        ids=["object", "set", "bytes", "nan", "inf", "int-key", "deep-int-key"],
    )
    def test_metadata_values_must_be_json(self, value: object) -> None:
        err = refused("metadata", metadata={"x": value})
        assert "JSON" in err.limit

    def test_metadata_is_copied(self) -> None:
        given = {"cart": "c1"}
        req = make(metadata=given)
        given["cart"] = "changed"
        assert req.metadata == {"cart": "c1"}


class TestErrors:
    """The refusal is a typed error that is also a ValueError."""

    def test_error_hierarchy(self) -> None:
        err = refused("amount", amount=1)
        assert isinstance(err, ValueError)
        assert isinstance(err, InvalidInputError)
        assert isinstance(err, KplusFSMError)
        assert err.inbox_id is None
        assert str(err).startswith("invalid amount: must be ")

    def test_validate_payment_request_is_the_same_check(self) -> None:
        req = kplus_fsm.validate_payment_request(**{**GOOD, "currency": "thb"})
        assert req == make(currency="THB")
        with pytest.raises(InvalidPaymentRequestError) as info:
            kplus_fsm.validate_payment_request(**{**GOOD, "amount": 15_000_001})
        assert info.value.field == "amount"

    def test_missing_required_field_is_a_type_error(self) -> None:
        with pytest.raises(TypeError):
            kplus_fsm.validate_payment_request(payment_id="p", amount=2000)


class TestChargeParams:
    """charge_params: the POST /charges parameters."""

    def test_payment_id_goes_into_metadata(self) -> None:
        req = make(metadata={"cart": "c1"}, description="two mugs")
        params = req.charge_params()
        assert params["metadata"] == {"cart": "c1", "payment_id": "order-1"}
        assert params["amount"] == 10_000
        assert params["currency"] == "THB"
        assert params["return_uri"] == "https://shop.example/return"
        assert params["description"] == "two mugs"
        assert req.metadata == {"cart": "c1"}

    def test_description_is_left_out_when_absent(self) -> None:
        assert "description" not in make().charge_params()

    def test_to_json_round_trips_through_create(self) -> None:
        req = make(platform_type="ios", metadata={"k": "v"}, description="d")
        assert PaymentRequest.create(**req.to_json()) == req


def _charge(**fields: Any) -> dict[str, Any]:
    """A charge object of order-1 with some top-level fields replaced."""
    return {**charge_json(payment_id="order-1", charge_id="chrg_test_1"), **fields}


class TestChargeViewFromJson:
    """ChargeView.from_json reads charge objects and refuses other shapes."""

    def test_reads_a_charge(self) -> None:
        body = charge_json(payment_id="order-1", charge_id="chrg_test_1", status="failed")
        view = ChargeView.from_json({**body, "currency": "thb"})
        assert view.charge_id == "chrg_test_1"
        assert view.status == "failed"
        assert view.amount == 10_000
        assert view.currency == "THB"
        assert view.livemode is False
        assert view.payment_id == "order-1"
        assert view.failure_code == "payment_rejected"
        assert view.authorize_uri is not None

    def test_no_metadata_means_no_payment_id(self) -> None:
        assert ChargeView.from_json(_charge(metadata=None)).payment_id is None
        assert ChargeView.from_json(charge_json(payment_id=None)).payment_id is None

    def test_unknown_status_is_kept_as_text(self) -> None:
        assert ChargeView.from_json(_charge(status="reversed")).status == "reversed"

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param([_charge()], id="not-a-mapping"),
            pytest.param("charge", id="a-string"),
            pytest.param(None, id="none"),
            pytest.param(_charge(object="source"), id="object-not-charge"),
            pytest.param({k: v for k, v in _charge().items() if k != "object"}, id="no-object"),
            pytest.param(_charge(amount="10000"), id="amount-a-string"),
            pytest.param(_charge(amount=True), id="amount-a-bool"),
            pytest.param(_charge(amount=100.0), id="amount-a-float"),
            pytest.param({k: v for k, v in _charge().items() if k != "status"}, id="no-status"),
            pytest.param(_charge(status=1), id="status-not-a-string"),
            pytest.param({k: v for k, v in _charge().items() if k != "id"}, id="no-id"),
            pytest.param(_charge(metadata="order-1"), id="metadata-not-an-object"),
            pytest.param(_charge(metadata={"payment_id": 7}), id="metadata-pid-not-a-string"),
            pytest.param(_charge(livemode="false"), id="livemode-a-string"),
            pytest.param(_charge(currency=None), id="no-currency"),
        ],
    )
    def test_wrong_shapes_are_malformed(self, body: object) -> None:
        with pytest.raises(MalformedInputError):
            ChargeView.from_json(body)


class TestWebhookEventFromJson:
    """WebhookEvent.from_json reads event envelopes and refuses other shapes."""

    def test_reads_a_charge_event(self) -> None:
        event = WebhookEvent.from_json(webhook_json(_charge(), event_id="evnt_1"))
        assert event.event_id == "evnt_1"
        assert event.key == "charge.complete"
        assert event.livemode is False
        assert event.charge is not None
        assert event.charge.charge_id == "chrg_test_1"

    def test_other_keys_have_no_charge(self) -> None:
        body = webhook_json({"object": "customer", "id": "cust_1"}, key="customer.update")
        event = WebhookEvent.from_json(body)
        assert event.key == "customer.update"
        assert event.charge is None

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param([webhook_json(_charge())], id="not-a-mapping"),
            pytest.param({**webhook_json(_charge()), "object": "charge"}, id="object-not-event"),
            pytest.param({**webhook_json(_charge()), "data": "chrg_test_1"}, id="data-a-string"),
            pytest.param({**webhook_json(_charge()), "data": None}, id="data-missing"),
            pytest.param({**webhook_json(_charge()), "id": None}, id="no-id"),
            pytest.param({**webhook_json(_charge()), "key": 3}, id="key-not-a-string"),
            pytest.param({**webhook_json(_charge()), "livemode": "no"}, id="livemode-a-string"),
            pytest.param(webhook_json(_charge(amount="1")), id="charge-amount-a-string"),
            pytest.param(webhook_json(_charge(metadata=[])), id="charge-metadata-a-list"),
        ],
    )
    def test_wrong_shapes_are_malformed(self, body: object) -> None:
        with pytest.raises(MalformedInputError):
            WebhookEvent.from_json(body)


class TestCreateErrorFromJson:
    """CreateError.from_json reads Omise error objects."""

    def test_reads_an_error(self) -> None:
        err = CreateError.from_json(error_json("invalid_amount", "too small"), http_status=400)
        assert (err.code, err.message, err.http_status) == ("invalid_amount", "too small", 400)

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param("error", id="not-a-mapping"),
            pytest.param({**error_json(), "object": "charge"}, id="object-not-error"),
            pytest.param({**error_json(), "code": None}, id="no-code"),
            pytest.param({**error_json(), "code": 400}, id="code-not-a-string"),
            pytest.param({**error_json(), "message": ["x"]}, id="message-not-a-string"),
        ],
    )
    def test_wrong_shapes_are_malformed(self, body: object) -> None:
        with pytest.raises(MalformedInputError):
            CreateError.from_json(body)


class TestStatus:
    """The Status enum values are the stored strings."""

    def test_values(self) -> None:
        assert {s.value for s in Status} == {
            "created",
            "pending",
            "successful",
            "failed",
            "expired",
        }
        assert [str(s) for s in Status] == [s.value for s in Status]
        assert Status("successful") is Status.SUCCESSFUL

    def test_terminal(self) -> None:
        assert {Status.SUCCESSFUL, Status.FAILED, Status.EXPIRED} == TERMINAL
        assert [s for s in Status if s.is_terminal] == [
            Status.SUCCESSFUL,
            Status.FAILED,
            Status.EXPIRED,
        ]
