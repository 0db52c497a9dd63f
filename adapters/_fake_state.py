"""
The fake Omise's account: sources, charges and events behind one lock, with
the rules Omise enforces (omise-facts §1-§5) and the JSON it answers.

Private to :mod:`kplus_fsm.adapters.fake`.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs

from ._fake_objects import (
    MAX_AMOUNT,
    MIN_AMOUNT,
    PLATFORM_TYPES,
    SOURCE_TYPE,
    ChargeRecord,
    Clock,
    FakeOmiseError,
    IdMaker,
    SourceRecord,
    as_int,
    as_str,
    check_amount,
    check_currency,
    failure_message,
    iso,
    json_bytes,
    page_bounds,
    parse_time,
    render_charge,
    render_list,
    render_source,
    time_window,
)
from ._fake_webhooks import WebhookDelivery

_SEARCH_FILTERS: Final = frozenset(
    {"amount", "authorized", "captured", "currency", "failure_code", "paid", "status"}
)


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
    payload; ``deliveries`` returns the delivery records of an event.
    """

    def __init__(
        self,
        *,
        now: Clock,
        lifetime: dt.timedelta,
        ids: IdMaker,
        publish: Callable[[str, str, bytes], None],
        deliveries: Callable[[str], list[WebhookDelivery]],
    ) -> None:
        self.lock = threading.RLock()
        self._now = now
        self._lifetime = lifetime
        self._ids = ids
        self._publish = publish
        self._deliveries = deliveries
        self._sources: dict[str, SourceRecord] = {}
        self._charges: dict[str, ChargeRecord] = {}
        self._events: dict[str, _Event] = {}

    def counts(self) -> tuple[int, int]:
        """How many charges and events exist."""
        with self.lock:
            return len(self._charges), len(self._events)

    # --- sources and charges ---------------------------------------------------------

    def create_source(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /sources``."""
        with self.lock:
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

    def create_charge(self, params: Mapping[str, Any], origin: str) -> dict[str, Any]:
        """``POST /charges``; ``origin`` prefixes the ``authorize_uri``."""
        with self.lock:
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
            expires_at = now + self._lifetime
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
            charge = self._get_charge(charge_id)
            if charge.status != "pending" and not force:
                code = "failed_expire" if status == "expired" else "invalid_charge"
                raise FakeOmiseError(400, code, f"charge is not pending (it is {charge.status})")
            now = self._now()
            if status == "expired":
                charge.expires_at = now.replace(microsecond=0)
            self._complete(charge, status, failure_code, now)
            return self._render(charge)

    def sweep(self) -> list[str]:
        """Expire the pending charges whose ``expires_at`` has passed; return their ids."""
        with self.lock:
            now = self._now()
            due = [
                c for c in self._charges.values() if c.status == "pending" and c.expires_at <= now
            ]
            for charge in due:
                self._complete(charge, "expired", None, now)
            return [c.id for c in due]

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
        """``GET /search?scope=charge&query=…&filters[…]=…``."""
        scope = params.get("scope")
        if scope != "charge":
            raise FakeOmiseError(400, "invalid_scope", "this fake searches the charge scope only")
        query = as_str(params.get("query", ""), "query").strip()
        filters = params.get("filters", {})
        if not isinstance(filters, dict):
            raise FakeOmiseError(400, "invalid_filters", "filters must be an object")
        checks = [_search_filter(name, value) for name, value in filters.items()]
        page = as_int(params.get("page", 1), "page", "invalid_page")
        per_page = as_int(params.get("per_page", 30), "per_page", "invalid_page")
        if page < 1 or not 1 <= per_page <= 100:
            raise FakeOmiseError(400, "invalid_page", "page must be >= 1, per_page 1..100")
        order = as_str(params.get("order", "chronological"), "order")
        if order not in ("chronological", "reverse_chronological"):
            raise FakeOmiseError(400, "bad_request", "order is invalid")
        with self.lock:
            found = [
                c
                for c in self._charges.values()
                if _query_matches(c, query) and all(check(c) for check in checks)
            ]
            if order == "reverse_chronological":
                found.reverse()
            start = (page - 1) * per_page
            data = [self._render(c) for c in found[start : start + per_page]]
        return {
            "object": "search",
            "order": order,
            "scope": scope,
            "query": query,
            "filters": filters,
            "page": page,
            "per_page": per_page,
            "location": "/search",
            "total": len(found),
            "total_pages": -(-len(found) // per_page),
            "data": data,
        }

    # --- internals ------------------------------------------------------------------

    def _get_charge(self, charge_id: str) -> ChargeRecord:
        charge = self._charges.get(charge_id)
        if charge is None:
            raise FakeOmiseError(404, "not_found", f"charge {charge_id} was not found")
        return charge

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
        return {
            "object": "event",
            "id": event.id,
            "livemode": False,
            "location": f"/events/{event.id}",
            "key": event.key,
            "created_at": iso(event.created_at),
            "data": event.data,
            "webhook_deliveries": [],
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
        self._publish(event.id, key, json_bytes(self._event_body(event)))

    def _complete(
        self, charge: ChargeRecord, status: str, failure_code: str | None, now: dt.datetime
    ) -> None:
        now = now.replace(microsecond=0)
        charge.status = status
        charge.failure_code = failure_code
        charge.failure_message = failure_message(failure_code) if failure_code else None
        charge.paid_at = now if status == "successful" else None
        charge.expired_at = now if status == "expired" else None
        if status == "successful" and charge.transaction is None:
            charge.transaction = self._ids("trxn_test_")
        self._sources[charge.source_id].charge_status = status
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


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


def _query_matches(charge: ChargeRecord, query: str) -> bool:
    """A charge id, the description, or any metadata value, exactly."""
    if not query:
        return True
    if query in (charge.id, charge.description):
        return True
    return any(_text(v) == query for v in charge.metadata.values())


def _search_filter(name: str, value: Any) -> Callable[[ChargeRecord], bool]:
    text = _text(value)
    if name not in _SEARCH_FILTERS or text is None:
        raise FakeOmiseError(400, "invalid_filters", f"filter {name!s:.40} is not supported")
    text = text.strip()
    if name == "amount":
        low, sep, high = text.partition("..")
        try:
            lo = int(low) if low else MIN_AMOUNT
            hi = int(high) if sep and high else (MAX_AMOUNT if sep else lo)
        except ValueError:
            raise FakeOmiseError(400, "invalid_filters", "amount is N or N..M") from None
        return lambda c: lo <= c.amount <= hi
    if name in ("authorized", "captured", "paid"):
        if text not in ("true", "false"):
            raise FakeOmiseError(400, "invalid_filters", f"{name} is true or false")
        want = text == "true"
        return lambda c: (c.status == "successful") == want
    if name == "currency":
        return lambda c: c.currency == text.upper()
    if name == "failure_code":
        return lambda c: c.failure_code == text
    return lambda c: c.status == text
