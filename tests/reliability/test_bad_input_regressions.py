"""
The inputs the fuzzer (``test_fuzz_intake.py``) found to crash the intake or the
tracker, each pinned as a fast regression test. Before the fixes each raised an
untyped exception (``ValueError``, ``TypeError``, ``UnicodeEncodeError``) out of
``WebhookIntake.handle`` (a 500, the delivery unrecorded) or ``Tracker.record_*``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_support import quiet_structlog

from kplus_fsm import Origin, Tracker
from kplus_fsm.adapters.signatures import sign, verify_signature
from kplus_fsm.adapters.webhooks import WebhookIntake
from kplus_fsm.exceptions import InvalidPaymentRequestError, MalformedInputError
from kplus_fsm.testing import charge_json, webhook_json

SECRET = base64.b64encode(b"regression-webhook-secret-012345").decode()
NOW = 1_790_000_000
SURROGATE_EVENT = (
    b'{"object": "event", "id": "evnt_\\ud800", "key": "charge.complete",'
    b' "data": {"object": "charge", "id": "chrg_\\udfff", "status": "successful",'
    b' "amount": 35000, "currency": "THB", "metadata": {"payment_id": "p-\\udc80"}}}'
)


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Tracker]:
    with quiet_structlog(), Tracker(tmp_path / "regressions.db") as t:
        t.request_payment(payment_id="p-1", amount=35_000, return_uri="https://s.example/r")
        yield t
        assert t.verify().ok
        assert t.replay().ok


def rows(tracker: Tracker) -> int:
    return int(tracker.store.head()["inbox_id"])


@pytest.mark.parametrize(
    ("timestamp", "signature", "status"),
    [
        ("\u00b2", None, 400),  # latin-1 SUPERSCRIPT TWO: isdigit(), yet not int()
        ("\u0661\u0667\u0669" + "0" * 7, None, 400),  # Arabic-Indic digits: int(), not ASCII
        (str(NOW), "\u00e9", 401),  # a non-ASCII "signature": compare_digest raised TypeError
        (str(NOW), "\u00e9," + "00" * 32, 401),
    ],
)
def test_non_ascii_signature_headers_are_refused(
    tracker: Tracker, timestamp: str, signature: str | None, status: int
) -> None:
    body = json.dumps(webhook_json(charge_json(payment_id="p-1"))).encode()
    headers = {
        "Omise-Signature": signature if signature is not None else sign(body, SECRET, NOW),
        "Omise-Signature-Timestamp": timestamp,
    }
    check = verify_signature(body, headers, [SECRET], now=NOW)
    assert not check.ok
    before = rows(tracker)
    answer = WebhookIntake(tracker, secrets=[SECRET], now=lambda: float(NOW)).handle(body, headers)
    assert (answer.status, answer.outcome, answer.inbox_id) == (status, "rejected", before + 1)


@pytest.mark.parametrize("signed", ["unsigned", "signed", "forged"])
def test_lone_surrogate_escapes_in_a_webhook_are_recorded_and_refused(
    tracker: Tracker, signed: str
) -> None:
    """JSON may escape a lone surrogate; UTF-8 (SQLite, the hash chain) cannot hold one."""
    if signed == "unsigned":
        intake, headers = WebhookIntake(tracker), {}
    else:
        intake = WebhookIntake(tracker, secrets=[SECRET], now=lambda: float(NOW))
        signature = sign(SURROGATE_EVENT, SECRET, NOW) if signed == "signed" else "00" * 32
        headers = {"Omise-Signature": signature, "Omise-Signature-Timestamp": str(NOW)}
    before = rows(tracker)
    answer = intake.handle(SURROGATE_EVENT, headers)
    assert answer.status == (401 if signed == "forged" else 400)
    assert (answer.outcome, answer.inbox_id) == ("rejected", before + 1)
    [row] = list(tracker.store.iter_inbox(before))
    assert row.external_id is None  # the claimed id is not text: not kept as an id
    assert row.raw() == SURROGATE_EVENT.decode()  # the body exactly as received


def test_text_bodies_with_lone_surrogates(tracker: Tracker) -> None:
    """A host handing text with lone surrogates to handle() or record_webhook()."""
    before = rows(tracker)
    answer = WebhookIntake(tracker).handle("{\udcff\ud800}", {"X-Odd": "\udcff"})
    assert (answer.status, answer.inbox_id) == (400, before + 1)
    with pytest.raises(MalformedInputError) as raised:
        tracker.record_webhook('{"object": "event", "id": "e\ud800"}', headers={"X": "\ud800"})
    assert raised.value.inbox_id == before + 2
    [_, row] = list(tracker.store.iter_inbox(before))
    assert row.raw() == '{"object": "event", "id": "e\ud800"}'  # kept exactly (as JSON)
    assert row.headers is not None
    assert json.loads(row.headers) == {"x": "\ud800"}


@pytest.mark.parametrize(
    "charge",
    [
        {"\ud800": None},
        charge_json(payment_id="p-1", charge_id="chrg_\ud800"),
        charge_json(payment_id="p-\udfff"),
        charge_json(payment_id="p-1", status="pending\udc80"),
        {**charge_json(payment_id="p-1"), "description": "\ud800 unread, still stored"},
    ],
)
def test_charge_snapshots_with_lone_surrogates(tracker: Tracker, charge: dict[str, object]) -> None:
    before = rows(tracker)
    recorded: int | None
    try:
        recorded = tracker.record_charge(charge, origin=Origin.REFETCH).inbox_id
    except MalformedInputError as exc:  # a read field: malformed, recorded first
        recorded = exc.inbox_id
    # (an unread field: applied or rejected on its merits, the body kept)
    assert recorded == before + 1
    [row] = list(tracker.store.iter_inbox(before))
    assert row.raw() == charge


@pytest.mark.parametrize(
    "field",
    [
        {"description": "\ud800"},
        {"return_uri": "https://s.example/\udfff"},
        {"metadata": {"note": "\ud800"}},
        {"metadata": {"\udc80": 1}},
    ],
)
def test_payment_requests_with_lone_surrogates_are_refused(
    tracker: Tracker, field: dict[str, object]
) -> None:
    before = rows(tracker)
    request = {"payment_id": "p-2", "amount": 35_000, "return_uri": "https://s.example/r", **field}
    with pytest.raises(InvalidPaymentRequestError) as raised:
        tracker.request_payment(**request)
    assert raised.value.inbox_id == before + 1
    assert tracker.find("p-2") is None
