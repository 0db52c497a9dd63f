"""
The fake Omise account (``kplus_fsm.adapters.fake._account``, ``FakeOmise``):
seeded ids, configuration errors, secrets that never leak, and throttling.
"""

from __future__ import annotations

import base64
import datetime as dt

import httpx
import pytest
from fake_support import (
    BASE,
    PK,
    SK,
    WEBHOOK_SECRET,
    Recorder,
    WithFake,
    WithQuietFake,
    charge_form,
    create_charge,
    make_fake,
)

from kplus_fsm.adapters.fake import (
    FakeOmise,
    FakeOmiseError,
)
from kplus_fsm.testing import FakeClock


class TestHygiene(WithFake):
    """Seeded ids, and secrets that never leak."""

    def test_seeded_ids_are_reproducible(self) -> None:
        """The same seed and the same calls give the same ids."""
        runs = []
        for _ in range(2):
            with (
                make_fake(clock=FakeClock(), seed=7, webhook_receiver=Recorder()) as fake,
                httpx.Client(transport=fake.transport(), base_url=BASE, auth=(SK, "")) as api,
            ):
                charge = create_charge(api)
                fake.flush()
                fake.mark_as_paid(charge["id"])
                other = create_charge(api, "pay_2")
                fake.flush()
                events = [e["id"] for e in fake.events()]
                deliveries = [d.id for d in fake.deliveries()]
                runs.append((charge["id"], other["id"], charge["source"]["id"], events, deliveries))
        assert runs[0] == runs[1]

    def test_configuration_errors(self) -> None:
        """Bad keys or secrets are refused without showing them."""
        with pytest.raises(ValueError) as caught:
            FakeOmise(secret_key=SK, public_key=PK, webhook_secrets=["not base64 %%% " + SK])
        assert SK not in str(caught.value)
        with pytest.raises(ValueError):
            FakeOmise(secret_key=SK, public_key=SK)
        with pytest.raises(TypeError):
            FakeOmise(secret_key=SK, public_key=PK, webhook_secrets=WEBHOOK_SECRET)
        fake = FakeOmise(secret_key=SK, public_key=PK, clock=lambda: dt.datetime.now(dt.UTC))
        with pytest.raises(TypeError):
            fake.advance_clock(1)
        with pytest.raises(ValueError):
            fake.inject_fault("charges", "error")
        with pytest.raises(ValueError):
            fake.inject_fault("POST /charges", "meteor")  # type: ignore[arg-type]
        fake.close()

    def test_secrets_never_appear(self, fake: FakeOmise, recorder: Recorder) -> None:
        """No response, header, webhook, record, repr or error text shows a key or secret."""
        seen: list[httpx.Response] = []

        def spy(request: httpx.Request) -> httpx.Response:
            response = fake.handle(request)
            response.read()
            seen.append(response)
            return response

        transport = httpx.MockTransport(spy)
        with (
            httpx.Client(transport=transport, base_url=BASE, auth=(SK, "")) as api,
            httpx.Client(transport=transport, base_url=BASE, auth=(PK, "")) as public,
            httpx.Client(transport=transport, base_url=BASE) as anonymous,
        ):
            source = public.post(
                "/sources",
                data={"amount": "2000", "currency": "THB", "type": "mobile_banking_kbank"},
            ).json()
            public.get(f"/sources/{source['id']}")
            public.post("/charges", data=charge_form())
            anonymous.get("/charges")
            api.get("/charges", auth=(SK + "x", ""))
            charge = create_charge(api)
            api.post("/charges", data=charge_form(amount="1"))
            api.get(f"/charges/{charge['id']}/events")
            api.get("/search", params={"scope": "charge", "query": "pay_1"})
            api.get(charge["authorize_uri"])
            api.post(charge["authorize_uri"], data={"action": "approve"})
            api.post("/_fake/clock/advance", json={"seconds": 1})
            api.post("/_fake/webhooks/flush")
            api.get("/_fake/webhooks/deliveries")
            fake.inject_fault("GET /charges", "error")
            api.get("/charges")
            for event in fake.events():
                api.get(f"/events/{event['id']}")
        fake.flush()
        secrets = [SK, PK, WEBHOOK_SECRET, base64.b64decode(WEBHOOK_SECRET).decode()]
        texts = [r.text + str(dict(r.headers)) for r in seen]
        texts += [r.content.decode() + str(dict(r.headers)) for r in recorder.requests]
        texts += [repr(fake), repr(fake.deliveries()), repr(fake.events())]
        try:
            fake.mark_as_paid(charge["id"])
        except FakeOmiseError as exc:
            texts.append(str(exc))
        assert len(seen) >= 15
        for text in texts:
            for secret in secrets:
                assert secret not in text


class TestThrottling(WithQuietFake):
    """429 by rate, with Retry-After (an assumption: Omise publishes no numbers)."""

    def test_rate_limit_with_retry_after(self, http: httpx.Client, fake: FakeOmise) -> None:
        fake.set_options(rate_limit=0.01, rate_burst=2)  # one request per 100 s after two
        assert http.get("/charges").status_code == 200
        assert http.get("/charges").status_code == 200
        throttled = http.get("/charges")
        assert throttled.status_code == 429
        assert throttled.json()["code"] == "too_many_requests"
        assert 1 <= int(throttled.headers["Retry-After"]) <= 100
        assert http.get("/_fake/options").status_code == 200  # controls are never throttled
        fake.set_options(retry_after_header=False)
        assert "Retry-After" not in http.get("/charges").headers
        fake.set_options(rate_limit=None)
        assert http.get("/charges").status_code == 200
