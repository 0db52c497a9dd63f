"""
Convergence with no command run by hand (issue 12): whatever crashes, API
faults, search quirks and delivery orders happen, the log ends where Omise is,
driven only by what ``kplus-fsm serve`` runs on its own, the follow-up of
unresolved hints and the periodic reconciler, as the clock moves on.

Each example: up to three payments, each with a way its create goes (an answer,
a 503 before any charge, the answer lost after the charge was made, a
``backend_error`` before or after, the process dying after the write-ahead or
after the POST), what the buyer does (pays, is declined, walks away) and what
happens to the webhook (nothing, dropped, duplicated, the receiver dying after
recording it, before or after recording its re-fetch, the re-fetch failing),
with Omise retrying deliveries or not, and its search indexing metadata or not,
or lagging. Then only the jobs run, a simulated minute at a time. At the end:
one charge at most per payment, each payment in its charge's state (a payment
whose create never reached Omise ends ``failed``/``not_created``), no hint
left unresolved, ``verify`` and ``replay`` clean.

Crashes are failpoints armed in process (``kplus_fsm.failpoints.armed``): the
raised error stands for the process dying at that point, between two writes.
The real-process versions (SIGKILL) are in tests/adapters/test_serve*.py.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import figure, quiet_structlog

from kplus_fsm import FollowUp, PeriodicReconciler, Status, Tracker, failpoints
from kplus_fsm.adapters.fake import FakeOmise, FaultKind
from kplus_fsm.adapters.fake import RetryPolicy as DeliveryRetry
from kplus_fsm.adapters.omise import OmiseClient, RetryPolicy
from kplus_fsm.adapters.webhooks import WebhookIntake
from kplus_fsm.testing import FakeClock

SK, PK = "skey_test_converge", "pkey_test_converge"
SECRET = base64.b64encode(b"convergence-test-webhook-secret!").decode()
AMOUNT = 35_000
RETURN_URI = "https://shop.example/r"
#: Simulated minutes the jobs get: the 15-minute grace period of an unknown create,
#: the 30-minute threshold of a quiet pending charge, and the backoffs on top.
ROUNDS = 50
TALLY: dict[str, int] = {}

CREATES: dict[str, tuple[FaultKind, dict[str, Any]] | str | None] = {
    "answered": None,
    "503, no charge": ("error", {"status": 503}),
    "answer lost, charge made": ("commit_then_drop", {}),
    "backend_error, no charge": ("error", {"status": 400, "code": "backend_error"}),
    "backend_error, charge made": ("commit_then_error", {"status": 400, "code": "backend_error"}),
    "dies after the write-ahead": "create.after_request",
    "dies after the POST": "create.after_post",
}
BUYER = ("pays", "is declined", "walks away")
WEBHOOK = (
    "delivered",
    "dropped",
    "duplicated",
    "receiver dies after recording it",
    "receiver dies before recording the re-fetch",
    "receiver dies after recording the re-fetch",
    "re-fetch fails",
)
INTAKE_POINTS = {
    "receiver dies after recording it": "intake.after_record",
    "receiver dies before recording the re-fetch": "intake.before_refetch_record",
    "receiver dies after recording the re-fetch": "intake.after_refetch_record",
}


def tally(name: str) -> None:
    TALLY[name] = TALLY.get(name, 0) + 1


class World:
    def __init__(self, directory: Path, *, retries: int, search: dict[str, Any]) -> None:
        self.clock = FakeClock("2026-06-01T00:00:00+00:00")
        self.fake = FakeOmise(
            secret_key=SK,
            public_key=PK,
            webhook_receiver=self.receive,
            webhook_secrets=[SECRET],
            clock=self.clock,
            retry=DeliveryRetry(max_attempts=retries, backoff=0.002, max_backoff=0.005),
            sweep_interval=3600,
            **search,
        )
        self.client = self._client()
        self.tracker = Tracker(directory / "k.db", clock=self.clock, synchronous="NORMAL")
        self.receiver_tracker = Tracker(directory / "k.db", clock=self.clock, synchronous="NORMAL")
        self.intake = WebhookIntake(
            self.receiver_tracker,
            client=self._client(),
            secrets=[SECRET],
            now=lambda: self.clock().timestamp(),
        )

    def _client(self) -> OmiseClient:
        return OmiseClient(
            secret_key=SK,
            transport=self.fake.transport(),
            timeout=httpx.Timeout(1.0, read=0.05),
            create_timeout=httpx.Timeout(1.0, read=0.05),
            retry=RetryPolicy(attempts=1),
            sleep=lambda _s: None,
        )

    def receive(self, request: httpx.Request) -> httpx.Response:
        answer = self.intake.handle(request.content, dict(request.headers))
        return httpx.Response(answer.status, json=answer.to_json())

    def charges_for(self, pid: str) -> list[dict[str, Any]]:
        return [c for c in self.fake.charges() if c["metadata"].get("payment_id") == pid]

    def close(self) -> None:
        self.fake.close()
        self.client.close()
        self.tracker.close()
        self.receiver_tracker.close()


@contextlib.contextmanager
def world(retries: int, search: dict[str, Any]) -> Iterator[World]:
    directory = Path(tempfile.mkdtemp(prefix="kplus-converge-"))
    made = World(directory, retries=retries, search=search)
    try:
        yield made
    finally:
        made.close()
        shutil.rmtree(directory, ignore_errors=True)


def create(w: World, pid: str, how: str) -> None:
    plan = CREATES[how]
    crash = plan if isinstance(plan, str) else None
    if isinstance(plan, tuple):
        kind, params = plan
        w.fake.inject_fault("POST /charges", kind, **params)
    with contextlib.ExitStack() as stack:
        if crash is not None:
            stack.enter_context(failpoints.armed(crash))
            stack.enter_context(contextlib.suppress(failpoints.FailpointError))
        w.tracker.create_charge(w.client, payment_id=pid, amount=AMOUNT, return_uri=RETURN_URI)
    w.fake.clear_faults()
    w.fake.flush(10)


def buyer(w: World, pid: str, action: str, webhook: str) -> None:
    charges = w.charges_for(pid)
    if not charges or action == "walks away":
        return
    charge_id = charges[0]["id"]
    with contextlib.ExitStack() as stack:
        if webhook == "dropped":
            w.fake.drop_next()
        elif webhook == "duplicated":
            w.fake.duplicate_next(2)
        elif webhook == "re-fetch fails":
            w.fake.inject_fault("GET /charges/:id", "error", status=503, times=3)
        elif webhook in INTAKE_POINTS:
            stack.enter_context(failpoints.armed(INTAKE_POINTS[webhook], nth=1))
        if action == "pays":
            w.fake.mark_as_paid(charge_id)
        else:
            w.fake.mark_as_failed(charge_id, "insufficient_fund")
        w.fake.flush(10)
    w.fake.clear_faults()


def run_the_jobs(w: World) -> None:
    """What serve runs on its own, a simulated minute at a time (no reconcile by hand)."""
    followup = FollowUp(w.tracker, w.client, holder="serve")
    reconciler = PeriodicReconciler(w.tracker, w.client, holder="serve")
    try:
        for _ in range(ROUNDS):
            w.clock.advance(seconds=61)
            followup.run_once()
            reconciler.run_once()
            w.fake.flush(10)
    finally:
        followup.close()


def check(w: World, pids: list[str]) -> None:
    for pid in pids:
        charges = w.charges_for(pid)
        assert len(charges) <= 1, f"two charges for {pid}"
        payment = w.tracker.get(pid)
        if charges:
            [charge] = charges
            assert (payment.charge_id, payment.status.value) == (
                charge["id"],
                charge["status"],
            ), (payment, charge)
            tally(f"ends {charge['status']} like its charge")
        else:
            assert (payment.status, payment.failure_code) == (Status.FAILED, "not_created"), payment
            tally("never reached Omise: not_created")
    assert w.tracker.unresolved_hints() == []
    assert w.tracker.verify().ok
    assert w.tracker.replay().ok


payment_story = st.tuples(
    st.sampled_from(sorted(CREATES)), st.sampled_from(BUYER), st.sampled_from(WEBHOOK)
)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    stories=st.lists(payment_story, min_size=1, max_size=3),
    retries=st.sampled_from([1, 3]),
    search=st.sampled_from(
        [{}, {"search_metadata": False}, {"search_lag": 30.0}],
    ),
)
def test_the_log_converges_to_omise_with_no_command_run(
    stories: list[tuple[str, str, str]], retries: int, search: dict[str, Any]
) -> None:
    with quiet_structlog(), world(retries, search) as w:
        pids = []
        for n, (how, action, webhook) in enumerate(stories):
            pid = f"conv-{n}"
            pids.append(pid)
            create(w, pid, how)
            buyer(w, pid, action, webhook)
            for label in (how, action, webhook):
                tally(label)
        run_the_jobs(w)
        check(w, pids)
    tally("examples")


def test_zz_report() -> None:
    """The figures of this module (runs last in file order)."""
    for name, count in sorted(TALLY.items()):
        figure("convergence", name, count)
