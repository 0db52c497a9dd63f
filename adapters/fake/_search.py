"""
``GET /search?scope=charge`` of the fake Omise: a text query over a documented
set of attributes, the documented filters, newest first, 30 per page.

Private to :mod:`kplus_fsm.adapters.fake`.

What Omise documents (omise.co, *Search query and filters*; Opn docs, same
page) and the fake does:

- results are "most recently created … first" (``order=reverse_chronological``),
  30 per page (``per_page=30``); ``order=chronological`` is honoured;
- ``query`` is "found across one of a set of attributes": for a charge the id,
  the currency, the description and (one version of the page lists it) the
  metadata values. Matching is by words, case-insensitive: every word of the
  query must be a word of one attribute ("order" finds "WooCommerce Order id 85"
  and "Order-123" in omise-php's recorded search of 2025);
- ``filters[amount]`` is in the currency's base unit (THB, not satang):
  ``1000`` finds a charge of ``amount=100000``; ``A..B`` is a range, both ends
  included, ``A..`` and ``..B`` open ones, decimals allowed (``350.5``);
- boolean filters take natural-language values: ``true``/``yes``/``on``,
  ``false``/``no``/``off`` (the page shows ``yes`` and ``on``);
- every filter documented for the charge scope is accepted (``voided`` among
  them: omise-php recorded ``filters[voided]=true`` answered 200); an unknown
  one is refused 400 ``invalid_filter`` (the code omise-swift decodes).

Invariants: a search never changes the account; it reads a snapshot taken
under the ledger's lock; charges younger than the index lag are invisible to
it (the listing ``GET /charges`` is not affected).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import attrs

from ._objects import ChargeRecord, FakeOmiseError, as_int, as_str, parse_time

#: The page size when ``per_page`` is not given (documented).
DEFAULT_PER_PAGE: Final = 30
#: The largest ``per_page`` the fake accepts (an assumption, as for lists).
MAX_PER_PAGE: Final = 100
#: The words of a text: runs of letters, digits and underscores, lower-cased.
_WORD: Final = re.compile(r"\w+", re.UNICODE)
_TRUE: Final = frozenset({"true", "yes", "on"})
_FALSE: Final = frozenset({"false", "no", "off"})
#: Minor units per base unit (THB: 100 satang). The fake charges THB only.
_SUBUNITS: Final = Decimal(100)

Check = Callable[[ChargeRecord], bool]


@attrs.frozen(kw_only=True)
class SearchIndex:
    """How the fake's search index behaves (see :class:`FakeOptions`)."""

    metadata: bool = True
    """Whether ``query`` finds metadata values."""
    lag: dt.timedelta = dt.timedelta(0)
    """Charges created less than this long ago are not in the index yet."""


def words(text: str) -> set[str]:
    """The searchable words of ``text``."""
    return {w.lower() for w in _WORD.findall(text)}


