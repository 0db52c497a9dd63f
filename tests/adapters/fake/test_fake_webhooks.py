"""
The fake Omise's webhook deliveries (``kplus_fsm.adapters.fake._webhooks``):
signed, in the background, retried, the delivery controls; bodies
pretty-printed as Omise's recorded deliveries.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
from fake_support import (
    BASE,
    FAST,
    FIXTURES,
    OLD_WEBHOOK_SECRET,
    SK,
    WEBHOOK_SECRET,
    Receiver,
    Recorder,
    WithFake,
    WithQuietFake,
    create,
    create_charge,
    free_port,
    in_process,
    make_fake,
    make_quiet,
)

from kplus_fsm.adapters.fake import (
    FakeOmise,
    RetryPolicy,
    WebhookDelivery,
)
from kplus_fsm.adapters.fake._objects import pretty_json_bytes
from kplus_fsm.adapters.signatures import verify_signature
from kplus_fsm.testing import FakeClock


class TestWebhooks(WithFake):
    """Deliveries: signed, in the background, retried, and the controls."""

    def test_deliveries_are_signed(
        self, api: httpx.Client, fake: FakeOmise, recorder: Recorder, clock: FakeClock
    ) -> None:
        """Omise-Signature verifies with adapters.signatures over the raw body."""
        create_charge(api)
        fake.flush()
        [request] = recorder.requests
        assert request.headers["Content-Type"] == "application/json"
        assert request.method == "POST"
        check = verify_signature(
            request.content, dict(request.headers), [WEBHOOK_SECRET], now=clock().timestamp()
        )
        assert check.ok, check.reason
        tampered = verify_signature(
            request.content + b" ", dict(request.headers), [WEBHOOK_SECRET], now=clock().timestamp()
        )
        assert not tampered.ok

    def test_rotation_signs_with_every_secret(self, clock: FakeClock) -> None:
        """During a rotation each secret alone verifies the delivery."""
        recorder = Recorder()
        with (
            make_fake(
                clock=clock,
                webhook_receiver=recorder,
                webhook_secrets=[WEBHOOK_SECRET, OLD_WEBHOOK_SECRET],
            ) as fake,
            httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
        ):
            create_charge(api)
            fake.flush()
        [request] = recorder.requests
        assert request.headers["Omise-Signature"].count(",") == 1
        for secret in (WEBHOOK_SECRET, OLD_WEBHOOK_SECRET):
            now = clock().timestamp()
            assert verify_signature(request.content, dict(request.headers), [secret], now=now).ok

    def test_unsigned_without_a_secret(self, clock: FakeClock) -> None:
        """No webhook secret configured: no signature headers."""
        recorder = Recorder()
        with (
            make_fake(clock=clock, webhook_receiver=recorder, webhook_secrets=[]) as fake,
            httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
        ):
            create_charge(api)
            fake.flush()
        assert "Omise-Signature" not in recorder.requests[0].headers

    def test_retries_with_backoff_until_the_receiver_is_up(self, clock: FakeClock) -> None:
        """Connection error, then 503, then 200: three attempts, all visible."""
        recorder = Recorder([httpx.ConnectError("connection refused"), 503, 200])
        with (
            make_fake(clock=clock, webhook_receiver=recorder) as fake,
            httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
        ):
            charge = create_charge(api)
            fake.flush()
            shown = self._check_attempts(fake, recorder, api, charge)
        assert len({d["id"] for d in shown}) == 3

    @staticmethod
    def _check_attempts(
        fake: FakeOmise, recorder: Recorder, api: httpx.Client, charge: dict[str, Any]
    ) -> list[dict[str, Any]]:
        records = fake.deliveries()
        assert [(r.attempt, r.status) for r in records] == [(1, None), (2, 503), (3, 200)]
        assert records[0].error is not None
        assert "ConnectError" in records[0].error
        assert records[1].error is not None
        assert records[2].error is None
        assert records[2].ok
        assert all(isinstance(r, WebhookDelivery) for r in records)
        gaps = [b - a for a, b in zip(recorder.times, recorder.times[1:], strict=False)]
        assert gaps[0] >= 0.015
        assert gaps[1] >= 0.035
        event_id = fake.events(charge["id"])[0]["id"]
        shown: list[dict[str, Any]] = api.get(f"/events/{event_id}").json()["webhook_deliveries"]
        assert [d["status"] for d in shown] == [None, 503, 200]
        return shown

    def test_retries_are_bounded(self, clock: FakeClock) -> None:
        """A receiver that never recovers gets max_attempts attempts."""
        recorder = Recorder([500] * 10)
        with (
            make_fake(clock=clock, webhook_receiver=recorder) as fake,
            httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
        ):
            create_charge(api)
            fake.flush()
            assert [r.status for r in fake.deliveries()] == [500] * FAST.max_attempts

    def test_the_api_answers_while_the_receiver_hangs(
        self, api: httpx.Client, fake: FakeOmise, recorder: Recorder
    ) -> None:
        """Deliveries run in the background: API calls do not wait for them."""
        recorder.gate = threading.Event()
        started = time.monotonic()
        charge = create_charge(api)
        api.post(f"/charges/{charge['id']}/mark_as_paid")
        assert time.monotonic() - started < 1.0
        assert not fake.wait_idle(0.05)
        recorder.gate.set()
        fake.flush()
        assert len(recorder.requests) == 2

    def test_receiver_down_then_up_over_loopback(self, clock: FakeClock) -> None:
        """A real URL: refused at first, then a receiver starts on that port."""
        port = free_port()
        retry = RetryPolicy(max_attempts=20, backoff=0.1, factor=1.0)
        with (
            make_fake(
                clock=clock, webhook_url=f"http://127.0.0.1:{port}/hook", retry=retry
            ) as fake,
            httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
        ):
            started = time.monotonic()
            create_charge(api)
            assert time.monotonic() - started < 1.0
            deadline = time.monotonic() + 5
            while not fake.deliveries() and time.monotonic() < deadline:
                time.sleep(0.01)
            first = fake.deliveries()[0]
            assert (first.status, first.uri) == (None, f"http://127.0.0.1:{port}/hook")
            receiver = Receiver(port)
            try:
                fake.flush(5)
            finally:
                receiver.close()
            records = fake.deliveries()
            assert records[-1].status == 200
            assert all(r.status is None for r in records[:-1])
            assert receiver.events[0]["key"] == "charge.create"
            headers, body = receiver.received[0]
            check = verify_signature(body, headers, [WEBHOOK_SECRET], now=clock().timestamp())
            assert check.ok

    def test_duplicate(self, api: httpx.Client, fake: FakeOmise, recorder: Recorder) -> None:
        """duplicate_next: the same event delivered N times."""
        fake.duplicate_next(3)
        charge = create_charge(api)
        api.post(f"/charges/{charge['id']}/mark_as_paid")
        fake.flush()
        keys = [e["key"] for e in recorder.events]
        assert keys == ["charge.create"] * 3 + ["charge.complete"]
        assert len({e["id"] for e in recorder.events[:3]}) == 1
        assert [r.copy for r in fake.deliveries()][:3] == [1, 2, 3]

    def test_hold_and_release_reversed(
        self, api: httpx.Client, fake: FakeOmise, recorder: Recorder
    ) -> None:
        """hold_webhooks parks deliveries; release in reversed or a chosen order."""
        fake.hold_webhooks()
        charge = create_charge(api)
        api.post(f"/charges/{charge['id']}/mark_as_paid")
        assert fake.wait_idle(0.5)  # parked deliveries do not count
        assert recorder.requests == []
        held = fake.held_webhooks()
        assert len(held) == 2
        assert fake.release_webhooks("reversed") == held[::-1]
        fake.flush()
        assert [e["key"] for e in recorder.events] == ["charge.complete", "charge.create"]
        fake.hold_webhooks()
        other = create_charge(api, "pay_2")
        api.post(f"/charges/{other['id']}/mark_as_failed")
        create_id, complete_id = fake.held_webhooks()
        fake.release_webhooks([complete_id, create_id])
        fake.flush()
        assert [e["id"] for e in recorder.events[2:]] == [complete_id, create_id]

    def test_drop(self, api: httpx.Client, fake: FakeOmise, recorder: Recorder) -> None:
        """drop_next: the next event is never delivered but stays readable."""
        fake.drop_next(1)
        charge = create_charge(api)
        api.post(f"/charges/{charge['id']}/mark_as_paid")
        fake.flush()
        assert [e["key"] for e in recorder.events] == ["charge.complete"]
        create_event = fake.events(charge["id"])[0]
        assert create_event["key"] == "charge.create"
        assert create_event["webhook_deliveries"] == []

    def test_delay(self, api: httpx.Client, fake: FakeOmise, recorder: Recorder) -> None:
        """delay_next: a later event overtakes the delayed one."""
        fake.delay_next(0.3)
        started = time.monotonic()
        charge = create_charge(api)
        api.post(f"/charges/{charge['id']}/mark_as_paid")
        fake.flush()
        assert [e["key"] for e in recorder.events] == ["charge.complete", "charge.create"]
        assert recorder.times[1] - started >= 0.29


class TestWebhookBodies(WithQuietFake):
    """Pretty-printed as Omise's recorded delivery; charge.update on PATCH."""

    def test_the_printer_rewrites_the_recorded_payload_byte_for_byte(self) -> None:
        event = json.loads((FIXTURES / "omise-php" / "event-get.json").read_text())
        payload = event["webhook_deliveries"][0]["payload"]
        assert pretty_json_bytes(json.loads(payload)).decode() == payload

    def test_the_printer_leaves_strings_alone(self) -> None:
        """Only structural empty arrays are spread over three lines; strings never change."""
        tricky = {"a": [], "b": {"c": [[], [1, []]], "d": "x: []", "e": "[]", "f": 'q": []'}}
        text = pretty_json_bytes(tricky).decode()
        assert json.loads(text) == tricky
        assert text.count("[\n\n") == 3
        assert '"d": "x: []",' in text
        assert '"e": "[]",' in text

    def test_deliveries_are_pretty_and_keyed_as_recorded(self, clock: FakeClock) -> None:
        bodies: list[bytes] = []

        def receive(request: httpx.Request) -> httpx.Response:
            bodies.append(request.read())
            return httpx.Response(200)

        with (
            make_quiet(clock, webhook_receiver=receive, webhook_secrets=[WEBHOOK_SECRET]) as fake,
            in_process(fake) as api,
        ):
            create(api, "pay-pretty")
            fake.flush()
        recorded = json.loads((FIXTURES / "omise-php" / "event-get.json").read_text())
        recorded_payload = recorded["webhook_deliveries"][0]["payload"]
        [body] = bodies
        text = body.decode()
        assert text.startswith('{\n  "object": "event",\n')
        assert '"webhook_deliveries": [\n\n  ],' in text
        assert text.endswith("\n}\n")
        assert list(json.loads(text)) == list(json.loads(recorded_payload))

    def test_charge_update(self, http: httpx.Client, fake: FakeOmise, official: Any) -> None:
        charge = create(http, "pay-update")
        sdk_charge = official.Charge.retrieve(charge["id"])
        sdk_charge.description = "Another description"
        sdk_charge.update()
        updated = http.get(f"/charges/{charge['id']}").json()
        assert updated["description"] == "Another description"
        patched = http.patch(f"/charges/{charge['id']}", json={"metadata": {"note": "x"}}).json()
        assert patched["metadata"] == {"note": "x"}
        keys = [e["key"] for e in fake.events(charge["id"])]
        assert keys == ["charge.create", "charge.update", "charge.update"]
