"""
The offline demo: real scenarios of K PLUS payments fed through the tracker
into a real SQLite log, with Omise-shaped inputs built by :mod:`kplus_fsm.testing`.

It needs no network and no configuration. (When the adapters land, the demo
runs the same scenarios over loopback HTTP against the fake Omise.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
from collections.abc import Callable
from pathlib import Path

import attrs

from ._model import Origin, Payment
from ._tracker import Tracker, parse_time
from .exceptions import MalformedInputError
from .testing import FakeClock, charge_json, error_json, webhook_json


@attrs.frozen
class Scenario:
    payment_id: str
    title: str


def run_demo(path: Path, *, say: Callable[[str], None] = print) -> list[Scenario]:
    """
    Run every scenario into the log at ``path``; return them in order. Payment
    ids carry a run prefix, so running the demo again appends to the same log.
    """
    scenarios: list[Scenario] = []
    charge_ids: dict[str, str] = {}
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    clock = FakeClock(now)
    with Tracker(path, clock=clock) as t:
        first_input = t.store.head()["inbox_id"]
        # Simulated time runs ahead of the wall clock; a second run continues after the first.
        for last in t.store.iter_inbox(max(first_input - 1, 0)):
            clock.set(max(now, parse_time(last.received_at) + dt.timedelta(seconds=1)))
        run = f"demo-{now.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(2)}"

        def new(name: str, title: str, amount: int = 35_000) -> tuple[str, int]:
            pid = f"{run}-{name}"
            scenarios.append(Scenario(pid, title))
            t.request_payment(
                payment_id=pid,
                amount=amount,
                currency="THB",
                return_uri="https://shop.example/orders/return",
                platform_type="IOS",
            )
            clock.advance(seconds=1)
            return pid, amount

        def charge(
            pid: str, amount: int, status: str, failure_code: str | None = None
        ) -> dict[str, object]:
            return charge_json(
                payment_id=pid,
                charge_id=charge_ids.setdefault(pid, f"chrg_test_{secrets.token_hex(10)}"),
                status=status,
                amount=amount,
                failure_code=failure_code,
                created_at=clock(),
            )

        # 1. The happy path: response, webhook hint, re-fetch, a duplicate delivery.
        pid, amount = new("paid", "buyer approves in K PLUS; webhook delivered twice")
        t.record_charge(charge(pid, amount, "pending"), origin=Origin.CREATE_RESPONSE)
        clock.advance(seconds=40)
        hook = webhook_json(charge(pid, amount, "successful"), key="charge.complete")
        t.record_webhook(hook, verification="verified", apply_payload=False)
        t.record_charge(charge(pid, amount, "successful"), origin=Origin.REFETCH)
        clock.advance(seconds=30)
        t.record_webhook(hook, verification="verified", apply_payload=False)

        # 2. Declined for lack of funds.
        pid, amount = new("declined", "buyer's account has insufficient funds")
        t.record_charge(charge(pid, amount, "pending"), origin=Origin.CREATE_RESPONSE)
        clock.advance(seconds=25)
        failed = charge(pid, amount, "failed", failure_code="insufficient_fund")
        t.record_webhook(webhook_json(failed), verification="verified", apply_payload=False)
        t.record_charge(failed, origin=Origin.REFETCH)

        # 3. Never approved: a poll after expires_at finds it expired.
        pid, amount = new("expired", "buyer never opens K PLUS; reconciliation polls")
        t.record_charge(charge(pid, amount, "pending"), origin=Origin.CREATE_RESPONSE)
        clock.advance(minutes=11)
        t.record_charge(charge(pid, amount, "expired"), origin=Origin.POLL)

        # 4. Reordered: the completion webhook beats the create response.
        pid, amount = new("reordered", "webhooks arrive before the API response, out of order")
        done = charge(pid, amount, "successful")
        t.record_webhook(webhook_json(done, key="charge.complete"), verification="unverified")
        t.record_charge(charge(pid, amount, "pending"), origin=Origin.CREATE_RESPONSE)
        t.record_webhook(
            webhook_json(charge(pid, amount, "pending"), key="charge.create"),
            verification="unverified",
        )

        # 5. Forged and broken deliveries: refused, yet recorded with the reason.
        pid, amount = new("forged", "a forged webhook claims a cheaper charge succeeded")
        t.record_charge(charge(pid, amount, "pending"), origin=Origin.CREATE_RESPONSE)
        forged = charge(pid, 100, "successful")
        t.record_webhook(webhook_json(forged), verification="unverified")
        with contextlib.suppress(MalformedInputError):  # recorded as rejected, with the reason
            t.record_webhook(b'{"object": "event", "id": "evnt_test_broken", "key": ')
        clock.advance(minutes=11)
        t.record_charge(charge(pid, amount, "expired"), origin=Origin.POLL)

        # 6. The API times out on create; a search by payment id settles it.
        pid, amount = new("timeout", "the create call times out; reconciliation finds the charge")
        t.record_create_unknown(pid, reason="read timeout after 60 s on POST /charges")
        clock.advance(minutes=2)
        t.record_charge(charge(pid, amount, "pending"), origin=Origin.POLL)
        clock.advance(minutes=1)
        t.record_charge(charge(pid, amount, "successful"), origin=Origin.POLL)

        # 7. Omise refuses the create outright.
        pid, amount = new("refused", "Omise refuses the create (a definite failure)")
        t.record_create_error(
            pid, error_json("invalid_charge", "amount is out of range"), http_status=400
        )

        # 8. Expired, then an authoritative read says successful: a flagged correction.
        pid, amount = new("late", "a charge went from expired to successful")
        t.record_charge(charge(pid, amount, "pending"), origin=Origin.CREATE_RESPONSE)
        clock.advance(minutes=11)
        t.record_charge(charge(pid, amount, "expired"), origin=Origin.POLL)
        clock.advance(minutes=5)
        t.record_charge(charge(pid, amount, "successful"), origin=Origin.REFETCH)

        for sc in scenarios:
            say("")
            print_payment(t, sc.payment_id, title=sc.title, say=say)
        loose = [r for r in t.store.iter_inbox(first_input) if r.payment_id is None]
        if loose:
            say("")
            say("== Inputs refused before they could be tied to a payment")
            for row in loose:
                say(
                    f"   {row.received_at[11:19]}  in  #{row.id:<4} {row.kind:<32} "
                    f"{row.outcome:<9} {row.reason}"
                )
        report = t.verify()
        replay = t.replay()
        say("")
        verdict = "ok" if report.ok else report.problem
        replayed = "no differences" if replay.ok else f"{len(replay.differences)} differences"
        say(
            f"Log verified: {verdict} ({report.inbox_rows} inputs, {report.events} events; "
            f"head {report.events_head[:12]}); replay: {replayed}"
        )
    return scenarios


def print_payment(
    t: Tracker, payment_id: str, *, title: str | None = None, say: Callable[[str], None] = print
) -> None:
    """Print a payment's summary and its timeline, aligned for people."""
    p: Payment = t.get(payment_id)
    head = f"== {p.payment_id}: {p.status.value.upper()}"
    if title:
        head += f"  ({title})"
    say(head)
    details = [f"amount {p.amount / 100:,.2f} {p.currency}", f"charge {p.charge_id or '-'}"]
    if p.failure_code:
        details.append(f"failure {p.failure_code}")
    if p.create_unknown:
        details.append("CREATE OUTCOME UNKNOWN")
    if p.flags:
        details.append("flags " + ",".join(sorted(p.flags)))
    say("   " + "; ".join(details))
    for entry in t.timeline(p.payment_id):
        time = entry.at[11:19]
        if entry.type == "input":
            what = entry.kind
            if entry.origin and entry.origin not in (entry.kind, "merchant"):
                what += f"/{entry.origin}"
            say(f"   {time}  in  #{entry.inbox_id:<4} {what:<32} {entry.outcome:<9} {entry.reason}")
        else:
            say(f"   {time}  ev  @{entry.position:<4} {entry.kind}")
