"""
kplus_fsm: knowing, provably, what happened to every K PLUS payment.

An event-sourced state machine for Opn Payments (Omise) ``mobile_banking_kbank``
charges: a pure transition table, an append-only event log with a hash chain
(SQLite embedded, or PostgreSQL for several hosts), and a tracker that turns
every input (merchant requests, API responses and errors, webhooks, polls) into
recorded, replayable events.

Importing the package is kept light, for the command line's sake (``kplus-fsm
show`` starts in a fraction of a second): the names whose modules only some
programs need (the background jobs of :mod:`._followup`, the PostgreSQL store,
``__version__`` and its package metadata) are imported on first use by the
module's ``__getattr__``; they are in ``__all__`` and typed like the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

from . import exceptions
from ._codec import parse_json
from ._consumer import Consumer, Start
from ._flow import ReconcileItem, ReconcileReport, charge_params
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
from ._store.sqlite import SQLiteStore
from ._time import format_time, omise_time, parse_time, utc_now
from ._tracker import ImportReport, Result, Tracker
from .typing import ChargeAPI, Clock, Store

if TYPE_CHECKING:
    from ._followup import ConsumerSpec, FollowUp, PeriodicReconciler, Worker
    from ._store.postgres import PostgresStore

    __version__: str

#: The public names imported on first use, and the module of each.
_LAZY: Final = {
    "ConsumerSpec": "._followup",
    "FollowUp": "._followup",
    "PeriodicReconciler": "._followup",
    "Worker": "._followup",
    "PostgresStore": "._store.postgres",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - see above

    try:
        return version("kplus-fsm")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


def __getattr__(name: str) -> object:
    """The public names of :data:`_LAZY` and ``__version__``, imported on first use."""
    if name == "__version__":
        value: object = _version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
