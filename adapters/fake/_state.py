"""
The fake Omise's account: sources, charges and events behind one lock, with
the rules Omise enforces (omise-facts §1-§5) and the JSON it answers.

Private to :mod:`kplus_fsm.adapters.fake`.

Invariants: every public method takes the lock and checks everything before it
changes anything (a refused request changes nothing); a charge leaves
``pending`` once, except through ``force``; each change of a charge records one
event, delivered as a webhook, except a silent expiry (``expiry_webhook`` off),
which records none: only a read shows it.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ._objects import (
    PLATFORM_TYPES,
    SOURCE_TYPE,
    ChargeRecord,
    Clock,
    FakeOmiseError,
    IdMaker,
    SourceRecord,
    as_str,
    check_amount,
    check_currency,
    failure_message,
    iso,
    page_bounds,
    parse_time,
    pretty_json_bytes,
    render_charge,
    render_list,
    render_source,
    time_window,
)
from ._options import MIN_SOURCE_API_VERSION, FakeOptions, version_at_least
from ._search import SearchIndex, SearchRequest, run_search
from ._webhooks import WebhookDelivery

#: The failure code of a charge the bank gave up on (the K PLUS guide's failure table).
BANK_TIMEOUT_CODE = "payment_expired"


@attrs.define
class _Event:
    id: str
    key: str
    charge_id: str
    created_at: dt.datetime
    data: dict[str, Any]


class Ledger:
    """
    The state of one fake account. Every public method takes the lock, checks
    everything before changing anything, and returns JSON-ready dicts.
    ``publish`` is called (under the lock) with each new event's id, key and
    payload when ``delivers()`` says deliveries are made at all;
    ``deliveries`` returns the delivery records of an event; ``options``
    returns the switches in force.
    """

    def __init__(
        self,
        *,
        now: Clock,
        options: Callable[[], FakeOptions],
        ids: IdMaker,
        publish: Callable[[str, str, bytes], None],
        delivers: Callable[[], bool],
        deliveries: Callable[[str], list[WebhookDelivery]],
    ) -> None:
        self.lock = threading.RLock()
        self._now = now
        self._options = options
        self._ids = ids
        self._publish = publish
        self._delivers = delivers
        self._deliveries = deliveries
        self._sources: dict[str, SourceRecord] = {}
        self._charges: dict[str, ChargeRecord] = {}
        self._events: dict[str, _Event] = {}

    def counts(self) -> tuple[int, int]:
        """How many charges and events exist."""
        with self.lock:
            return len(self._charges), len(self._events)

    # --- sources and charges ---------------------------------------------------------

    def create_source(self, params: Mapping[str, Any], api_version: str | None) -> dict[str, Any]:
        """``POST /sources``; ``api_version`` is the request's ``Omise-Version``, if any."""
        with self.lock:
            self._check_service(api_version)
            source = self._new_source(params, "invalid_source")
            self._sources[source.id] = source
            return render_source(source)

    def source(self, source_id: str) -> dict[str, Any]:
        """``GET /sources/:id``."""
        with self.lock:
            source = self._sources.get(source_id)
            if source is None:
                raise FakeOmiseError(404, "not_found", f"source {source_id} was not found")
            return render_source(source)

    def create_charge(
        self, params: Mapping[str, Any], origin: str, api_version: str | None
    ) -> dict[str, Any]:
        """``POST /charges``; ``origin`` prefixes the ``authorize_uri``."""
        with self.lock:
            self._check_service(api_version)
            now = self._now().replace(microsecond=0)
            amount = check_amount(params.get("amount"))
            currency = check_currency(params.get("currency"), "invalid_charge")
            raw = params.get("source")
            if isinstance(raw, dict):
                source = self._new_source(
                    {"amount": amount, "currency": currency, **raw}, "invalid_source"
                )
                new_source = True
            elif raw is None or raw == "":
                raise FakeOmiseError(
                    400, "invalid_charge", "source is required (only mobile_banking_kbank here)"
                )
            else:
                source_id = as_str(raw, "source", "invalid_charge")
                found = self._sources.get(source_id)
                if found is None:
                    raise FakeOmiseError(404, "not_found", f"source {source_id} was not found")
                if found.charge_id is not None:
                    raise FakeOmiseError(400, "invalid_charge", "source has already been used")
                source, new_source = found, False
            if source.amount != amount or source.currency != currency:
                raise FakeOmiseError(
                    400, "invalid_charge", "amount and currency must match the source's"
                )
            return_uri = params.get("return_uri")
            if not isinstance(return_uri, str) or not return_uri.strip():
                raise FakeOmiseError(400, "invalid_charge", "return_uri is required")
            description = params.get("description")
            if description is not None:
                description = as_str(description, "description", "invalid_charge")
            metadata = params.get("metadata", {})
            if not isinstance(metadata, dict):
                raise FakeOmiseError(400, "invalid_charge", "metadata must be an object")
            expires_at = now + self._options().lifetime
            if "expires_at" in params:
                expires_at = parse_time(params["expires_at"], "expires_at").replace(microsecond=0)
                if expires_at <= now:
                    raise FakeOmiseError(400, "invalid_charge", "expires_at must be in the future")
            # Everything is valid: commit.
            if new_source:
                self._sources[source.id] = source
            charge_id = self._ids("chrg_test_")
            charge = ChargeRecord(
                id=charge_id,
                amount=amount,
                currency=currency,
                source_id=source.id,
                description=description,
                metadata=metadata,
                return_uri=return_uri,
                authorize_uri=f"{origin}/test/authorize/{charge_id}",
                created_at=now,
                expires_at=expires_at,
            )
            source.charge_id = charge_id
            source.charge_status = "pending"
            source.provider_reference = self._ids.token(16)
            self._charges[charge_id] = charge
            self._emit("charge.create", charge)
            return self._render(charge)

    def charge(self, charge_id: str) -> dict[str, Any]:
        """``GET /charges/:id``."""
        with self.lock:
            return self._render(self._get_charge(charge_id))

    def charges(self) -> list[dict[str, Any]]:
        """Every charge, oldest first."""
        with self.lock:
            return [self._render(c) for c in self._charges.values()]

    def finish(
        self, charge_id: str, status: str, failure_code: str | None, *, force: bool
    ) -> dict[str, Any]:
        """Complete a charge as ``status`` (emits ``charge.complete``)."""
        with self.lock:
            self.sweep()
            charge = self._pending(charge_id, "invalid_charge", force=force)
            self._complete(charge, status, failure_code, self._now())
            return self._render(charge)

    def expire_now(self, charge_id: str, *, force: bool) -> dict[str, Any]:
        """
        End a charge now the way the expiry model ends an abandoned one: the bank
        times out (``failed``, ``payment_expired``) or its lifetime is over
        (``expired``, ``expires_at`` moved to now), with a webhook or silently.
        """
        with self.lock:
            self.sweep()
            charge = self._pending(charge_id, "failed_expire", force=force)
            now = self._now().replace(microsecond=0)
            options = self._options()
            if options.timeout is not None:
                self._complete(
                    charge, "failed", BANK_TIMEOUT_CODE, now, webhook=options.expiry_webhook
                )
            else:
                charge.expires_at = now
                self._complete(charge, "expired", None, now, webhook=options.expiry_webhook)
            return self._render(charge)

    def expire_endpoint(self, charge_id: str) -> dict[str, Any]:
        """
        ``POST /charges/:id/expire``: documented for Alipay barcode only, so
        refused ``failed_expire`` for K PLUS unless the ``expire_endpoint``
        switch is on; then as recorded for an app-redirect charge (omise-php's
        ``expire-post.json``): ``expired``, ``expires_at == expired_at == now``.
        """
        with self.lock:
            self.sweep()
            charge = self._pending(charge_id, "failed_expire", force=False)
            if not self._options().expire_endpoint:
                raise FakeOmiseError(
                    400,
                    "failed_expire",
                    f"a {charge.source_type} charge cannot be set to expire",
                )
            now = self._now().replace(microsecond=0)
            charge.expires_at = now
            self._complete(charge, "expired", None, now)
            return self._render(charge)

    def update_charge(self, charge_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """``PATCH /charges/:id`` (``description``, ``metadata``); emits ``charge.update``."""
        with self.lock:
            charge = self._get_charge(charge_id)
            description = charge.description
            metadata = charge.metadata
            if "description" in params:
                description = as_str(params["description"], "description", "invalid_charge")
            if "metadata" in params:
                if not isinstance(params["metadata"], dict):
                    raise FakeOmiseError(400, "invalid_charge", "metadata must be an object")
                metadata = dict(params["metadata"])
            charge.description, charge.metadata = description, metadata
            self._emit("charge.update", charge)
            return self._render(charge)

    def sweep(self) -> list[str]:
        """
        End the pending charges whose time is up (the bank timeout, then
        ``expires_at``, whichever comes first); return their ids.
        """
        with self.lock:
            now = self._now()
            options = self._options()
            done = []
            for charge in self._charges.values():
                if charge.status != "pending":
                    continue
                timeout = (
                    charge.created_at + options.timeout if options.timeout is not None else None
                )
                if timeout is not None and timeout <= now and timeout < charge.expires_at:
                    self._complete(
                        charge, "failed", BANK_TIMEOUT_CODE, timeout, webhook=options.expiry_webhook
                    )
                elif charge.expires_at <= now:
                    self._complete(
                        charge, "expired", None, charge.expires_at, webhook=options.expiry_webhook
                    )
                else:
                    continue
                done.append(charge.id)
            return done

    # --- lists, events, search --------------------------------------------------------

    def list_charges(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /charges``."""
        with self.lock:
            return self._page(list(self._charges.values()), params, "/charges", self._render)

    def list_events(self, params: Mapping[str, Any], charge_id: str | None) -> dict[str, Any]:
        """``GET /events`` or ``GET /charges/:id/events``."""
        with self.lock:
            if charge_id is None:
                events, location = list(self._events.values()), "/events"
            else:
                charge = self._get_charge(charge_id)
                events = [self._events[e] for e in charge.event_ids]
                location = f"/charges/{charge_id}/events"
            return self._page(events, params, location, self._render_event)

    def event(self, event_id: str) -> dict[str, Any]:
        """``GET /events/:id``, with its ``webhook_deliveries``."""
        with self.lock:
            event = self._events.get(event_id)
            if event is None:
                raise FakeOmiseError(404, "not_found", f"event {event_id} was not found")
            return self._render_event(event)

    def events(self, charge_id: str | None) -> list[dict[str, Any]]:
        """Every event (of one charge, or all), oldest first."""
        with self.lock:
            return [
                self._render_event(e)
                for e in self._events.values()
                if charge_id is None or e.charge_id == charge_id
            ]

    def search(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /search?scope=charge&query=…&filters[…]=…`` (see ``_search``)."""
        request = SearchRequest.parse(params)
        options = self._options()
        index = SearchIndex(
            metadata=options.search_metadata, lag=dt.timedelta(seconds=options.search_lag)
        )
        with self.lock:
            return run_search(
                request,
                list(self._charges.values()),
                now=self._now(),
                index=index,
                render=self._render,
            )

    # --- internals ------------------------------------------------------------------

    def _get_charge(self, charge_id: str) -> ChargeRecord:
        charge = self._charges.get(charge_id)
        if charge is None:
            raise FakeOmiseError(404, "not_found", f"charge {charge_id} was not found")
        return charge

    def _pending(self, charge_id: str, code: str, *, force: bool) -> ChargeRecord:
        charge = self._get_charge(charge_id)
        if charge.status != "pending" and not force:
            raise FakeOmiseError(400, code, f"charge is not pending (it is {charge.status})")
        return charge

    def _check_service(self, api_version: str | None) -> None:
        """K PLUS must be enabled, and sources need API version 2017-11-02 or newer."""
        options = self._options()
        version = api_version or options.api_version
        if not options.kplus_enabled:
            raise FakeOmiseError(
                404, "service_not_found", f"{SOURCE_TYPE} is not enabled for this account"
            )
        if not version_at_least(version, MIN_SOURCE_API_VERSION):
            raise FakeOmiseError(
                404,
                "service_not_found",
                f"API version {version!s:.20} does not support sources "
                f"(minimum {MIN_SOURCE_API_VERSION})",
            )

    def _new_source(self, params: Mapping[str, Any], code: str) -> SourceRecord:
        kind = params.get("type")
        if kind is None:
            raise FakeOmiseError(400, code, "type is required")
        if kind != SOURCE_TYPE:
            raise FakeOmiseError(400, code, f"type {kind!s:.40} is not supported by this fake")
        platform = params.get("platform_type")
        if platform is not None:
            platform = as_str(platform, "platform_type", code).upper()
            if platform not in PLATFORM_TYPES:
                raise FakeOmiseError(400, code, "platform_type must be IOS, ANDROID or WEB")
        return SourceRecord(
            id=self._ids("src_test_"),
            amount=check_amount(params.get("amount")),
            currency=check_currency(params.get("currency"), code),
            platform_type=platform,
            created_at=self._now().replace(microsecond=0),
        )

    def _render(self, charge: ChargeRecord) -> dict[str, Any]:
        return render_charge(charge, self._sources[charge.source_id], self._now())

    def _event_body(self, event: _Event) -> dict[str, Any]:
        # The key order of the recorded delivery (omise-php's event fixture).
        return {
            "object": "event",
            "id": event.id,
            "livemode": False,
            "location": f"/events/{event.id}",
            "webhook_deliveries": [],
            "data": event.data,
            "key": event.key,
            "created_at": iso(event.created_at),
        }

    def _render_event(self, event: _Event) -> dict[str, Any]:
        body = self._event_body(event)
        body["webhook_deliveries"] = [d.to_json() for d in self._deliveries(event.id)]
        return body

    def _emit(self, key: str, charge: ChargeRecord) -> None:
        event = _Event(
            id=self._ids("evnt_test_"),
            key=key,
            charge_id=charge.id,
            created_at=self._now().replace(microsecond=0),
            data=self._render(charge),
        )
        self._events[event.id] = event
        charge.event_ids.append(event.id)
        if self._delivers():  # the body is written only for a delivery
            self._publish(event.id, key, pretty_json_bytes(self._event_body(event)))

    def _complete(
        self,
        charge: ChargeRecord,
        status: str,
        failure_code: str | None,
        when: dt.datetime,
        *,
        webhook: bool = True,
    ) -> None:
        """
        Move ``charge`` to ``status`` as of ``when``; record ``charge.complete``
        (and deliver it) unless ``webhook`` is False: then the change is silent,
        as an expiry Omise announces to nobody.
        """
        when = when.replace(microsecond=0)
        charge.status = status
        charge.failure_code = failure_code
        charge.failure_message = failure_message(failure_code) if failure_code else None
        charge.paid_at = when if status == "successful" else None
        charge.authorized_at = when if status == "successful" else None
        # After an expiry expired_at equals expires_at (omise-php's 2025 recordings).
        charge.expired_at = charge.expires_at if status == "expired" else None
        if status == "successful" and charge.transaction is None:
            charge.transaction = self._ids("trxn_test_")
        self._sources[charge.source_id].charge_status = status
        if webhook:
            self._emit("charge.complete", charge)

    def _page(
        self,
        records: Sequence[Any],
        params: Mapping[str, Any],
        location: str,
        render: Callable[[Any], dict[str, Any]],
    ) -> dict[str, Any]:
        start, end = time_window(params, self._now())
        offset, limit, order = page_bounds(params)
        chosen = [r for r in records if start <= r.created_at <= end]
        if order == "reverse_chronological":
            chosen.reverse()
        return render_list(
            [render(r) for r in chosen[offset : offset + limit]],
            location=location,
            offset=offset,
            limit=limit,
            total=len(chosen),
            order=order,
            start=start,
            end=end,
        )
