"""
The one error tree of kplus_fsm.

Expected anomalies of a payment's life (a duplicate webhook, stale news, a
conflicting payload, a payload for another payment) are *outcomes* returned in a
:class:`kplus_fsm.Result`, not exceptions: a webhook endpoint that raises on a
duplicate makes Omise retry forever. Exceptions are for input that cannot be
understood at all, for misuse, and for storage problems::

    KplusFSMError                         catch-all; never raised itself
    ├── InvalidInputError(ValueError)     input refused; the raw input is still in ``inbox``
    │   ├── InvalidPaymentRequestError    a payment request field is out of its limits
    │   ├── MalformedInputError           not JSON, wrong types, missing fields
    │   └── RefundNotSupportedError       Opn cannot refund mobile-banking charges
    ├── InvalidTimeError(ValueError)      a time outside 1000-01-01 .. 9999-12-31 (UTC), or naive
    ├── OutcomeError                      ``Result.raise_for_outcome()`` on a refused input
    ├── PaymentNotFoundError(LookupError) no payment with that payment id or charge id
    ├── ConsumerError                     a consumer cannot run as asked
    │   ├── ConsumerStartError(ValueError) a new consumer without a starting point
    │   └── LeaseLostError                another runner holds (or took) the consumer's lease
    ├── StoreError                        storage problems, chained from the sqlite3 error
    │   ├── ConcurrencyError              (stream, version) already taken; retried inside
    │   ├── IntegrityError                a row breaks the hash chain or cannot be decoded
    │   ├── SchemaVersionError            the database was written by a newer kplus_fsm
    │   ├── DamagedLogError               SQLite reports the file damaged (corrupt, truncated)
    │   ├── MigrationRefused              ``migrate-log`` did not move the log (and wrote nothing)
    │   └── PostgresUnavailableError      a postgresql:// log without psycopg installed
    └── GatewayError                      the payment API did not do what was asked
        ├── GatewayRefusedError           a definite answer: an Omise error object (4xx)
        └── GatewayUnavailableError       no definite answer: timeout, reset, 429, 5xx, garbage

No message of any of these ever contains a secret: inputs are described by their
kind, ids and the reason they were refused, never echoed whole.
"""

from __future__ import annotations

__all__ = [
    "ConcurrencyError",
    "ConsumerError",
    "ConsumerStartError",
    "DamagedLogError",
    "GatewayError",
    "GatewayRefusedError",
    "GatewayUnavailableError",
    "IntegrityError",
    "InvalidInputError",
    "InvalidPaymentRequestError",
    "InvalidTimeError",
    "KplusFSMError",
    "LeaseLostError",
    "MalformedInputError",
    "MigrationRefused",
    "OutcomeError",
    "PaymentNotFoundError",
    "PostgresUnavailableError",
    "RefundNotSupportedError",
    "SchemaVersionError",
    "StoreError",
]


class KplusFSMError(Exception):
    """
    Base class of every error raised by kplus_fsm.
    """


