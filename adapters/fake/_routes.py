"""
The routes of the fake Omise: the API, the ``authorize_uri`` page, and the
test controls under ``/_fake/``. Each handler takes the fake, the request, its
parsed parameters and the ids captured from the path.

The handlers drive the fake through :class:`Fake`, a protocol that
:class:`~._account.FakeOmise` satisfies: the fake dispatches to :data:`ROUTES`,
so this module must not import it back (no import cycle, not even for types).
A control does what the fake's Python method of the same name does, and
answers a bad parameter with a 400 ``bad_request`` error object.

Private to :mod:`kplus_fsm.adapters.fake`.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, cast

import attrs
import httpx

from ._faults import FAULT_KINDS, Fault, FaultKind
from ._objects import FAILURE_MESSAGES, FakeOmiseError, as_int, as_str, iso, json_response
from ._options import FakeOptions, option_changes
from ._state import Ledger
from ._webhooks import DeliveryWorker, ReleaseOrder, WebhookDelivery

Params = dict[str, Any]
Ids = tuple[str, ...]


class Fake(Protocol):
    """What the routes use of the fake: its parts, its time, its Python controls."""

    @property
    def _ledger(self) -> Ledger: ...

    @property
    def _worker(self) -> DeliveryWorker: ...

    @property
    def _base_url(self) -> str | None: ...

    @property
    def options(self) -> FakeOptions: ...

    def set_options(self, **changes: Any) -> FakeOptions: ...

    def now(self) -> dt.datetime: ...

    def advance_clock(self, delta: dt.timedelta | float) -> list[str]: ...

    def mark_as_paid(self, charge_id: str, *, force: bool = ...) -> dict[str, Any]: ...

    def mark_as_failed(
        self, charge_id: str, failure_code: str = ..., *, force: bool = ...
    ) -> dict[str, Any]: ...

    def expire(self, charge_id: str, *, force: bool = ...) -> dict[str, Any]: ...

    def duplicate_next(self, times: int = ..., *, events: int = ...) -> None: ...

    def drop_next(self, events: int = ...) -> None: ...

    def delay_next(self, seconds: float, *, events: int = ...) -> None: ...

    def hold_webhooks(self) -> None: ...

    def release_webhooks(self, order: ReleaseOrder = ...) -> list[str]: ...

    def held_webhooks(self) -> list[str]: ...

    def wait_idle(self, timeout: float = ...) -> bool: ...

    def deliveries(self, event_id: str | None = ...) -> list[WebhookDelivery]: ...

    def inject_fault(
        self,
        route: str,
        kind: FaultKind,
        *,
        times: int = ...,
        status: int | None = ...,
        code: str | None = ...,
        delay: float | None = ...,
        retry_after: int | None = ...,
    ) -> Fault: ...

    def clear_faults(self) -> int: ...


Handler = Callable[[Fake, httpx.Request, Params, Ids], httpx.Response]

#: (method, path regex, handler, who may call: "none", "public" or "secret")
ROUTES: list[tuple[str, re.Pattern[str], Handler, str]] = []


def _route(method: str, pattern: str, auth: str) -> Callable[[Handler], Handler]:
    regex = re.compile("^" + re.sub(r":\w+", r"([^/]+)", pattern) + "$")

    def register(func: Handler) -> Handler:
        ROUTES.append((method, regex, func, auth))
        return func

    return register


def _origin(fake: Fake, request: httpx.Request) -> str:
    return fake._base_url or f"{request.url.scheme}://{request.url.netloc.decode('ascii')}"


# --- the API -------------------------------------------------------------------------


@_route("GET", "/", "none")
def ready(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response({"object": "fake_omise", "ready": True})


def _api_version(request: httpx.Request) -> str | None:
    """The request's ``Omise-Version`` (None: the account's default applies)."""
    return request.headers.get("Omise-Version") or None


@_route("POST", "/sources", "public")
def create_source(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response(fake._ledger.create_source(params, _api_version(request)))


@_route("GET", "/sources/:id", "public")
def source(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response(fake._ledger.source(ids[0]))


@_route("POST", "/charges", "secret")
def create_charge(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    body = fake._ledger.create_charge(params, _origin(fake, request), _api_version(request))
    fake._worker.start()
    return json_response(body)


@_route("GET", "/charges", "secret")
def charges(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response(fake._ledger.list_charges(params))


@_route("GET", "/charges/:id", "secret")
def charge(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response(fake._ledger.charge(ids[0]))


@_route("PATCH", "/charges/:id", "secret")
def update_charge(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response(fake._ledger.update_charge(ids[0], params))


@_route("GET", "/charges/:id/events", "secret")
def charge_events(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response(fake._ledger.list_events(params, ids[0]))


@_route("GET", "/events", "secret")
def events(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response(fake._ledger.list_events(params, None))


@_route("GET", "/events/:id", "secret")
def event(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response(fake._ledger.event(ids[0]))


@_route("POST", "/charges/:id/mark_as_paid", "secret")
def mark_as_paid(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response(fake.mark_as_paid(ids[0]))


@_route("POST", "/charges/:id/mark_as_failed", "secret")
def mark_as_failed(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    code = as_str(params.get("failure_code") or "payment_rejected", "failure_code")
    return json_response(fake.mark_as_failed(ids[0], code))


@_route("POST", "/charges/:id/expire", "secret")
def expire(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response(fake._ledger.expire_endpoint(ids[0]))


@_route("GET", "/search", "secret")
def search(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response(fake._ledger.search(params))


# --- the authorize_uri page ----------------------------------------------------------------


def _html(status: int, title: str, body: str) -> httpx.Response:
    page = (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return httpx.Response(
        status, content=page.encode(), headers={"Content-Type": "text/html; charset=utf-8"}
    )


def _authorize_form(charge: dict[str, Any]) -> str:
    amount = int(charge["amount"])
    facts = (
        f"<p>Charge <code>{html.escape(charge['id'])}</code>: "
        f"{html.escape(charge['currency'])} {amount // 100:,}.{amount % 100:02d}, "
        f"status <strong>{html.escape(charge['status'])}</strong>.</p>"
    )
    if charge["status"] != "pending":
        link = html.escape(charge["return_uri"], quote=True)
        return facts + f'<p><a href="{link}">Back to the shop</a></p>'
    options = "".join(
        f'<option value="{code}"{" selected" if code == "payment_rejected" else ""}>{code}</option>'
        for code in FAILURE_MESSAGES
    )
    return (
        f'{facts}<form method="post">'
        '<button type="submit" name="action" value="approve">Approve</button> '
        f'<label>failure code <select name="failure_code">{options}</select></label> '
        '<button type="submit" name="action" value="decline">Decline</button>'
        "</form>"
    )


@_route("GET", "/test/authorize/:id", "none")
def authorize_page(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    try:
        found = fake._ledger.charge(ids[0])
    except FakeOmiseError:
        return _html(404, "Charge not found", "<p>No such charge.</p>")
    return _html(200, "Authorize a K PLUS test payment", _authorize_form(found))


@_route("POST", "/test/authorize/:id", "none")
def authorize(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    action = params.get("action")
    try:
        if action == "approve":
            done = fake.mark_as_paid(ids[0])
        elif action == "decline":
            code = as_str(params.get("failure_code") or "payment_rejected", "failure_code")
            done = fake.mark_as_failed(ids[0], code)
        else:
            return _html(400, "Bad request", "<p>action must be approve or decline.</p>")
    except FakeOmiseError as exc:
        return _html(exc.status, "Cannot authorize", f"<p>{html.escape(exc.message)}</p>")
    target = str(done["return_uri"])
    link = html.escape(target, quote=True)
    response = _html(302, "Redirecting", f'<p><a href="{link}">Back to the shop</a></p>')
    response.headers["Location"] = target
    return response


# --- test controls --------------------------------------------------------------------------


def _done(**extra: Any) -> httpx.Response:
    return json_response({"object": "fake_control", "ok": True, **extra})


@contextmanager
def _bad_request() -> Iterator[None]:
    """Turn a ValueError or TypeError of a control into a 400 ``bad_request``."""
    try:
        yield
    except FakeOmiseError:
        raise
    except (ValueError, TypeError) as exc:
        raise FakeOmiseError(400, "bad_request", str(exc)) from None


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FakeOmiseError(400, "bad_request", f"{field} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise FakeOmiseError(400, "bad_request", f"{field} must be a number") from None
    if not math.isfinite(number):
        raise FakeOmiseError(400, "bad_request", f"{field} must be a finite number")
    return number


@_route("GET", "/_fake/clock", "secret")
def clock(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response({"object": "fake_clock", "now": iso(fake.now()), "expired": []})


@_route("POST", "/_fake/clock/advance", "secret")
def advance(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    with _bad_request():
        expired = fake.advance_clock(_number(params.get("seconds", 0), "seconds"))
    return json_response({"object": "fake_clock", "now": iso(fake.now()), "expired": expired})


@_route("GET", "/_fake/options", "secret")
def options(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return json_response(fake.options.to_json())


@_route("POST", "/_fake/options", "secret")
def set_options(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    changes = option_changes(params)
    with _bad_request():
        return json_response(fake.set_options(**changes).to_json())


@_route("POST", "/_fake/charges/:id/expire", "secret")
def expire_control(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    force = params.get("force", False)
    return json_response(fake.expire(ids[0], force=force is True or force == "true"))


@_route("POST", "/_fake/webhooks/duplicate", "secret")
def duplicate(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    with _bad_request():
        fake.duplicate_next(
            as_int(params.get("times", 2), "times"),
            events=as_int(params.get("events", 1), "events"),
        )
    return _done()


@_route("POST", "/_fake/webhooks/drop", "secret")
def drop(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    with _bad_request():
        fake.drop_next(as_int(params.get("events", 1), "events"))
    return _done()


@_route("POST", "/_fake/webhooks/delay", "secret")
def delay(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    with _bad_request():
        fake.delay_next(
            _number(params.get("seconds"), "seconds"),
            events=as_int(params.get("events", 1), "events"),
        )
    return _done()


@_route("POST", "/_fake/webhooks/hold", "secret")
def hold(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    fake.hold_webhooks()
    return _done()


@_route("POST", "/_fake/webhooks/release", "secret")
def release(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    order = params.get("order", "fifo")
    chosen: ReleaseOrder
    if isinstance(order, list) and all(isinstance(o, str) for o in order):
        chosen = [str(o) for o in order]
    elif order == "fifo":
        chosen = "fifo"
    elif order == "reversed":
        chosen = "reversed"
    else:
        raise FakeOmiseError(400, "bad_request", "order is fifo, reversed or a list of event ids")
    return _done(released=fake.release_webhooks(chosen))


@_route("POST", "/_fake/webhooks/flush", "secret")
def flush(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    idle = fake.wait_idle(_number(params.get("timeout", 5.0), "timeout"))
    return json_response(
        {"object": "fake_control", "ok": idle, "idle": idle, "held": fake.held_webhooks()}
    )


@_route("GET", "/_fake/webhooks/deliveries", "secret")
def deliveries(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    event_id = params.get("event_id")
    data = [
        {**d.to_json(), "event_id": d.event_id, "attempt": d.attempt, "copy": d.copy}
        for d in fake.deliveries(None if event_id is None else str(event_id))
    ]
    return json_response({"object": "list", "total": len(data), "data": data})


def _optional(params: Params, name: str, convert: Callable[[Any, str], Any]) -> Any:
    return None if name not in params else convert(params[name], name)


@_route("POST", "/_fake/faults", "secret")
def add_fault(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    kind = params.get("kind")
    if kind not in FAULT_KINDS:
        raise FakeOmiseError(400, "bad_request", f"kind is one of {', '.join(sorted(FAULT_KINDS))}")
    with _bad_request():
        fault = fake.inject_fault(
            as_str(params.get("route", ""), "route"),
            cast(FaultKind, kind),
            times=as_int(params.get("times", 1), "times"),
            status=_optional(params, "status", as_int),
            code=_optional(params, "code", as_str),
            delay=_optional(params, "delay", _number),
            retry_after=_optional(params, "retry_after", as_int),
        )
    return json_response({"object": "fake_fault", **attrs.asdict(fault)})


@_route("DELETE", "/_fake/faults", "secret")
def clear_faults(fake: Fake, request: httpx.Request, params: Params, ids: Ids) -> httpx.Response:
    return _done(cleared=fake.clear_faults())
