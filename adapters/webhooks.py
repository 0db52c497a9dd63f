"""
Framework-neutral intake of Omise webhooks: raw bytes and headers in, an HTTP
status and a small JSON answer out. ASGI and WSGI wrappers, a threaded
loopback-or-LAN receiver (:func:`serve`, wsgiref: tests and the demo) and
:func:`intake_from_env` on top. ``kplus-fsm serve`` runs :func:`asgi_app` on
uvicorn, with request deadlines, workers, ``/ready`` and ``/metrics``
(``kplus_fsm._server``; docs/design.md, "The production server"). The wrappers
are written in the private module ``_webhook_http``, which this module imports
and re-exports (it never imports this one back).

The order of :meth:`WebhookIntake.handle` (docs/concepts.md, "Why webhooks are hints"):

1. verify the signature on the raw bytes, when webhook secrets are configured
   (:func:`kplus_fsm.adapters.signatures.verify_signature`: timestamps more than
   ``tolerance`` seconds old or ahead are refused; several comma-separated
   signatures are accepted during a secret roll);
2. record the delivery: a refused one with ``Tracker.refuse_webhook`` (its reason
   kept), an accepted one with ``Tracker.record_webhook`` (which parses it,
   refuses malformed bodies after recording them, and dedupes on the event id);
3. if an API client is configured and the event carries a charge: **re-fetch the
   charge** with the secret key and record it (``origin="refetch"``). The state
   follows the re-fetch, not the payload: with a client, the payload is recorded
   as a hint only (``apply_payload=False``), so a validly signed payload that
   claims ``successful`` for a charge the API still shows ``pending`` leaves it
   ``pending``. Without a client the payload is applied as an *unverified*
   snapshot (it never overrides a terminal state).

Every accepted delivery is followed through. A hint whose re-fetch failed (or
never ran: the process died in between) stays an *unresolved hint* in the log
(:meth:`kplus_fsm.Tracker.unresolved_hints`) until a read of its charge is
recorded: a redelivery of it is still recorded as ``duplicate`` but re-fetches
the charge again, and the follow-up (:class:`kplus_fsm.FollowUp`, run by
``kplus-fsm serve``) re-fetches it on its own. With a client, a delivery whose
signature matches the secret but whose timestamp is outside the tolerance
(Omise may keep an event's first timestamp on its retries) is recorded as a hint
with verification ``verified_stale`` and re-fetched: a replayed genuine event
can only cause a read of the truth. Without a client it is refused as stale.

HTTP statuses (Omise retries any non-2xx delivery, so 2xx means "recorded, stop"):

======  =====================================================================
 200    recorded: applied, duplicate (re-fetched again only while its hint is
        unresolved), stale, conflict, unknown, and rejected-but-recorded (no
        such payment, amount mismatch …); also when the re-fetch failed: the
        hint stays unresolved and the follow-up re-fetches it
 400    recorded and refused: malformed body (not JSON, not an event), missing
        signature headers, a timestamp that is not Unix seconds or is outside
        the tolerance (stale or in the future)
 401    recorded and refused: no signature matches (forged, tampered body,
        wrong or rolled-away secret)
 408    (ASGI) the server cut the body off past its body timeout
        (``kplus-fsm serve``): what arrived is recorded and refused, its
        signature not checked (a partial body is never taken for a forgery);
        a client that closed mid-body gets no answer, and is recorded alike
 411    (WSGI) a chunked body on a server that does not decode it (wsgiref):
        recorded with an empty body and refused; send ``Content-Length``
 413    (wrappers) the body exceeds ``max_body``: not read and not stored; the
        refusal itself is recorded with an empty body and the declared size
 500    nothing could be recorded (:class:`kplus_fsm.exceptions.StoreError`),
        or an unexpected error in the wrappers: Omise should retry
======  =====================================================================

Errors: :meth:`WebhookIntake.handle` raises nothing for any request; store
failures become status 500 and re-fetch failures become status 200 with a
reason. The constructor and :func:`intake_from_env` raise::

    ValueError                      a webhook secret is not base64, or
                                    require_signature=True with no secret
    KplusFSMError
    └── StoreError                  (intake_from_env) the event log cannot be
        └── SchemaVersionError      opened, or was written by a newer kplus_fsm

Thread safety: one intake may serve many threads (the threaded WSGI server,
ASGI worker threads); its calls into the tracker are serialised by a lock,
while re-fetches run concurrently.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

import attrs
import httpx
import structlog

from kplus_fsm import ChargeAPI, Outcome, ReasonCode, Result, Tracker, WebhookEvent, parse_json
from kplus_fsm.exceptions import (
    GatewayError,
    InvalidInputError,
    KplusFSMError,
    StoreError,
)
from kplus_fsm.failpoints import failpoint

from ._webhook_http import (
    CHUNKED_REFUSED,
    DEFAULT_PATH,
    MAX_BODY,
    TIMEOUT_EXTENSION,
    ASGIApp,
    WebhookServer,
    asgi_app,
    serve,
    wsgi_app,
)
from .omise import DEFAULT_BASE_URL, OmiseClient
from .signatures import DEFAULT_TOLERANCE, decode_secret, verify_signature

__all__ = [
    "CHUNKED_REFUSED",
    "DEFAULT_PATH",
    "MAX_BODY",
    "STALE_VERIFICATION",
    "TIMEOUT_EXTENSION",
    "ASGIApp",
    "IntakeObserver",
    "IntakeResult",
    "WebhookIntake",
    "WebhookServer",
    "asgi_app",
    "intake_from_env",
    "serve",
    "wsgi_app",
]

log = structlog.get_logger("kplus_fsm.adapters.webhooks")

#: ``inbox.verification`` of a delivery signed with the secret but outside the
#: clock tolerance, taken as a hint because the charge is re-fetched.
STALE_VERIFICATION: Final = "verified_stale"

_T = TypeVar("_T")


class IntakeObserver(Protocol):
    """
    What an intake tells a monitor (``kplus-fsm serve``'s Prometheus metrics):
    each delivery's answer and how long it took, and each re-fetch.
    """

    def delivered(self, result: IntakeResult, *, seconds: float) -> None: ...

    def refetched(self, *, seconds: float, error: str | None) -> None: ...


@attrs.frozen(kw_only=True)
class IntakeResult:
    """
    The answer to one delivery.

    ``status`` is the HTTP status to return; ``outcome`` the recorded outcome
    (``applied``, ``duplicate``, ``rejected`` …; ``None`` if nothing could be
    recorded); ``inbox_id`` the inbox row that recorded the delivery;
    ``refetch`` the :class:`kplus_fsm.Result` of recording the re-fetched
    charge, when there was one.
    """

    status: int
    outcome: str | None
    reason: str
    inbox_id: int | None = None
    refetch: Result | None = None

    @property
    def recorded(self) -> bool:
        """Whether the delivery is in ``inbox``."""
        return self.inbox_id is not None

    def to_json(self) -> dict[str, Any]:
        """The response body: ``{"outcome", "reason", "inbox_id"}``."""
        return {"outcome": self.outcome, "reason": self.reason, "inbox_id": self.inbox_id}


def _plain_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k): str(v) for k, v in headers.items()}


class WebhookIntake:
    """
    Receives Omise webhook deliveries for a :class:`kplus_fsm.Tracker`.

    Args:
        tracker: where every delivery is recorded.
        client: a :class:`kplus_fsm.ChargeAPI` (e.g.
            :class:`~kplus_fsm.adapters.omise.OmiseClient`) to re-fetch the
            charge of each event with the secret key. Without one, the payload
            is applied as an unverified snapshot.
        secrets: the dashboard's webhook secret(s), base64; several during a
            secret roll. Empty: signatures are not checked.
        tolerance: how many seconds a signature timestamp may be away from
            ``now()`` in either direction.
        now: the clock, in Unix seconds.
        require_signature: refuse deliveries whose signature fails (default:
            ``True`` when secrets are given). ``False`` with secrets: check and
            record the verdict, but process the delivery anyway (a rollout mode).
        observer: told of every delivery and re-fetch (metrics).
        on_unresolved: called with the charge id when a delivery leaves its
            hint unresolved (the re-fetch failed), e.g. to wake a follow-up.

    Raises:
        ValueError: a secret is not base64, or ``require_signature=True`` without
            any secret.
    """

    def __init__(
        self,
        tracker: Tracker,
        *,
        client: ChargeAPI | None = None,
        secrets: Sequence[str] = (),
        tolerance: float = DEFAULT_TOLERANCE,
        now: Callable[[], float] = time.time,
        require_signature: bool | None = None,
        observer: IntakeObserver | None = None,
        on_unresolved: Callable[[str], None] | None = None,
    ) -> None:
        kept = (secrets,) if isinstance(secrets, str) else tuple(secrets)
        for secret in kept:
            decode_secret(secret)  # fail at start-up, not on the first delivery
        if require_signature is None:
            require_signature = bool(kept)
        if require_signature and not kept:
            raise ValueError("require_signature=True needs at least one webhook secret")
        if tolerance < 0:
            raise ValueError("tolerance must be 0 or more seconds")
        self.tracker = tracker
        self.client = client
        self._secrets = kept
        self.tolerance = float(tolerance)
        self.now = now
        self.require_signature = require_signature
        self.observer = observer
        self.on_unresolved = on_unresolved
        self._lock = threading.RLock()
        self._closers: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return (
            f"WebhookIntake(secrets={len(self._secrets)}, "
            f"require_signature={self.require_signature}, "
            f"refetch={'yes' if self.client is not None else 'no'})"
        )

    @property
    def verifies_signatures(self) -> bool:
        """Whether webhook secrets are configured."""
        return bool(self._secrets)

    def close(self) -> None:
        """Close what :func:`intake_from_env` opened for this intake (tracker, client)."""
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            close()

    def __enter__(self) -> WebhookIntake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ intake

    def handle(self, body: bytes | str, headers: Mapping[str, str]) -> IntakeResult:
        """
        Verify, record, dedupe, re-fetch: one delivery (``body``: the raw bytes
        as received; text is encoded as UTF-8). Raises nothing for any request,
        whatever its content: store failures are status 500, re-fetch failures
        status 200 (see the module docstring for every status).
        """
        started = time.perf_counter()
        result = self._handle(body, headers)
        if self.observer is not None:
            self.observer.delivered(result, seconds=time.perf_counter() - started)
        return result

    def _handle(self, body: bytes | str, headers: Mapping[str, str]) -> IntakeResult:
        if isinstance(body, str):
            # surrogatepass: a str holding lone surrogates still becomes bytes (and
            # then a malformed body, recorded and refused) rather than an exception.
            body = body.encode("utf-8", "surrogatepass")
        hdrs = _plain_headers(headers)
        verification = "unverified"
        if self._secrets:
            now = self.now()
            check = verify_signature(body, hdrs, self._secrets, now=now, tolerance=self.tolerance)
            verification = check.verification
            if check.stale and self.client is not None:
                # Genuine but outside the tolerance (a retry keeping its first timestamp,
                # or a replay): only ever a hint, and the charge is read from the API.
                verification = STALE_VERIFICATION
                log.info("webhook_stale_signature_taken_as_hint", reason=check.reason)
            elif not check.ok and self.require_signature:
                forged = check.timestamp is not None and abs(now - check.timestamp) <= (
                    self.tolerance
                )
                return self._refuse(
                    body,
                    hdrs,
                    verification=verification,
                    reason=f"signature refused: {check.reason}",
                    reason_code=(
                        ReasonCode.SIGNATURE_STALE
                        if check.out_of_tolerance
                        else ReasonCode.SIGNATURE_INVALID
                    ),
                    status=401 if forged else 400,
                )
            elif not check.ok:
                log.warning("webhook_signature_failed_but_accepted", reason=check.reason)
        try:
            result = self._locked(
                lambda: self.tracker.record_webhook(
                    body,
                    headers=hdrs,
                    verification=verification,
                    apply_payload=self.client is None,
                )
            )
        except InvalidInputError as exc:
            return IntakeResult(
                status=400,
                outcome=Outcome.REJECTED.value if exc.inbox_id is not None else None,
                reason=exc.reason,
                inbox_id=exc.inbox_id,
            )
        except StoreError as exc:
            return self._unrecorded(exc)
        failpoint("intake.after_record")
        if self.client is None:
            return self._answer(result)
        return self._refetch(result, body, only_unresolved=result.outcome is Outcome.DUPLICATE)

    def refuse_oversized(
        self, headers: Mapping[str, str], *, size: int | None, limit: int
    ) -> IntakeResult:
        """
        Record (with an empty body) a delivery whose body was too large to read,
        and answer 413. Never raises; if even that cannot be recorded the
        answer is still 413, with ``inbox_id`` ``None``.
        """
        told = f"{size} bytes, over" if size is not None else "over"
        reason = f"body too large ({told} the {limit}-byte limit): not read, not stored"
        return self.refuse_unread(
            b"", headers, reason=reason, status=413, reason_code=ReasonCode.BODY_TOO_LARGE
        )

    def refuse_unread(
        self,
        body: bytes,
        headers: Mapping[str, str],
        *,
        reason: str,
        status: int,
        reason_code: ReasonCode = ReasonCode.MALFORMED,
    ) -> IntakeResult:
        """
        Record a delivery whose body could not be read whole (too large, cut off
        by the client, past the server's body timeout, or chunked where the
        server cannot decode it), with what did arrive and ``reason``, outcome
        ``rejected``; answer ``status``. Its signature is not checked: a partial
        body is never taken for a forgery. Never raises; if even this cannot be
        recorded the answer is still ``status``, with ``inbox_id`` ``None``.
        """
        refused = self._refuse(
            bytes(body),
            _plain_headers(headers),
            verification="not checked",
            reason=reason,
            reason_code=reason_code,
            status=status,
        )
        return attrs.evolve(refused, status=status)

    # ---------------------------------------------------------------- helpers

    def _locked(self, work: Callable[[], _T]) -> _T:
        with self._lock:
            return work()

    def _refuse(
        self,
        body: bytes,
        headers: dict[str, str],
        *,
        verification: str,
        reason: str,
        reason_code: ReasonCode,
        status: int,
    ) -> IntakeResult:
        log.warning("webhook_refused", reason=reason, reason_code=reason_code.value, status=status)
        try:
            recorded = self._locked(
                lambda: self.tracker.refuse_webhook(
                    body,
                    headers=headers,
                    verification=verification,
                    reason=reason,
                    reason_code=reason_code,
                )
            )
        except StoreError as exc:
            return self._unrecorded(exc)
        return IntakeResult(
            status=status,
            outcome=recorded.outcome.value,
            reason=reason,
            inbox_id=recorded.inbox_id,
        )

    @staticmethod
    def _unrecorded(exc: StoreError) -> IntakeResult:
        log.error("webhook_not_recorded", error=type(exc).__name__)
        return IntakeResult(
            status=500,
            outcome=None,
            reason=f"the delivery could not be recorded ({type(exc).__name__}); retry later",
        )

    @staticmethod
    def _answer(
        result: Result, *, refetch: Result | None = None, note: str | None = None
    ) -> IntakeResult:
        reason = result.reason
        if refetch is not None:
            reason += f"; re-fetched charge: {refetch.outcome.value}: {refetch.reason}"
        if note is not None:
            reason += f"; {note}"
        return IntakeResult(
            status=200,
            outcome=result.outcome.value,
            reason=reason,
            inbox_id=result.inbox_id,
            refetch=refetch,
        )

    def _refetch(self, result: Result, body: bytes, *, only_unresolved: bool) -> IntakeResult:
        client = self.client
        assert client is not None
        try:
            event = WebhookEvent.from_json(parse_json(body))
        except (ValueError, KplusFSMError):  # pragma: no cover - the tracker parsed it
            return self._answer(result)
        if event.charge is None:
            return self._answer(result)
        if result.payment is None:
            return self._answer(result, note="no tracked payment, so not re-fetched")
        charge_id = event.charge.charge_id
        if only_unresolved:
            try:
                unresolved = bool(self.tracker.unresolved_hints(charge_id=charge_id, limit=1))
            except StoreError as exc:
                log.warning("webhook_hint_check_failed", error=type(exc).__name__)
                unresolved = True  # a read of the truth is never wrong
            if not unresolved:
                return self._answer(result)
        started = time.perf_counter()
        error: str | None = None
        try:
            charge = client.retrieve_charge(charge_id)
        except GatewayError as exc:
            error = type(exc).__name__
            log.warning(
                "webhook_refetch_failed",
                charge_id=charge_id,
                inbox_id=result.inbox_id,
                error=error,
                http_status=getattr(exc, "http_status", None),
            )
            return self._unresolved(result, charge_id, f"re-fetch of {charge_id} failed ({exc})")
        except Exception as exc:  # a broken client must not turn a recorded delivery into 5xx
            error = type(exc).__name__
            log.exception("webhook_refetch_crashed", charge_id=charge_id, error=error)
            return self._unresolved(result, charge_id, f"re-fetch of {charge_id} failed ({error})")
        finally:
            if self.observer is not None:
                self.observer.refetched(seconds=time.perf_counter() - started, error=error)
        failpoint("intake.before_refetch_record")
        try:
            refetched = self._locked(lambda: self.tracker.record_charge(charge, origin="refetch"))
        except (InvalidInputError, StoreError) as exc:
            log.warning(
                "webhook_refetch_not_recorded", charge_id=charge_id, error=type(exc).__name__
            )
            return self._unresolved(
                result,
                charge_id,
                f"the re-fetched charge {charge_id} was not applied ({type(exc).__name__})",
            )
        failpoint("intake.after_refetch_record")
        return self._answer(result, refetch=refetched)

    def _unresolved(self, result: Result, charge_id: str, what: str) -> IntakeResult:
        if self.on_unresolved is not None:
            try:
                self.on_unresolved(charge_id)
            except Exception as exc:  # a monitor's bug must not cost the answer
                log.exception("webhook_on_unresolved_failed", error=type(exc).__name__)
        return self._answer(
            result, note=f"{what}; the hint stays unresolved and the follow-up re-fetches it"
        )


def intake_from_env(
    environ: Mapping[str, str] = os.environ,
    *,
    db: str | os.PathLike[str] | None = None,
    transport: httpx.BaseTransport | None = None,
    observer: IntakeObserver | None = None,
    on_unresolved: Callable[[str], None] | None = None,
) -> WebhookIntake:
    """
    A :class:`WebhookIntake` configured from the environment:

    - ``KPLUS_FSM_DB``: the event log (``db`` wins; default ``kplus.db``): a
      SQLite file, ``sqlite:///path``, or a ``postgresql://`` URL (several
      receivers on several hosts then share one log; see ``docs/postgresql.md``);
    - ``OMISE_SECRET_KEY``: enables the re-fetch (an :class:`OmiseClient`);
      without it the payload is applied as an unverified snapshot;
    - ``OMISE_PUBLIC_KEY``: passed to the client (source creation only);
    - ``OMISE_API_URL``: the API root (default ``https://api.omise.co``; the
      fake Omise's URL in tests);
    - ``OMISE_WEBHOOK_SECRET``: the webhook secret(s), comma-separated during a
      roll; without it signatures are not checked.

    ``transport`` is handed to the client (tests, the in-process fake);
    ``observer`` and ``on_unresolved`` to the intake. The intake owns the
    tracker and client it opened: :meth:`WebhookIntake.close` closes them.

    Raises:
        ValueError: a webhook secret is not base64.
        StoreError: the event log cannot be opened (SchemaVersionError: newer).
    """
    path = db if db is not None else (environ.get("KPLUS_FSM_DB") or "kplus.db")
    secrets = [s.strip() for s in environ.get("OMISE_WEBHOOK_SECRET", "").split(",") if s.strip()]
    for secret in secrets:
        decode_secret(secret)
    tracker = Tracker(path)
    client: OmiseClient | None = None
    try:
        secret_key = environ.get("OMISE_SECRET_KEY") or None
        if secret_key is not None:
            client = OmiseClient(
                secret_key=secret_key,
                public_key=environ.get("OMISE_PUBLIC_KEY") or None,
                base_url=environ.get("OMISE_API_URL") or DEFAULT_BASE_URL,
                transport=transport,
            )
        intake = WebhookIntake(
            tracker,
            client=client,
            secrets=secrets,
            observer=observer,
            on_unresolved=on_unresolved,
        )
    except BaseException:
        if client is not None:
            client.close()
        tracker.close()
        raise
    intake._closers.append(tracker.close)
    if client is not None:
        intake._closers.append(client.close)
    if not secrets:
        log.warning("webhook_signatures_not_checked", hint="set OMISE_WEBHOOK_SECRET")
    if client is None:
        log.warning(
            "webhook_refetch_disabled",
            hint="set OMISE_SECRET_KEY: payloads are applied as unverified snapshots",
        )
    return intake