class InvalidInputError(KplusFSMError, ValueError):
    """
    An input was refused before it could reach the state machine.

    The raw input is recorded in ``inbox`` with outcome ``rejected`` before the
    error is raised, whenever a store was involved: ``inbox_id`` is its row (``None``
    when the input was checked without a store, e.g. by
    :func:`kplus_fsm.validate_payment_request`).
    """

    def __init__(self, reason: str, *, inbox_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.inbox_id = inbox_id

    def __str__(self) -> str:
        if self.inbox_id is None:
            return self.reason
        return f"{self.reason} (recorded as inbox row {self.inbox_id})"


class InvalidPaymentRequestError(InvalidInputError):
    """
    A payment request field is missing or outside its limits.

    ``field`` names the field and ``limit`` states what is allowed, e.g.
    ``field="amount"``, ``limit="an integer from 2000 to 15000000 satang"``.
    """

    def __init__(
        self, field: str, limit: str, *, got: str | None = None, inbox_id: int | None = None
    ) -> None:
        reason = f"invalid {field}: must be {limit}"
        if got is not None:
            reason += f" (got {got})"
        super().__init__(reason, inbox_id=inbox_id)
        self.field = field
        self.limit = limit


class MalformedInputError(InvalidInputError):
    """
    An input is not what it claims to be: not JSON, not an object of the
    expected shape, or a field of the wrong type.
    """


class RefundNotSupportedError(InvalidInputError):
    """
    A refund was asked for. Opn Payments cannot refund mobile-banking
    (K PLUS) charges; refunds must be made outside Opn.
    """


class InvalidTimeError(KplusFSMError, ValueError):
    """
    A time kplus_fsm cannot store: naive (no UTC offset), or outside the years
    1000 to 9999 in UTC. Stored times are ISO-8601 text that must sort as the
    times do; a four-digit year is what keeps that true. Raised before anything
    is written (a clock returning such a time records nothing).
    """


class OutcomeError(KplusFSMError):
    """
    Raised by :meth:`kplus_fsm.Result.raise_for_outcome` for an input the
    machine refused (``rejected``) or could not place (``conflict``, ``unknown``).
    """

    def __init__(self, outcome: str, reason: str, *, inbox_id: int) -> None:
        super().__init__(f"{outcome}: {reason} (inbox row {inbox_id})")
        self.outcome = outcome
        self.reason = reason
        self.inbox_id = inbox_id


class PaymentNotFoundError(KplusFSMError, LookupError):
    """
    No payment has that payment id or charge id.
    """


class ConsumerError(KplusFSMError):
    """
    A consumer of the event log cannot run as asked.
    """


class ConsumerStartError(ConsumerError, ValueError):
    """
    A consumer that does not exist yet was given no starting point: say where it
    starts (``start="beginning"``, ``"now"``, an event position or a time), so
    that a new consumer never replays all of history by accident.
    """


class LeaseLostError(ConsumerError):
    """
    The runner no longer holds the lease it worked under (it expired, or another
    runner took it): its position was not advanced and its transaction, if any,
    was rolled back. Nothing it handled since its last advance is lost; the new
    holder handles those events again.
    """


class StoreError(KplusFSMError):
    """
    The event log could not be read or written. Always chained (``from``) from
    the underlying database error. Nothing was committed.
    """


class ConcurrencyError(StoreError):
    """
    Another writer appended to the same stream first: ``(stream, version)`` is
    taken. The tracker retries these itself; they reach a caller only after the
    retries are exhausted.
    """


class IntegrityError(StoreError):
    """
    A stored row does not match the hash chain, or cannot be decoded.
    ``table`` and ``row_id`` name the first bad row.
    """

    def __init__(self, message: str, *, table: str | None = None, row_id: int | None = None):
        super().__init__(message)
        self.table = table
        self.row_id = row_id


class SchemaVersionError(StoreError):
    """
    The database was written by a newer kplus_fsm (it has migrations this
    version does not know), or is not a kplus_fsm log. Nothing was written.
    """


class DamagedLogError(StoreError):
    """
    SQLite reports the log's file damaged: pages overwritten, the file cut short,
    or bytes that are not a database (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, a
    short read). What was read before the damage is still valid;
    ``kplus-fsm verify`` reports how far the file can be read.
    """


class MigrationRefused(StoreError):
    """
    ``migrate-log`` did not move the log: the source does not verify, was
    written to while it was read, or the target is not empty. Nothing was
    committed to the target; the reason says why.
    """


class PostgresUnavailableError(StoreError, ImportError):
    """
    A ``postgresql://`` event log was asked for, but psycopg (the PostgreSQL
    driver) is not installed: ``pip install 'kplus-fsm[postgres]'``.
    """

    def __init__(self) -> None:
        super().__init__(
            "a postgresql:// event log needs the PostgreSQL driver (psycopg 3): "
            "pip install 'kplus-fsm[postgres]'"
        )


class GatewayError(KplusFSMError):
    """
    The payment API (Opn/Omise) did not do what was asked. Raised by adapters
    (``kplus_fsm.adapters.omise``), understood by the tracker's create flow.
    Messages carry the HTTP status, the Omise error code and message; never a key.
    """


class GatewayRefusedError(GatewayError):
    """
    Omise answered with an error object: a definite answer (``code``,
    ``message``, ``http_status``; ``error`` is the whole error object). On a
    create this means no charge was created: the payment fails with that code.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int,
        code: str,
        error: dict[str, object] | None = None,
    ) -> None:
        super().__init__(f"HTTP {http_status} {code}: {message}")
        self.http_status = http_status
        self.code = code
        self.message = message
        self.error = (
            error
            if error is not None
            else {
                "object": "error",
                "code": code,
                "message": message,
            }
        )


class GatewayUnavailableError(GatewayError):
    """
    No definite answer: a timeout, a connection reset, HTTP 429 or 5xx, or a
    body that is not an Omise object (an HTML 502 page, truncated JSON). On a
    create the outcome is *unknown*: a charge may exist. ``http_status`` is
    ``None`` when no response arrived; ``retry_after`` is the server's hint in
    seconds, when it gave one.
    """

    def __init__(
        self,
        reason: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason if http_status is None else f"HTTP {http_status}: {reason}")
        self.reason = reason
        self.http_status = http_status
        self.retry_after = retry_after