def _flatten(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _flatten(item)
    elif isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    elif isinstance(value, bool):
        yield "true" if value else "false"
    elif isinstance(value, str | int | float):
        yield str(value)


def query_attributes(charge: ChargeRecord, index: SearchIndex) -> list[str]:
    """The texts ``query`` looks in, for one charge."""
    texts = [charge.id, charge.currency]
    if charge.description:
        texts.append(charge.description)
    if index.metadata:
        texts.extend(_flatten(charge.metadata))
    return texts


def query_matches(charge: ChargeRecord, query: str, index: SearchIndex) -> bool:
    """Whether every word of ``query`` is a word of one of the charge's attributes."""
    if not query.strip():
        return True
    wanted = words(query)
    if not wanted:
        return False
    return any(wanted <= words(text) for text in query_attributes(charge, index))


# --- filters ---------------------------------------------------------------------------


def _bad(name: str, why: str) -> FakeOmiseError:
    return FakeOmiseError(400, "invalid_filter", f"filters[{name}] {why}")


def _boolean(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _bad(name, "is a boolean: true, yes, on, false, no or off")


def _decimal(name: str, text: str) -> Decimal:
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        raise _bad(name, "is an amount in base units, N or A..B") from None
    if not number.is_finite():
        raise _bad(name, "is an amount in base units, N or A..B")
    return number


def _amount_range(name: str, text: str) -> tuple[Decimal | None, Decimal | None]:
    low, sep, high = text.strip().partition("..")
    if not sep:
        exact = _decimal(name, low)
        return exact, exact
    if not low.strip() and not high.strip():
        raise _bad(name, "is an amount in base units, N or A..B")
    lo = _decimal(name, low) if low.strip() else None
    hi = _decimal(name, high) if high.strip() else None
    return lo, hi


def _in_range(value: Decimal, bounds: tuple[Decimal | None, Decimal | None]) -> bool:
    lo, hi = bounds
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _day_or_time(name: str, text: str, *, end: bool) -> dt.datetime:
    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
            return day + dt.timedelta(days=1, microseconds=-1) if end else day
        return parse_time(text, f"filters[{name}]")
    except (FakeOmiseError, ValueError):
        raise _bad(name, "is an ISO 8601 date or time, or a range A..B") from None


def _time_range(name: str, text: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    low, sep, high = text.strip().partition("..")
    if not sep:
        # The documented meaning: "limiting the beginning of returned records".
        return _day_or_time(name, low, end=False), None
    lo = _day_or_time(name, low, end=False) if low.strip() else None
    hi = _day_or_time(name, high, end=True) if high.strip() else None
    return lo, hi


def _bool_filter(get: Callable[[ChargeRecord], bool]) -> Callable[[str, str], Check]:
    def build(name: str, text: str) -> Check:
        want = _boolean(name, text)
        return lambda c: get(c) is want

    return build


def _amount_filter(get: Callable[[ChargeRecord], int]) -> Callable[[str, str], Check]:
    def build(name: str, text: str) -> Check:
        bounds = _amount_range(name, text)
        return lambda c: _in_range(Decimal(get(c)) / _SUBUNITS, bounds)

    return build


def _time_filter(get: Callable[[ChargeRecord], dt.datetime | None]) -> Callable[[str, str], Check]:
    def build(name: str, text: str) -> Check:
        lo, hi = _time_range(name, text)

        def check(charge: ChargeRecord) -> bool:
            when = get(charge)
            return when is not None and (lo is None or when >= lo) and (hi is None or when <= hi)

        return check

    return build


def _text_filter(get: Callable[[ChargeRecord], str | None]) -> Callable[[str, str], Check]:
    def build(name: str, text: str) -> Check:
        want = text.strip().lower()
        return lambda c: (get(c) or "").lower() == want

    return build


def _int_filter(get: Callable[[ChargeRecord], int | None]) -> Callable[[str, str], Check]:
    def build(name: str, text: str) -> Check:
        try:
            want = int(text.strip())
        except ValueError:
            raise _bad(name, "is an integer") from None
        return lambda c: get(c) == want

    return build


def _refunded(name: str, text: str) -> Check:
    """``refunded``: a boolean (any refund) or an amount in base units."""
    if text.strip().lower() in _TRUE | _FALSE:
        want = _boolean(name, text)
        return lambda c: (c.refunded_amount > 0) is want
    bounds = _amount_range(name, text)
    return lambda c: _in_range(Decimal(c.refunded_amount) / _SUBUNITS, bounds)


def _successful(c: ChargeRecord) -> bool:
    return c.status == "successful"


#: Every filter documented for the charge scope: the table of omise.co's *Search
#: query and filters* page (amount, authorized, capture, captured, captured_at,
#: card_last_digits, created, customer_present, failure_code, failure_message, …)
#: and the charge search reference's list (capture_id, disputed, is_installment,
#: refunded, refund_amount, reversed, safe, scheduled, source_of_fund,
#: source_type, status, voided, installment_terms, acquirer_reference_number),
#: plus ``paid`` (a field of every charge). Read for a K PLUS charge: no card, no
#: customer, no dispute, no schedule, no installments, never voided or reversed.
FILTERS: Final[Mapping[str, Callable[[str, str], Check]]] = {
    "acquirer_reference_number": _text_filter(lambda c: None),
    "amount": _amount_filter(lambda c: c.amount),
    "authorized": _bool_filter(_successful),
    "capture": _bool_filter(lambda c: True),
    "capture_id": _text_filter(lambda c: None),
    "captured": _bool_filter(_successful),
    "captured_at": _time_filter(lambda c: c.paid_at),
    "card_last_digits": _text_filter(lambda c: None),
    "created": _time_filter(lambda c: c.created_at),
    "currency": _text_filter(lambda c: c.currency),
    "customer_present": _bool_filter(lambda c: False),
    "disputed": _bool_filter(lambda c: False),
    "failure_code": _text_filter(lambda c: c.failure_code),
    "failure_message": _text_filter(lambda c: c.failure_message),
    "installment_terms": _int_filter(lambda c: None),
    "is_installment": _bool_filter(lambda c: False),
    "paid": _bool_filter(_successful),
    "refund_amount": _amount_filter(lambda c: c.refunded_amount),
    "refunded": _refunded,
    "reversed": _bool_filter(lambda c: False),
    "safe": _bool_filter(lambda c: True),
    "scheduled": _bool_filter(lambda c: False),
    "source_of_fund": _text_filter(lambda c: "offsite"),
    "source_type": _text_filter(lambda c: c.source_type),
    "status": _text_filter(lambda c: c.status),
    "voided": _bool_filter(lambda c: False),
}


def filter_checks(filters: Mapping[str, Any]) -> list[Check]:
    """
    The checks of ``filters[…]``.

    Raises:
        FakeOmiseError: 400 ``invalid_filter`` for an unknown filter or a bad value.
    """
    checks = []
    for name, value in filters.items():
        build = FILTERS.get(name)
        if build is None:
            raise _bad(f"{name!s:.40}", "is not a filter of the charge scope")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            raise _bad(name, "must be a single value")
        checks.append(build(name, text))
    return checks


@attrs.frozen(kw_only=True)
class SearchRequest:
    """A parsed ``GET /search`` request."""

    scope: str
    query: str
    filters: dict[str, Any]
    checks: list[Check]
    page: int
    per_page: int
    order: str

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> SearchRequest:
        """
        Raises:
            FakeOmiseError: 400 ``invalid_scope``, ``invalid_filter``,
                ``invalid_page`` or ``bad_request``.
        """
        scope = params.get("scope")
        if scope != "charge":
            raise FakeOmiseError(400, "invalid_scope", "this fake searches the charge scope only")
        query = as_str(params.get("query", ""), "query")
        filters = params.get("filters", {})
        if not isinstance(filters, dict):
            raise FakeOmiseError(400, "invalid_filter", "filters must be an object")
        checks = filter_checks(filters)
        page = as_int(params.get("page", 1), "page", "invalid_page")
        per_page = as_int(params.get("per_page", DEFAULT_PER_PAGE), "per_page", "invalid_page")
        if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
            raise FakeOmiseError(400, "invalid_page", "page must be >= 1, per_page 1..100")
        order = as_str(params.get("order", "reverse_chronological"), "order")
        if order not in ("chronological", "reverse_chronological"):
            raise FakeOmiseError(
                400, "bad_request", "order must be chronological or reverse_chronological"
            )
        return cls(
            scope=scope,
            query=query,
            filters=dict(filters),
            checks=checks,
            page=page,
            per_page=per_page,
            order=order,
        )


def run_search(
    request: SearchRequest,
    charges: Sequence[ChargeRecord],
    *,
    now: dt.datetime,
    index: SearchIndex,
    render: Callable[[ChargeRecord], dict[str, Any]],
) -> dict[str, Any]:
    """
    The search object answering ``request`` over ``charges`` (oldest first, as
    the ledger keeps them), with the keys of omise-php's 2025 recording.
    """
    visible = [c for c in charges if now - c.created_at >= index.lag]
    found = [
        c
        for c in visible
        if query_matches(c, request.query, index) and all(check(c) for check in request.checks)
    ]
    found.sort(key=lambda c: c.created_at)  # stable: creation order breaks ties
    if request.order == "reverse_chronological":
        found.reverse()
    start = (request.page - 1) * request.per_page
    return {
        "object": "search",
        "export": None,
        "data": [render(c) for c in found[start : start + request.per_page]],
        "page": request.page,
        "per_page": request.per_page,
        "total": len(found),
        "total_pages": -(-len(found) // request.per_page),
        "filters": request.filters,
        "location": "/search",
        "order": request.order,
        "query": request.query,
        "scope": request.scope,
        "aggregate_level": None,
    }
