"""
Bad input: Hypothesis fuzzes the webhook intake (body bytes, mutated events,
headers and signatures) and charge snapshots (``Tracker.record_charge``) with more
than 100,000 cases in all, on a real SQLite file.

Every case must end one of two ways, and nothing else may happen:

- recorded with a clear outcome: ``WebhookIntake.handle`` answers 200 (a
  recorded outcome), 400 or 401 (recorded and refused), with the inbox row it
  wrote; ``record_charge`` returns a ``Result``;
- refused with a typed error: ``record_charge`` raises an ``InvalidInputError``
  (``MalformedInputError``) carrying the inbox row that recorded the refusal.

Each call adds exactly one inbox row (the intakes here have no API client, so
no re-fetch). Afterwards the fuzzed log verifies and replays, and a real loopback
receiver on it still answers ``GET /``, hostile raw requests, and a valid webhook.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import Stopwatch, figure, quiet_structlog

from kplus_fsm import Origin, Outcome, Result, SQLiteStore, Tracker
from kplus_fsm.adapters.signatures import sign
from kplus_fsm.adapters.webhooks import IntakeResult, WebhookIntake, serve
from kplus_fsm.exceptions import InvalidInputError
from kplus_fsm.testing import charge_json, webhook_json

pytestmark = pytest.mark.slow

SECRET = base64.b64encode(b"fuzzing-webhook-secret-0123456789").decode()
NOW = 1_790_000_000
AMOUNT = 35_000
#: Cases per fuzz target; together at least 100,000.
CASES = {"bodies": 25_500, "events": 25_500, "headers": 25_500, "charges": 25_500}
MIN_CASES = 25_000
assert sum(CASES.values()) >= 100_000
assert MIN_CASES * len(CASES) >= 100_000
OK_STATUSES = frozenset({200, 400, 401, 413})
PAYMENTS = [(f"fz-{i}", f"chrg_test_fuzz{i:015d}") for i in range(8)]
OUTCOMES = frozenset(o.value for o in Outcome)

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)

# ------------------------------------------------------------------ strategies
#
# Hypothesis draws the choices (which payment, status, event key, which mutations
# and how many, which encoding, which headers); a seeded ``random.Random`` (its
# seed drawn by Hypothesis, so every case replays) fills in the hostile values.
# A few draws per case keep Hypothesis's own cost near 0.5 ms, so that 100,000
# cases fit in the CI time budget.

#: Values that broke, or could break, a parser, a column or the hash chain: lone
#: surrogates, NULs, Unicode digits, latin-1 text, huge integers, NaN, wrong types.
NASTY: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    float("nan"),
    float("inf"),
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
    "",
    "\x00",
    "\ud800",
    "evnt_\udfff",
    "\udc80abc",
    "²",
    "١٧٩٠٠٠٠٠٠٠",
    "\u00e9",
    "\xff\xfe",
    "Z" * 3000,
    "'; DROP TABLE inbox; --",
    [],
    {},
    [1, "a", None],
    {"object": "charge"},
    {"object": "event", "data": {}},
    {"a": {"b": [None, {}]}},
    "charge",
    "event",
    "pending",
    "successful",
    "failed",
    "expired",
    "reversed",
    "THB",
    "thb",
    AMOUNT,
    str(AMOUNT),
    "charge.complete",
    "fz-0",
    "chrg_test_fuzz000000000000000",
]
STATUSES = ["pending", "successful", "failed", "expired", "reversed", "PAID"]
KEYS = ["charge.complete", "charge.create", "charge.update", "charge.expire", "refund.create"]
#: Prefixes that make random bytes look like the start of an event.
PREFIXES = [
    b"",
    b"{",
    b'{"object": "event", "id": "evnt_fz_1", "key": "charge.complete", "data": ',
    b'{"object": "event", "id": "evnt_fz_2", "key": "charge.complete", "data": {"object":'
    b' "charge", "id": "chrg_test_fuzz000000000000000", "metadata": {"payment_id": "fz-0"},',
    b"[",
    b'"',
]


def random_text(rng: random.Random) -> str:
    """Up to 12 code points from every plane, surrogates included."""
    spans = [(0, 0x7F), (0x80, 0xFF), (0x100, 0xFFFF), (0xD800, 0xDFFF), (0x10000, 0x10FFFF)]
    chars = []
    for _ in range(rng.randint(0, 12)):
        low, high = rng.choice(spans)
        chars.append(chr(rng.randint(low, high)))
    return "".join(chars)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.5:
        return copy.deepcopy(rng.choice(NASTY))
    if roll < 0.65:
        return rng.randint(-(2**70), 2**70)
    if roll < 0.85 or depth > 2:
        return random_text(rng)
    if roll < 0.93:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {random_text(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _containers(node: Any, out: list[Any]) -> list[Any]:
    if isinstance(node, dict | list):
        out.append(node)
        for child in node.values() if isinstance(node, dict) else node:
            _containers(child, out)
    return out


def mutate(value: Any, rng: random.Random, times: int) -> Any:
    """``value`` with ``times`` random fields set, deleted, added or retyped."""
    for _ in range(times):
        node = rng.choice(_containers(value, []))
        op = rng.choice(("set", "set", "delete", "new"))
        if isinstance(node, dict):
            if op == "new" or not node:
                key = rng.choice([random_text(rng), "object", "id", "data", "metadata"])
                node[key] = random_value(rng)
            else:
                key = rng.choice(list(node))
                if op == "delete":
                    del node[key]
                else:
                    node[key] = random_value(rng)
        elif node and op != "new":
            index = rng.randrange(len(node))
            if op == "delete":
                del node[index]
            else:
                node[index] = random_value(rng)
        else:
            node.append(random_value(rng))
    return value


def encode(value: Any, rng: random.Random, how: str) -> bytes:
    """JSON bytes as a wire could carry them: escaped, raw UTF-8, cut short, or garbled."""
    if how == "raw":
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    body = json.dumps(value).encode()
    if how == "cut":
        return body[: rng.randint(0, len(body))]
    if how == "garbled" and body:
        garbled = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            garbled[rng.randrange(len(garbled))] = rng.randrange(256)
        return bytes(garbled)
    return body


ENCODINGS = ["escaped", "escaped", "escaped", "raw", "cut", "garbled"]
seeds = st.integers(0, 2**32 - 1)
targets = st.sampled_from([*PAYMENTS, ("fz-unknown", "chrg_test_unknown")])


@st.composite
def charge_bodies(draw: st.DrawFn) -> tuple[Any, random.Random]:
    """A charge of a known (or unknown) payment, then mutated 0-4 times."""
    pid, cid = draw(targets)
    rng = random.Random(draw(seeds))
    charge = charge_json(
        payment_id=pid,
        charge_id=cid,
        status=draw(st.sampled_from(STATUSES)),
        amount=AMOUNT if rng.random() < 0.8 else 10_000,
        failure_code=rng.choice([None, "payment_rejected", "weird_code"]),
    )
    return mutate(charge, rng, draw(st.integers(0, 4))), rng


CHARGE_BODIES = charge_bodies()


@st.composite
def event_bodies(draw: st.DrawFn) -> bytes:
    """An Omise event (event ids from a small pool: redeliveries), mutated, encoded."""
    charge, rng = draw(CHARGE_BODIES)
    event_id = f"evnt_fz_{rng.randrange(40)}" if rng.random() < 0.8 else random_text(rng)
    event = webhook_json(charge, key=draw(st.sampled_from(KEYS)), event_id=event_id)
    mutate(event, rng, draw(st.integers(0, 2)))
    return encode(event, rng, draw(st.sampled_from(ENCODINGS)))


# ------------------------------------------------------------------- the world


@attrs.define
class Fuzz:
    """One fuzz target's tracker and intakes on the shared fuzz log, and its tallies."""

    store: SQLiteStore
    tracker: Tracker
    signed: WebhookIntake
    unsigned: WebhookIntake
    cases: int = 0
    statuses: Counter[str] = attrs.Factory(Counter)

    def head(self) -> int:
        row = self.store.conn.execute("SELECT max(id) FROM inbox").fetchone()
        return int(row[0] or 0)

    def deliver(self, intake: WebhookIntake, body: bytes | str, headers: dict[str, str]) -> None:
        before = self.head()
        answer = intake.handle(body, headers)
        self.check_answer(answer, before)

    def check_answer(self, answer: IntakeResult, before: int) -> None:
        self.cases += 1
        assert answer.status in OK_STATUSES, answer
        assert answer.outcome in OUTCOMES, answer
        assert answer.reason
        if answer.status != 200:
            assert answer.outcome == "rejected", answer
        assert self.head() == before + 1, "one delivery, one inbox row"
        assert answer.inbox_id == before + 1
        self.statuses[f"{answer.status} {answer.outcome}"] += 1

    def snapshot(self, charge: Any, *, origin: Origin, payment_id: str | None) -> None:
        before = self.head()
        self.cases += 1
        refused: InvalidInputError | None = None
        try:
            result = self.tracker.record_charge(charge, origin=origin, payment_id=payment_id)
        except InvalidInputError as exc:  # the one typed refusal: recorded first
            refused = exc
        if refused is not None:
            assert refused.inbox_id == before + 1, refused
            assert refused.reason
            self.statuses[f"raised {type(refused).__name__}"] += 1
        else:
            assert isinstance(result, Result)
            assert result.inbox_id == before + 1
            assert result.reason
            self.statuses[f"returned {result.outcome.value}"] += 1
        assert self.head() == before + 1, "one snapshot, one inbox row"


