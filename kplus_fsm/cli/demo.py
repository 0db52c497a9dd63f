"""
``kplus-fsm demo``, the README's first command: real K PLUS payment scenarios
into a real SQLite log.

- :func:`run_demo` (``kplus-fsm demo``) starts the fake Omise and the webhook
  receiver on loopback and drives everything over real HTTP: the tracker creates
  charges through :class:`~kplus_fsm.adapters.omise.OmiseClient`, the fake sends
  signed webhooks to the receiver, which records them and re-fetches the charge.
- :func:`run_offline_demo` (``kplus-fsm demo --offline``) feeds Omise-shaped
  inputs built by :mod:`kplus_fsm.testing` straight into the tracker: no sockets.

Both need no configuration and no network beyond 127.0.0.1. The fake, the
receiver and the HTTP client are imported by :func:`run_demo` only, so that
adding the command to the group loads none of them.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import cast

import attrs
import click

from .._model import Origin, Payment
from .._store._classify import Access
from .._store._urls import is_postgres, redact, sqlite_path
from .._time import parse_time
from .._tracker import Tracker
from ..exceptions import KplusFSMError, MalformedInputError
from ..testing import FakeClock, charge_json, error_json, webhook_json
from . import _params
from ._open import target
from ._output import EXIT_STORE, fail


@attrs.frozen
class Scenario:
    payment_id: str
    title: str


def run_offline_demo(path: Path, *, say: Callable[[str], None] = print) -> list[Scenario]:
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
        _print_loose(t, first_input, say)
        _print_verdict(t, say)
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_demo(path: Path, *, say: Callable[[str], None] = print) -> list[Scenario]:
    """
    Start the fake Omise and the webhook receiver on 127.0.0.1 and run every
    scenario over real HTTP into the log at ``path``; return them in order.
    """
    # The fake, the receiver and the HTTP client: only for this demo (see the docstring).
    import httpx  # noqa: PLC0415

    from ..adapters.fake import FakeOmise, start_server  # noqa: PLC0415
    from ..adapters.fake import RetryPolicy as DeliveryRetry  # noqa: PLC0415
    from ..adapters.omise import OmiseClient  # noqa: PLC0415
    from ..adapters.omise import RetryPolicy as ReadRetry  # noqa: PLC0415
    from ..adapters.signatures import signature_headers  # noqa: PLC0415
    from ..adapters.webhooks import WebhookIntake, serve  # noqa: PLC0415

    secret_key = f"skey_test_{secrets.token_hex(12)}"
    public_key = f"pkey_test_{secrets.token_hex(12)}"
    webhook_secret = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    receiver_port = _free_port()
    webhook_url = f"http://127.0.0.1:{receiver_port}/webhooks/omise"
    scenarios: list[Scenario] = []
    run = f"demo-{dt.datetime.now(dt.UTC).strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(2)}"
    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(
            FakeOmise(
                secret_key=secret_key,
                public_key=public_key,
                webhook_url=webhook_url,
                webhook_secrets=[webhook_secret],
                retry=DeliveryRetry(max_attempts=3, backoff=0.05, max_backoff=0.2),
            )
        )
        api = stack.enter_context(start_server(fake, host="127.0.0.1", port=0))
        # One world, one clock: the tracker and the receiver read the fake's clock,
        # which the demo moves forward to let the bank time out.
        tracker = stack.enter_context(Tracker(path, clock=fake.now))
        first_input = tracker.store.head()["inbox_id"]
        client = stack.enter_context(
            OmiseClient(
                secret_key=secret_key,
                public_key=public_key,
                base_url=api.url,
                create_timeout=httpx.Timeout(5.0, read=3.0),
                retry=ReadRetry(attempts=2, base_delay=0.05, max_delay=0.2),
            )
        )
        intake = stack.enter_context(
            WebhookIntake(
                tracker,
                client=client,
                secrets=[webhook_secret],
                now=lambda: fake.now().timestamp(),
            )
        )
        stack.enter_context(serve(intake, "127.0.0.1", receiver_port).start())
        browser = stack.enter_context(httpx.Client(timeout=5.0))
        say(f"fake Omise on {api.url}; webhook receiver on {webhook_url}")

        def pay(name: str, title: str, amount: int = 35_000) -> str:
            pid = f"{run}-{name}"
            scenarios.append(Scenario(pid, title))
            tracker.create_charge(
                client,
                payment_id=pid,
                amount=amount,
                currency="THB",
                return_uri="https://shop.example/orders/return",
                platform_type="IOS",
            )
            fake.flush()
            return pid

        def charge_id(pid: str) -> str:
            cid = tracker.get(pid).charge_id
            assert cid is not None
            return cid

        def buyer(pid: str, action: str, failure_code: str | None = None) -> None:
            """The buyer approves or declines on the authorize page (the K PLUS app)."""
            uri = tracker.get(pid).authorize_uri
            assert uri is not None
            form = {"action": action}
            if failure_code is not None:
                form["failure_code"] = failure_code
            browser.post(uri, data=form)
            fake.flush()

        # 1. The happy path; Omise delivers the completion webhook twice.
        pid = pay("paid", "buyer approves in K PLUS; the webhook arrives twice")
        fake.duplicate_next(times=2)
        buyer(pid, "approve")

        # 2. Declined for lack of funds.
        pid = pay("declined", "the buyer's account has insufficient funds")
        buyer(pid, "decline", failure_code="insufficient_fund")

        # 3. Reordered: charge.complete is delivered before charge.create.
        fake.hold_webhooks()
        pid = pay("reordered", "webhooks delivered out of order")
        buyer(pid, "approve")
        fake.release_webhooks("reversed")
        fake.flush()

        # 4. The create times out after Omise made the charge, and the search that
        #    should settle it fails too: reconciliation settles it later.
        fake.inject_fault("POST /charges", "commit_then_drop")
        fake.inject_fault("GET /search", "error", status=503)
        fake.drop_next()  # and its charge.create webhook is lost
        pid = pay("timeout", "the create call is cut off; reconciliation finds the charge")
        tracker.reconcile(client)
        buyer(pid, "approve")

        # 5. The completion webhook is lost; reconciliation reads the charge.
        pid = pay("lost", "the completion webhook never arrives; reconciliation reads it")
        fake.drop_next()
        buyer(pid, "approve")
        tracker.reconcile(client, pending_threshold=dt.timedelta(0))

        # 6. A forged webhook claims success: refused (401), recorded, no change.
        pid = pay("forged", "a forged webhook claims success; later the bank times out")
        forged = charge_json(
            payment_id=pid, charge_id=charge_id(pid), status="successful", amount=35_000
        )
        body = json.dumps(webhook_json(forged)).encode()
        wrong = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        headers = signature_headers(body, [wrong], int(fake.now().timestamp()))
        browser.post(webhook_url, content=body, headers=headers)

        # 7. The buyer never opens K PLUS: after ten minutes the bank gives up and
        #    the charge fails payment_expired (the fake's default expiry model),
        #    and here Omise sends no webhook: reconciliation, past its pending
        #    threshold, reads the charge and ends the payment.
        pay("expired", "the buyer never approves; the bank times out, no webhook")
        fake.set_options(expiry_webhook=False)
        fake.advance_clock(dt.timedelta(minutes=31))
        fake.flush()
        tracker.reconcile(client)
        fake.set_options(expiry_webhook=True)

        # 8. Omise refuses the create outright.
        fake.inject_fault("POST /charges", "error", status=400, code="invalid_charge")
        pay("refused", "Omise refuses the create (a definite failure)")

        for sc in scenarios:
            say("")
            print_payment(tracker, sc.payment_id, title=sc.title, say=say)
        _print_loose(tracker, first_input, say)
        _print_verdict(tracker, say)
    return scenarios


def _print_loose(t: Tracker, first_input: int, say: Callable[[str], None]) -> None:
    loose = [r for r in t.store.iter_inbox(first_input) if r.payment_id is None]
    if loose:
        say("")
        say("== Inputs refused before they could be tied to a payment")
        for row in loose:
            say(
                f"   {row.received_at[11:19]}  in  #{row.id:<4} {row.kind:<32} "
                f"{row.outcome:<9} {row.reason}"
            )


def _print_verdict(t: Tracker, say: Callable[[str], None]) -> None:
    report = t.verify()
    replay = t.replay()
    verdict = "ok" if report.ok else report.problem
    replayed = "no differences" if replay.ok else f"{len(replay.differences)} differences"
    say("")
    say(
        f"Log verified: {verdict} ({report.inbox_rows} inputs, {report.events} events; "
        f"head {report.events_head[:12]}); replay: {replayed}"
    )


@click.command()
@click.option(
    "--db",
    "db",
    default="kplus-demo.db",
    show_default=True,
    metavar="PATH|URL",
    type=_params.DB,
    help="Where to write the demo's event log (appended to if it exists): "
    "a SQLite file or a postgresql:// URL.",
)
@click.option(
    "--offline",
    is_flag=True,
    help="Feed the inputs straight into the tracker: no fake API, no sockets.",
)
def demo(db: str, offline: bool) -> None:
    """
    Run real K PLUS payment scenarios into a SQLite event log and print each
    payment's timeline. Starts the fake Omise and the webhook receiver on
    127.0.0.1 and drives them over real HTTP: a paid charge with a duplicated
    webhook, a decline (insufficient_fund), reordered webhooks, a create cut off
    and settled by reconciliation, a lost webhook, a forged webhook, an expiry,
    and a refused create. Needs no configuration.
    """
    target(db, Access.CREATE)
    # The demo hands the location to Tracker, which takes a path or a URL alike.
    location = db if is_postgres(db) else Path(sqlite_path(db))
    try:
        scenarios = (run_offline_demo if offline else run_demo)(
            cast(Path, location), say=click.echo
        )
    except KplusFSMError as exc:
        fail(str(exc), EXIT_STORE)
    except OSError as exc:
        fail(f"the demo cannot use {redact(db)}: {exc.strerror or exc}", EXIT_STORE)
    where = redact(db) if isinstance(location, str) else str(location.resolve())
    click.echo("")
    click.echo(f"Database: {where}")
    click.echo(f"Inspect a payment:  kplus-fsm show {scenarios[0].payment_id} --db {redact(db)}")
    click.echo(f"Check the log:      kplus-fsm verify --db {redact(db)}")


__all__ = ["Scenario", "demo", "print_payment", "run_demo", "run_offline_demo"]
