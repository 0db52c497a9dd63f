"""
kplus_fsm: knowing, provably, what happened to every K PLUS payment.

An event-sourced state machine for Opn Payments (Omise) ``mobile_banking_kbank``
charges: a pure transition table, an append-only event log with a hash chain
(SQLite embedded, or PostgreSQL for several hosts), and a tracker that turns
every input (merchant requests, API responses and errors, webhooks, polls) into
recorded, replayable events.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import exceptions
from ._codec import parse_json
from ._consumer import Consumer, Start
from ._flow import ReconcileItem, ReconcileReport, charge_params
from ._followup import ConsumerSpec, FollowUp, PeriodicReconciler, Worker
from ._machine import TRANSITIONS, Decision, Rule, Signal, decide, evolve, fold, signal_of
from ._model import (
    CHARGE_EVENT_KEYS,
    KNOWN_FAILURE_CODES,
    MAX_AMOUNT,
    METADATA_ORDER_REF,
    METADATA_PAYMENT_ID,
    MIN_AMOUNT,
    NOT_CREATED_CODE,
    TERMINAL,
    ChargeLookup,
    ChargeSnapshot,
    ChargeView,
    CreateError,
    CreateUnknown,
    EventKind,
    Input,
    InputKind,
    NewEvent,
    NotCreated,
    Origin,
    Outcome,
    Payment,
    PaymentRequest,
    ReasonCode,
    Status,
    StoredEvent,
    WebhookEvent,
    WebhookHint,
)
from ._store import open_store
from ._store._log import Lease, UnresolvedHint
from ._store._reports import ReplayDifference, ReplayReport, TimelineEntry, VerifyReport
from ._store._rows import InboxDraft, InboxRow, Recorded
from ._store._urls import redact
from ._store.postgres import PostgresStore
from ._store.sqlite import SQLiteStore
from ._time import format_time, omise_time, parse_time, utc_now
from ._tracker import ImportReport, Result, Tracker
from .typing import ChargeAPI, Clock, Store

try:
    __version__ = version("kplus-fsm")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"


def validate_payment_request(**fields: object) -> PaymentRequest:
    """
    Validate a payment request without recording it (e.g. before an API call).

    Raises:
        InvalidPaymentRequestError: a field is out of its limits.
    """
    return PaymentRequest.create(**fields)


__all__ = [
    "CHARGE_EVENT_KEYS",
    "KNOWN_FAILURE_CODES",
    "MAX_AMOUNT",
    "METADATA_ORDER_REF",
    "METADATA_PAYMENT_ID",
    "MIN_AMOUNT",
    "NOT_CREATED_CODE",
    "TERMINAL",
    "TRANSITIONS",
    "ChargeAPI",
    "ChargeLookup",
    "ChargeSnapshot",
    "ChargeView",
    "Clock",
    "Consumer",
    "ConsumerSpec",
    "CreateError",
    "CreateUnknown",
    "Decision",
    "EventKind",
    "FollowUp",
    "ImportReport",
    "InboxDraft",
    "InboxRow",
    "Input",
    "InputKind",
    "Lease",
    "NewEvent",
    "NotCreated",
    "Origin",
    "Outcome",
    "Payment",
    "PaymentRequest",
    "PeriodicReconciler",
    "PostgresStore",
    "ReasonCode",
    "ReconcileItem",
    "ReconcileReport",
    "Recorded",
    "ReplayDifference",
    "ReplayReport",
    "Result",
    "Rule",
    "SQLiteStore",
    "Signal",
    "Start",
    "Status",
    "Store",
    "StoredEvent",
    "TimelineEntry",
    "Tracker",
    "UnresolvedHint",
    "VerifyReport",
    "WebhookEvent",
    "WebhookHint",
    "Worker",
    "__version__",
    "charge_params",
    "decide",
    "evolve",
    "exceptions",
    "fold",
    "format_time",
    "omise_time",
    "open_store",
    "parse_json",
    "parse_time",
    "redact",
    "signal_of",
    "utc_now",
    "validate_payment_request",
]