@pytest.fixture(scope="module")
def fuzz_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The log every fuzz target writes into: eight payments, pending, to aim at."""
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    with quiet_structlog(), Tracker(path) as tracker:
        for pid, cid in PAYMENTS:
            tracker.request_payment(payment_id=pid, amount=AMOUNT, return_uri="https://s.example/r")
            tracker.record_charge(
                charge_json(payment_id=pid, charge_id=cid), origin=Origin.CREATE_RESPONSE
            )
    return path


@pytest.fixture
def fuzz(fuzz_db: Path) -> Iterator[Fuzz]:
    with quiet_structlog(), Tracker(SQLiteStore(fuzz_db, synchronous="OFF")) as tracker:
        assert isinstance(tracker.store, SQLiteStore)
        yield Fuzz(
            store=tracker.store,
            tracker=tracker,
            signed=WebhookIntake(tracker, secrets=[SECRET], now=lambda: float(NOW)),
            unsigned=WebhookIntake(tracker),
        )


def signed_headers(body: bytes, timestamp: int = NOW) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Omise-Signature": sign(body, SECRET, timestamp),
        "Omise-Signature-Timestamp": str(timestamp),
    }


def run(target: str, fuzz: Fuzz, case: Callable[[], None]) -> None:
    watch = Stopwatch()
    case()
    assert fuzz.cases >= MIN_CASES, fuzz.cases
    figure("fuzz", f"{target}: cases", fuzz.cases)
    figure("fuzz", f"{target}: seconds", watch.seconds)
    figure("fuzz", f"{target}: answers", dict(sorted(fuzz.statuses.items())))


# ------------------------------------------------------------------- the targets


def test_fuzz_webhook_bodies(fuzz: Fuzz) -> None:
    """Arbitrary bytes (some after an event-like prefix), validly signed or unsigned."""

    @settings(FUZZ, max_examples=CASES["bodies"])
    @given(
        prefix=st.sampled_from(PREFIXES),
        tail=st.binary(max_size=300),
        sign_it=st.booleans(),
    )
    def case(prefix: bytes, tail: bytes, sign_it: bool) -> None:
        body = prefix + tail
        if sign_it:  # signed: it gets past the signature check, to the parser
            fuzz.deliver(fuzz.signed, body, signed_headers(body))
        else:
            fuzz.deliver(fuzz.unsigned, body, {"Content-Type": "application/json"})

    run("bodies", fuzz, case)


def test_fuzz_mutated_events(fuzz: Fuzz) -> None:
    """Omise events for known payments with fields set, deleted or retyped, redelivered."""

    @settings(FUZZ, max_examples=CASES["events"])
    @given(body=event_bodies(), how=st.sampled_from(["signed", "unsigned", "unsigned text"]))
    def case(body: bytes, how: str) -> None:
        if how == "signed":
            fuzz.deliver(fuzz.signed, body, signed_headers(body))
        elif how == "unsigned":
            fuzz.deliver(fuzz.unsigned, body, {})
        else:  # a host handing over text (undecodable bytes become lone surrogates)
            fuzz.deliver(fuzz.unsigned, body.decode("utf-8", "surrogateescape"), {})

    run("events", fuzz, case)


TIMESTAMPS = [
    "",
    " ",
    f" {NOW} ",
    f"{NOW}.0",
    "0x6AB",
    "-1",
    "²",
    "¹⁷⁹⁰⁰⁰⁰⁰⁰⁰",
    "١٧٩٠٠٠٠٠٠٠",
    "9" * 13,
    "\x00",
    "\u00e9",
]
SIGNATURES = ["", ",", "\u00e9", "ÿ" * 64, "00" * 32, "zz" * 32, "\x00", " , ,"]


TS_KINDS = ["now", "near", "far", "odd", "random"]
SIG_KINDS = ["valid", "variant", "list", "odd", "random", "latin1"]


def hostile_headers(body: bytes, rng: random.Random, ts_kind: str, sig_kind: str) -> dict[str, str]:
    """Signature headers: right, wrong, stale, future, garbled, missing; and extra ones."""
    if ts_kind == "now":
        ts = str(NOW)
    elif ts_kind == "near":  # around the 300 s tolerance, both ways
        ts = str(NOW + rng.randint(-400, 400))
    elif ts_kind == "far":
        ts = str(rng.randint(-(10**13), 10**13))
    elif ts_kind == "odd":
        ts = rng.choice(TIMESTAMPS)
    else:
        ts = random_text(rng)
    valid = sign(body, SECRET, ts) if ts.isascii() else "00"
    if sig_kind == "valid":
        sig = valid
    elif sig_kind == "variant":
        sig = rng.choice([valid.upper(), f" {valid} ", valid[:-1], valid + "0", valid[::-1]])
    elif sig_kind == "list":
        parts = [valid, "00" * 32, rng.choice(SIGNATURES), random_text(rng)]
        sig = ",".join(rng.sample(parts, rng.randint(1, len(parts))))
    elif sig_kind == "odd":
        sig = rng.choice(SIGNATURES)
    elif sig_kind == "random":
        sig = random_text(rng)
    else:  # what a WSGI/ASGI server makes of raw header bytes: latin-1 text
        sig = bytes(rng.randrange(256) for _ in range(rng.randint(0, 70))).decode("latin-1")
    out: dict[str, str] = {}
    if rng.random() < 0.9:
        name = rng.choice(["Omise-Signature", "omise-signature", "OMISE-SIGNATURE"])
        out[name] = sig
    if rng.random() < 0.9:
        out["Omise-Signature-Timestamp"] = ts
    for _ in range(rng.randint(0, 2)):
        out[random_text(rng) or "x"] = random_text(rng)
    if rng.random() < 0.3:
        out["Authorization"] = "Basic c2tleV90ZXN0X2Z1enppbmc6"
    return out


def test_fuzz_headers(fuzz: Fuzz) -> None:
    """Valid bodies under hostile headers: only a right, fresh signature gets through."""

    @settings(FUZZ, max_examples=CASES["headers"])
    @given(
        target=targets,
        status=st.sampled_from(STATUSES),
        seed=seeds,
        ts_kind=st.sampled_from(TS_KINDS),
        sig_kind=st.sampled_from(SIG_KINDS),
    )
    def case(target: tuple[str, str], status: str, seed: int, ts_kind: str, sig_kind: str) -> None:
        pid, cid = target
        charge = charge_json(payment_id=pid, charge_id=cid, status=status, amount=AMOUNT)
        body = json.dumps(webhook_json(charge)).encode()
        hdrs = hostile_headers(body, random.Random(seed), ts_kind, sig_kind)
        before = fuzz.head()
        answer = fuzz.signed.handle(body, hdrs)
        fuzz.check_answer(answer, before)
        [row] = list(fuzz.tracker.store.iter_inbox(before))
        if answer.status == 200:
            assert row.verification == "verified"
        else:
            assert row.verification.startswith("failed: "), row
        assert "Basic c2tleV90ZXN0X2Z1enppbmc6" not in (row.headers or "")

    run("headers", fuzz, case)


def test_fuzz_charge_snapshots(fuzz: Fuzz) -> None:
    """Tracker.record_charge with mutated charges and arbitrary values: mappings, bytes, text."""

    @settings(FUZZ, max_examples=CASES["charges"])
    @given(
        drawn=CHARGE_BODIES,
        form=st.sampled_from(["mapping", "mapping", "bytes", "text", "any value"]),
        origin=st.sampled_from(list(Origin)),
        payment_id=st.sampled_from([None, None, "fz-0", "fz-1", "fz-nobody"]),
    )
    def case(
        drawn: tuple[Any, random.Random], form: str, origin: Origin, payment_id: str | None
    ) -> None:
        value, rng = drawn
        charge: Any
        if form == "any value":
            charge = encode(random_value(rng), rng, rng.choice(ENCODINGS))
        elif form == "bytes":
            charge = encode(value, rng, rng.choice(ENCODINGS))
        elif form == "text":
            charge = json.dumps(value)
        else:
            charge = value
        fuzz.snapshot(charge, origin=origin, payment_id=payment_id)

    run("charges", fuzz, case)


# ----------------------------------------------------------- still serving, on the wire


def raw_request(port: int, method: str, path: str, headers: list[bytes], body: bytes) -> int:
    """Send one HTTP/1.1 request with raw header bytes; the status of the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for line in headers:
            name, _, value = line.partition(b": ")
            conn.putheader(name.decode("latin-1"), value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        return conn.getresponse().status
    finally:
        conn.close()


def test_receiver_still_serving_after_the_fuzz(fuzz_db: Path) -> None:
    """On the fuzzed log: hostile requests over HTTP, then GET / and a valid webhook."""
    watch = Stopwatch()
    with quiet_structlog(), Tracker(fuzz_db) as tracker:
        inbox_before = tracker.store.head()["inbox_id"]
        now = int(time.time())
        intake = WebhookIntake(tracker, secrets=[SECRET])
        server = serve(intake, "127.0.0.1", 0, max_body=4096)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            port = int(server.server_address[1])
            body = json.dumps(webhook_json(charge_json(payment_id="fz-0"))).encode()
            good_sig = sign(body, SECRET, now).encode()
            hostile: list[tuple[list[bytes], bytes, int]] = [
                # A latin-1 superscript digit as the timestamp (str.isdigit, yet not int()).
                ([b"Omise-Signature: " + good_sig, b"Omise-Signature-Timestamp: \xb2"], body, 400),
                # A non-ASCII signature with a fresh timestamp.
                (
                    [b"Omise-Signature: \xe9", f"Omise-Signature-Timestamp: {now}".encode()],
                    body,
                    401,
                ),
                # A lone surrogate escape in the event id of a forged body.
                (
                    [b"Omise-Signature: 00", f"Omise-Signature-Timestamp: {now}".encode()],
                    b'{"object": "event", "id": "evnt_\\ud800", "key": "charge.complete",'
                    b' "data": {"object": "charge", "id": "chrg_\\udfff"}}',
                    401,
                ),
                ([b"Omise-Signature: " + good_sig], body, 400),
                ([], b"\xff\xfe\x00garbage", 400),
                ([], b"x" * 5000, 413),
            ]
            for hdrs, payload, expected in hostile:
                status = raw_request(port, "POST", "/webhooks/omise", hdrs, payload)
                assert status == expected, (hdrs, payload[:60], status)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", "/")
                ready = conn.getresponse()
                assert (ready.status, json.loads(ready.read())) == (200, {"ready": True})
            finally:
                conn.close()
            pid, cid = PAYMENTS[0]
            charge = charge_json(payment_id=pid, charge_id=cid, status="successful", amount=AMOUNT)
            valid = json.dumps(webhook_json(charge, event_id="evnt_test_after_fuzz")).encode()
            status = raw_request(
                port,
                "POST",
                "/webhooks/omise",
                [
                    b"Content-Type: application/json",
                    b"Omise-Signature: " + sign(valid, SECRET, now).encode(),
                    f"Omise-Signature-Timestamp: {now}".encode(),
                ],
                valid,
            )
            assert status == 200
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
        rows = list(tracker.store.iter_inbox(inbox_before))
        assert len(rows) == len(hostile) + 1
        assert rows[-1].external_id == "evnt_test_after_fuzz"
        assert rows[-1].outcome in ("applied", "duplicate", "conflict")
        report = tracker.verify()
        assert report.ok, report.problem
        assert tracker.replay().ok
    figure("fuzz", "inbox rows in the fuzzed log, verified and replayed", report.inbox_rows)
    figure("fuzz", "receiver check seconds", watch.seconds)
