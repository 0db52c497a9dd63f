"""
The fake Omise on loopback (``kplus_fsm.adapters.fake._server``): the ready
route, the official ``omise`` client, controls over HTTP, concurrent requests
and ``run_server``. Nothing reaches the internet.
"""

from __future__ import annotations

import threading
import time

import httpx
import omise  # type: ignore[import-untyped]
import pytest
from fake_support import (
    PK,
    SK,
    WEBHOOK_SECRET,
    Receiver,
    WithFake,
    assert_error,
    charge_form,
    make_fake,
)

from kplus_fsm.adapters.fake import (
    FakeOmise,
    FakeOmiseServer,
    run_server,
    start_server,
)
from kplus_fsm.testing import FakeClock


class TestOverLoopback(WithFake):
    """The loopback server: ready route, the omise client, HTTP controls, run_server."""

    def test_ready(self, server: FakeOmiseServer) -> None:
        """GET / answers 200 with the ready object, without a key."""
        assert server.url.startswith("http://127.0.0.1:")
        with httpx.Client(trust_env=False) as client:
            response = client.get(server.url + "/")
        assert response.status_code == 200
        assert response.json() == {"object": "fake_omise", "ready": True}
        assert repr(server) == f"<FakeOmiseServer {server.url}>"

    def test_official_omise_client(
        self, server: FakeOmiseServer, fake: FakeOmise, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """omise 0.16 (JSON bodies even on GET, currency 'thb') just works."""
        monkeypatch.setattr(omise, "api_main", server.url)
        monkeypatch.setattr(omise, "api_vault", server.url)
        monkeypatch.setattr(omise, "api_secret", SK)
        monkeypatch.setattr(omise, "api_public", PK)
        # omise.Source uses the secret key; a public-key call goes through the
        # client's own Request with omise.api_public, as its public resources do.
        source = omise.Request(omise.api_public, omise.api_main, omise.api_version).send(
            "post",
            "sources",
            {"amount": 150000, "currency": "thb", "type": "mobile_banking_kbank"},
        )
        assert source["charge_status"] == "unknown"
        charge = omise.Charge.create(
            amount=150000,
            currency="thb",
            source=source["id"],
            return_uri="https://shop.example/return",
            metadata={"payment_id": "pay_omise"},
        )
        assert (charge.status, charge.currency, charge.source.id) == (
            "pending",
            "THB",
            source["id"],
        )
        assert omise.Charge.retrieve(charge.id).amount == 150000
        assert [c.id for c in omise.Charge.list()] == [charge.id]
        assert len(omise.Charge.list()) == 1
        found = omise.Search.execute("charge", query="pay_omise")
        assert [c.id for c in found] == [charge.id]
        with httpx.Client(trust_env=False) as client:
            client.post(f"{server.url}/charges/{charge.id}/mark_as_paid", auth=(SK, ""))
        paid = omise.Charge.retrieve(charge.id)
        assert (paid.status, paid.paid, paid.source.charge_status) == (
            "successful",
            True,
            "successful",
        )
        assert [e.key for e in paid.list_events()] == ["charge.create", "charge.complete"]
        assert omise.Source.retrieve(source["id"]).charge_status == "successful"
        with pytest.raises(omise.errors.NotFoundError):
            omise.Charge.retrieve("chrg_test_missing")
        monkeypatch.setattr(omise, "api_secret", PK)
        with pytest.raises(omise.errors.AuthenticationFailureError):
            omise.Charge.retrieve(charge.id)

    def test_controls_over_http(self, clock: FakeClock) -> None:
        """A separate process can drive the fake through /_fake/ routes."""
        receiver = Receiver()
        try:
            with (
                make_fake(clock=clock, webhook_url=receiver.url) as fake,
                start_server(fake) as server,
                httpx.Client(base_url=server.url, auth=(SK, ""), trust_env=False) as http,
            ):
                assert_error(
                    http.post("/_fake/webhooks/hold", auth=(PK, "")), 401, "authentication_failure"
                )
                assert http.post("/_fake/webhooks/hold").json()["ok"] is True
                first = http.post("/charges", data=charge_form("pay_1")).json()
                second = http.post("/charges", data=charge_form("pay_2")).json()
                released = http.post("/_fake/webhooks/release", json={"order": "reversed"}).json()
                assert len(released["released"]) == 2
                assert http.post("/_fake/webhooks/flush", json={"timeout": 5}).json()["idle"]
                assert [e["data"]["id"] for e in receiver.events] == [second["id"], first["id"]]
                http.post("/_fake/webhooks/duplicate", data={"times": "2"})
                http.post(f"/charges/{first['id']}/mark_as_paid")
                http.post("/_fake/webhooks/drop", json={"events": 1})
                http.post(
                    f"/charges/{second['id']}/mark_as_failed",
                    json={"failure_code": "failed_processing"},
                )
                http.post("/_fake/webhooks/delay", json={"seconds": 0.1})
                third = http.post("/charges", data=charge_form("pay_3")).json()
                advanced = http.post("/_fake/clock/advance", json={"seconds": 601}).json()
                assert advanced["expired"] == [third["id"]]
                assert http.get("/_fake/clock").json()["now"] == advanced["now"]
                assert http.post("/_fake/webhooks/flush").json()["idle"]
                keys = [(e["key"], e["data"]["id"]) for e in receiver.events[2:]]
                assert keys == [
                    ("charge.complete", first["id"]),
                    ("charge.complete", first["id"]),
                    ("charge.complete", third["id"]),
                    ("charge.create", third["id"]),
                ]
                listed = http.get("/_fake/webhooks/deliveries").json()
                assert listed["total"] == 6
                assert {d["object"] for d in listed["data"]} == {"webhook_delivery"}
                one = http.get(
                    "/_fake/webhooks/deliveries", params={"event_id": released["released"][0]}
                )
                assert one.json()["total"] == 1
                assert_error(
                    http.post("/_fake/webhooks/delay", json={"seconds": "soon"}), 400, "bad_request"
                )
        finally:
            receiver.close()

    def test_concurrent_requests(self, server: FakeOmiseServer, fake: FakeOmise) -> None:
        """Threads creating charges at once: no lost or duplicate charge."""
        created: list[str] = []

        def work(n: int) -> None:
            with httpx.Client(base_url=server.url, auth=(SK, ""), trust_env=False) as client:
                for i in range(5):
                    response = client.post("/charges", data=charge_form(f"pay_{n}_{i}"))
                    created.append(response.json()["id"])

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(set(created)) == 20
        assert len(fake.charges()) == 20

    def test_run_server(self, capsys: pytest.CaptureFixture[str]) -> None:
        """run_server serves until stopped and prints one line with the URL, no secret."""
        stop = threading.Event()
        thread = threading.Thread(
            target=run_server,
            args=("127.0.0.1", 0),
            kwargs={
                "secret_key": SK,
                "public_key": PK,
                "webhook_secret": WEBHOOK_SECRET,
                "webhook_url": "http://127.0.0.1:9/unused",
                "stop": stop,
            },
        )
        thread.start()
        try:
            output = ""
            deadline = time.monotonic() + 5
            while "http://" not in output and time.monotonic() < deadline:
                time.sleep(0.02)
                output += capsys.readouterr().out
            [line] = output.splitlines()
            url = line.split()[line.split().index("on") + 1]
            assert url.startswith("http://127.0.0.1:")
            with httpx.Client(trust_env=False) as client:
                assert client.get(url + "/").json()["ready"] is True
                assert client.get(url + "/charges", auth=(SK, "")).json()["total"] == 0
        finally:
            stop.set()
            thread.join(5)
        assert not thread.is_alive()
        for secret in (SK, PK, WEBHOOK_SECRET):
            assert secret not in output
