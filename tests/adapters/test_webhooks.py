"""
Webhook intake (``kplus_fsm.adapters.webhooks``): signatures, recording, dedupe,
re-fetch, store failures, ``intake_from_env``, and the integration examples of
docs/integrations. The HTTP wrappers are tested in ``test_webhook_http.py``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from webhook_support import (
    CID,
    NOW,
    OLD_SECRET,
    OTHER_SECRET,
    PID,
    SECRET,
    SKEY,
    StubAPI,
    WithTracker,
    asgi_call,
    event,
    inbox_rows,
    intake_for,
    last_inbox,
    open_payment,
    signed,
)

from kplus_fsm import Recorded, SQLiteStore, Status, Tracker
from kplus_fsm.adapters.omise import OmiseClient
from kplus_fsm.adapters.webhooks import IntakeResult, WebhookIntake, intake_from_env
from kplus_fsm.exceptions import GatewayUnavailableError, StoreError
from kplus_fsm.testing import charge_json, error_json, webhook_json

ROOT = Path(__file__).resolve().parents[2]


class TestSignatures(WithTracker):
    """Refused deliveries are recorded with their reason and get 400 or 401."""

    def test_valid_signature(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        api.charges[CID] = charge_json(payment_id=PID, charge_id=CID, status="successful")
        body = event("successful")
        result = intake_for(tracker, api).handle(body, signed(body))
        assert result.status == 200
        assert result.outcome == "applied"
        assert result.refetch is not None
        assert result.refetch.status is Status.SUCCESSFUL
        assert tracker.get(PID).status is Status.SUCCESSFUL
        webhook_row = next(r for r in inbox_rows(tracker) if r.id == result.inbox_id)
        assert webhook_row.verification == "verified"
        assert webhook_row.kind == "webhook"

    @pytest.mark.parametrize(
        ("case", "status", "words"),
        [
            ("wrong_secret", 401, "no signature matches"),
            ("tampered", 401, "no signature matches"),
            ("old", 400, "old"),
            ("future", 400, "future"),
            ("no_signature", 400, "missing Omise-Signature"),
            ("no_timestamp", 400, "missing Omise-Signature-Timestamp"),
            ("bad_timestamp", 400, "not Unix seconds"),
        ],
    )
    def test_refused(
        self, tracker: Tracker, api: StubAPI, case: str, status: int, words: str
    ) -> None:
        open_payment(tracker, api)
        body = event("successful")
        headers = signed(body)
        if case == "wrong_secret":
            headers = signed(body, (OTHER_SECRET,))
        elif case == "tampered":
            body = body.replace(b"10000", b"10001")
        elif case == "old":
            headers = signed(body, at=NOW - 301)
        elif case == "future":
            headers = signed(body, at=NOW + 301)
        elif case == "no_signature":
            del headers["Omise-Signature"]
        elif case == "no_timestamp":
            del headers["Omise-Signature-Timestamp"]
        elif case == "bad_timestamp":
            headers["Omise-Signature-Timestamp"] = "yesterday"
        before = len(inbox_rows(tracker))
        # A genuine but stale (or future) delivery is refused only when nothing
        # re-fetches the charge: with a client it is a hint (see the next test).
        client = None if case in ("old", "future") else api
        result = intake_for(tracker, client).handle(body, headers)
        assert result.status == status
        assert result.outcome == "rejected"
        assert words in result.reason
        assert result.refetch is None
        assert api.calls == []
        rows = inbox_rows(tracker)
        assert len(rows) == before + 1
        row = rows[-1]
        assert row.id == result.inbox_id
        assert (row.kind, row.outcome) == ("webhook", "rejected")
        assert words in row.reason
        assert row.verification.startswith("failed: ")
        assert row.raw() == body.decode()
        assert tracker.get(PID).status is Status.PENDING

    @pytest.mark.parametrize("skew", [-301, 301, -86_400 * 3])
    def test_stale_but_signed_is_a_hint_that_is_refetched(
        self, tracker: Tracker, api: StubAPI, skew: int
    ) -> None:
        """Genuine, outside the tolerance, re-fetch on: recorded as a hint, the truth is read."""
        open_payment(tracker, api)
        body = event("successful")  # claims success; the API still says pending
        result = intake_for(tracker, api).handle(body, signed(body, at=NOW + skew))
        assert (result.status, result.outcome) == (200, "applied")
        assert api.calls == [CID]
        assert result.refetch is not None
        assert tracker.get(PID).status is Status.PENDING
        row = next(r for r in inbox_rows(tracker) if r.id == result.inbox_id)
        assert row.verification == "verified_stale"
        assert tracker.unresolved_hints() == []

    def test_stale_and_forged_is_still_refused(self, tracker: Tracker, api: StubAPI) -> None:
        """Outside the tolerance and not signed with the secret: refused as before."""
        open_payment(tracker, api)
        body = event("successful")
        result = intake_for(tracker, api).handle(body, signed(body, (OTHER_SECRET,), at=NOW - 999))
        assert (result.status, result.outcome) == (400, "rejected")
        assert api.calls == []

    def test_within_the_tolerance(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        body = event("pending")
        for at in (NOW - 299, NOW + 299):
            result = intake_for(tracker, api).handle(body, signed(body, at=at))
            assert result.status == 200

    def test_rotation_either_secret_matches(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        intake = intake_for(tracker, api, secrets=(SECRET, OLD_SECRET))
        first = event("pending", event_id="evnt_test_a")
        assert intake.handle(first, signed(first, (OLD_SECRET,))).status == 200
        second = event("pending", event_id="evnt_test_b")
        assert intake.handle(second, signed(second, (SECRET,))).status == 200

    def test_rotation_two_signatures_in_the_header(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        body = event("pending")
        headers = signed(body, (OTHER_SECRET, OLD_SECRET))
        assert "," in headers["Omise-Signature"]
        result = intake_for(tracker, api, secrets=(OLD_SECRET,)).handle(body, headers)
        assert result.status == 200
        assert last_inbox(tracker).verification != "unverified"

    def test_header_names_are_case_insensitive(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        body = event("pending")
        headers = {k.lower(): v for k, v in signed(body).items()}
        assert intake_for(tracker, api).handle(body, headers).status == 200

    def test_monitor_mode_records_the_failure_and_goes_on(
        self, tracker: Tracker, api: StubAPI
    ) -> None:
        open_payment(tracker, api)
        body = event("pending")
        intake = intake_for(tracker, api, require_signature=False)
        result = intake.handle(body, signed(body, (OTHER_SECRET,)))
        assert result.status == 200
        rows = inbox_rows(tracker)
        webhook_row = next(r for r in rows if r.id == result.inbox_id)
        assert webhook_row.verification.startswith("failed: ")

    def test_no_secrets_means_unverified(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        body = event("pending")
        intake = intake_for(tracker, api, secrets=())
        assert not intake.verifies_signatures
        result = intake.handle(body, {})
        assert result.status == 200
        assert next(r for r in inbox_rows(tracker) if r.id == result.inbox_id).verification == (
            "unverified"
        )

    def test_configuration_errors(self, tracker: Tracker) -> None:
        with pytest.raises(ValueError, match="base64"):
            WebhookIntake(tracker, secrets=("not base64!",))
        with pytest.raises(ValueError, match="secret"):
            WebhookIntake(tracker, require_signature=True)
        assert WebhookIntake(tracker, secrets=SECRET).require_signature  # one str is one secret
        assert SECRET not in repr(WebhookIntake(tracker, secrets=(SECRET,)))


class TestRecording(WithTracker):
    """Everything recorded answers 2xx; the state follows the re-fetch."""

    def test_duplicates_are_200_and_not_refetched_again(
        self, tracker: Tracker, api: StubAPI
    ) -> None:
        open_payment(tracker, api)
        intake = intake_for(tracker, api)
        body = event("pending")
        first = intake.handle(body, signed(body))
        second = intake.handle(body, signed(body))
        assert (first.status, second.status) == (200, 200)
        assert second.outcome == "duplicate"
        assert second.refetch is None
        assert api.calls == [CID]
        assert second.inbox_id is not None
        assert second.inbox_id > (first.inbox_id or 0)

    def test_signed_successful_but_api_pending_stays_pending(
        self, tracker: Tracker, api: StubAPI
    ) -> None:
        open_payment(tracker, api)  # the API shows the charge pending
        body = event("successful")
        result = intake_for(tracker, api).handle(body, signed(body))
        assert result.status == 200
        assert last_inbox(tracker).origin == "refetch"
        assert result.refetch is not None
        assert tracker.get(PID).status is Status.PENDING

    def test_without_a_client_the_payload_applies_unverified(self, tracker: Tracker) -> None:
        open_payment(tracker)
        body = event("successful")
        result = intake_for(tracker, None).handle(body, signed(body))
        assert result.status == 200
        assert result.refetch is None
        assert tracker.get(PID).status is Status.SUCCESSFUL

    @pytest.mark.parametrize(
        "failure",
        [
            GatewayUnavailableError("read timeout"),
            RuntimeError("a broken client"),
        ],
    )
    def test_refetch_failure_is_200_and_still_recorded(
        self, tracker: Tracker, api: StubAPI, failure: Exception
    ) -> None:
        open_payment(tracker, api)
        api.fail = failure
        body = event("successful")
        result = intake_for(tracker, api).handle(body, signed(body))
        assert result.status == 200
        assert result.refetch is None
        assert "the follow-up re-fetches it" in result.reason
        assert last_inbox(tracker).id == result.inbox_id
        assert last_inbox(tracker).kind == "webhook"
        assert tracker.get(PID).status is Status.PENDING

    def test_refetch_with_the_real_client(self, tracker: Tracker) -> None:
        open_payment(tracker)
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            if request.url.path == f"/charges/{CID}":
                return httpx.Response(
                    200, json=charge_json(payment_id=PID, charge_id=CID, status="failed")
                )
            return httpx.Response(404, json=error_json("not_found", "no"))

        with OmiseClient(secret_key=SKEY, transport=httpx.MockTransport(handler)) as client:
            body = event("failed")
            result = intake_for(tracker, None, secrets=(SECRET,)).handle(body, signed(body))
            assert tracker.get(PID).status is Status.FAILED  # no client: the payload applied
            other = "order-2"
            other_cid = "chrg_test_5xkplus0000000000002"
            open_payment(tracker, None, pid=other, cid=other_cid)
            body = event("failed", event_id="evnt_test_2", pid=other, cid=other_cid)
            result = WebhookIntake(tracker, client=client).handle(body, {})
        assert result.status == 200
        assert "re-fetch" in result.reason
        assert result.refetch is None  # 404 not_found: the re-fetch failed
        assert seen[-1].url.path == f"/charges/{other_cid}"
        assert tracker.get(other).status is Status.PENDING

    def test_refetched_object_that_is_not_a_charge(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        api.charges[CID] = {"object": "refund", "id": CID}
        body = event("successful")
        result = intake_for(tracker, api).handle(body, signed(body))
        assert result.status == 200
        assert "the follow-up re-fetches it" in result.reason

    @pytest.mark.parametrize(
        "body",
        [b"{not json", b"", b"[]", b'{"object": "charge"}', b'{"object": "event", "id": 5}'],
    )
    def test_malformed_body_is_400_and_recorded(
        self, tracker: Tracker, api: StubAPI, body: bytes
    ) -> None:
        result = intake_for(tracker, api).handle(body, signed(body))
        assert result.status == 400
        assert result.outcome == "rejected"
        assert result.inbox_id is not None
        row = last_inbox(tracker)
        assert row.id == result.inbox_id
        assert row.outcome == "rejected"
        assert row.verification == "verified"
        assert api.calls == []

    def test_unknown_payment_is_200_without_refetch(self, tracker: Tracker, api: StubAPI) -> None:
        body = event("successful", pid="order-unknown", cid="chrg_test_unknown")
        result = intake_for(tracker, api).handle(body, signed(body))
        assert result.status == 200
        assert result.outcome == "rejected"
        assert api.calls == []

    def test_non_charge_event_is_200(self, tracker: Tracker, api: StubAPI) -> None:
        envelope = {
            "object": "event",
            "id": "evnt_test_c",
            "key": "customer.create",
            "livemode": False,
            "data": {"object": "customer", "id": "cust_test_1"},
        }
        body = json.dumps(envelope).encode()
        result = intake_for(tracker, api).handle(body, signed(body))
        assert result.status == 200
        assert api.calls == []

    def test_mismatched_payload_is_200(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        charge = charge_json(payment_id=PID, charge_id=CID, status="successful", amount=99_999)
        body = json.dumps(webhook_json(charge)).encode()
        result = intake_for(tracker, api).handle(body, signed(body))
        assert result.status == 200
        assert result.outcome == "rejected"
        assert tracker.get(PID).status is Status.PENDING

    def test_headers_are_recorded_without_secrets(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        body = event("pending")
        headers = {**signed(body), "Authorization": "Basic c2VjcmV0", "Cookie": "sid=1"}
        result = intake_for(tracker, api).handle(body, headers)
        row = next(r for r in inbox_rows(tracker) if r.id == result.inbox_id)
        stored = json.loads(row.headers or "{}")
        assert "omise-signature" in stored
        assert "authorization" not in stored
        assert "cookie" not in stored

    def test_to_json(self) -> None:
        result = IntakeResult(status=200, outcome="applied", reason="ok", inbox_id=3)
        assert result.to_json() == {"outcome": "applied", "reason": "ok", "inbox_id": 3}
        assert result.recorded

    def test_many_threads_share_one_intake(self, tracker: Tracker) -> None:
        open_payment(tracker)
        intake = WebhookIntake(tracker)
        statuses: list[int] = []

        def deliver(n: int) -> None:
            for k in range(5):
                body = event("pending", event_id=f"evnt_test_{n}_{k}")
                statuses.append(intake.handle(body, {}).status)

        threads = [threading.Thread(target=deliver, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 30


class _BrokenStore(SQLiteStore):
    """A store whose writes fail after ``ok`` successful ones."""

    ok = 0

    def record(self, *args: Any, **kwargs: Any) -> Recorded:
        if self.ok <= 0:
            raise StoreError("event log write failed: disk I/O error")
        self.ok -= 1
        return super().record(*args, **kwargs)


class TestStoreFailures(WithTracker):
    """5xx only when nothing could be recorded."""

    def test_nothing_recorded_is_500(self, db_path: Path, api: StubAPI) -> None:
        with Tracker(_BrokenStore(db_path)) as broken:
            intake = intake_for(broken, api)
            body = event("successful")
            result = intake.handle(body, signed(body))
            assert (result.status, result.outcome, result.inbox_id) == (500, None, None)
            refused = intake.handle(body, signed(body, (OTHER_SECRET,)))
            assert refused.status == 500
            oversized = intake.refuse_oversized({}, size=10**9, limit=1024)
            assert (oversized.status, oversized.inbox_id) == (413, None)
            assert api.calls == []

    def test_webhook_recorded_but_refetch_not_is_200(self, db_path: Path, api: StubAPI) -> None:
        store = _BrokenStore(db_path)
        store.ok = 3  # the request, the create response, the webhook
        with Tracker(store) as flaky:
            open_payment(flaky, api)
            body = event("successful")
            result = intake_for(flaky, api).handle(body, signed(body))
        assert result.status == 200
        assert result.inbox_id is not None
        assert "StoreError" in result.reason
        assert api.calls == [CID]


class TestFromEnv(WithTracker):
    """intake_from_env: what `kplus-fsm serve` builds."""

    def test_everything_configured(self, tmp_path: Path) -> None:
        db = tmp_path / "env.db"
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(
                200, json=charge_json(payment_id=PID, charge_id=CID, status="successful")
            )

        env = {
            "KPLUS_FSM_DB": str(db),
            "OMISE_SECRET_KEY": SKEY,
            "OMISE_PUBLIC_KEY": "pkey_test_5xpublic",
            "OMISE_API_URL": "http://fake-omise.test",
            "OMISE_WEBHOOK_SECRET": f"{SECRET}, {OLD_SECRET}",
        }
        intake = intake_from_env(env, transport=httpx.MockTransport(handler))
        with intake:
            assert isinstance(intake.client, OmiseClient)
            assert intake.client.base_url == "http://fake-omise.test"
            assert intake.require_signature
            open_payment(intake.tracker)
            body = event("successful")
            result = intake.handle(body, signed(body, (OLD_SECRET,), at=time.time()))
            assert result.status == 200
            assert intake.tracker.get(PID).status is Status.SUCCESSFUL
        assert str(seen[0].url) == f"http://fake-omise.test/charges/{CID}"
        assert db.exists()
        with pytest.raises(StoreError):
            intake.tracker.find(PID)  # closed with the intake

    def test_nothing_configured(self, tmp_path: Path) -> None:
        db = tmp_path / "bare.db"
        with intake_from_env({}, db=db) as intake:
            assert intake.client is None
            assert not intake.require_signature
            assert intake.handle(b"{}", {}).status == 400
        assert db.exists()

    def test_db_argument_wins(self, tmp_path: Path) -> None:
        with intake_from_env({"KPLUS_FSM_DB": str(tmp_path / "a.db")}, db=tmp_path / "b.db"):
            pass
        assert (tmp_path / "b.db").exists()
        assert not (tmp_path / "a.db").exists()

    def test_bad_secret_opens_nothing(self, tmp_path: Path) -> None:
        db = tmp_path / "never.db"
        with pytest.raises(ValueError, match="base64"):
            intake_from_env({"OMISE_WEBHOOK_SECRET": "!!!"}, db=db)
        assert not db.exists()


# --------------------------------------------------------- integration examples


def _load(name: str) -> ModuleType:
    path = ROOT / "docs" / "integrations" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"kplus_docs_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class TestIntegrationExamples(WithTracker):
    """docs/integrations/*.py work as written."""

    def test_flask(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        app = _load("flask_app").create_app(intake_for(tracker, api))
        client = app.test_client()
        body = event("pending")
        response = client.post("/webhooks/omise", data=body, headers=signed(body))
        assert response.status_code == 200
        assert response.get_json()["outcome"] == "applied"
        forged = client.post("/webhooks/omise", data=body, headers=signed(body, (OTHER_SECRET,)))
        assert forged.status_code == 401
        big = client.post("/webhooks/omise", data=b"x" * (2 << 20))
        assert big.status_code == 413
        assert client.get("/").get_json() == {"ready": True}
        assert api.calls == [CID]

    def test_fastapi(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        app = _load("fastapi_app").create_app(intake_for(tracker, api))
        body = event("pending")
        response = asgi_call(app, "POST", "/webhooks/omise", content=body, headers=signed(body))
        assert response.status_code == 200
        assert response.json()["outcome"] == "applied"
        stale = asgi_call(
            app, "POST", "/webhooks/omise", content=body, headers=signed(body, at=NOW - 3600)
        )
        assert stale.status_code == 200  # genuine, an hour old: a duplicate of a resolved hint
        assert stale.json()["outcome"] == "duplicate"
        forged = asgi_call(
            app,
            "POST",
            "/webhooks/omise",
            content=body,
            headers=signed(body, (OTHER_SECRET,), at=NOW - 3600),
        )
        assert forged.status_code == 400
        big = asgi_call(app, "POST", "/webhooks/omise", content=b"x" * (2 << 20))
        assert big.status_code == 413
        assert asgi_call(app, "GET", "/").json() == {"ready": True}
        assert api.calls == [CID]

    def test_django(self, tracker: Tracker, api: StubAPI) -> None:
        open_payment(tracker, api)
        module = _load("django_app")
        import django  # type: ignore[import-untyped]
        from django.test import Client  # type: ignore[import-untyped]

        django.setup()
        module.set_intake(intake_for(tracker, api))
        client = Client()
        body = event("pending")
        extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in signed(body).items()}
        response = client.post(
            "/webhooks/omise", data=body, content_type="application/json", **extra
        )
        assert response.status_code == 200
        assert response.json()["outcome"] == "applied"
        broken = client.post("/webhooks/omise", data=b"{", content_type="application/json")
        assert broken.status_code == 400  # no signature headers: refused, recorded
        assert client.get("/").json() == {"ready": True}
        assert client.get("/webhooks/omise").status_code == 405
        assert api.calls == [CID]
