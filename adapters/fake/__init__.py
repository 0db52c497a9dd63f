"""
A fake Opn Payments (Omise) API for integration tests of K PLUS
(``mobile_banking_kbank``) payments.

:class:`FakeOmise` holds the state and is "just a function from request to
response": :meth:`FakeOmise.handle` takes an ``httpx.Request`` and returns an
``httpx.Response``. Use it in process through :meth:`FakeOmise.transport`
(no sockets), on loopback with :func:`start_server`, or from the command line
through :func:`run_server` (``kplus-fsm fake-omise``)::

    fake = FakeOmise(secret_key="skey_test_x", public_key="pkey_test_x",
                     webhook_receiver=my_handler, webhook_secrets=[SECRET_B64])
    client = httpx.Client(transport=fake.transport(), base_url="https://api.omise.co",
                          auth=("skey_test_x", ""))
    charge = client.post("/charges", data={...}).json()
    fake.mark_as_paid(charge["id"])
    fake.flush()

The API surface (same paths, bodies and error objects as the real API):
``POST /sources``, ``GET /sources/:id``, ``POST /charges``, ``GET /charges``,
``GET /charges/:id``, ``GET /charges/:id/events``, ``GET /events``,
``GET /events/:id``, ``GET /search?scope=charge``, the test-mode
``POST /charges/:id/mark_as_paid``, ``…/mark_as_failed``, ``…/expire``, the
``authorize_uri`` page ``GET|POST /test/authorize/:id``, ``GET /`` (ready), and
test controls under ``/_fake/`` (secret key required):

- ``GET /_fake/clock``; ``POST /_fake/clock/advance`` (``seconds``)
- ``POST /_fake/webhooks/duplicate`` (``times``, ``events``),
  ``…/drop`` (``events``), ``…/delay`` (``seconds``, ``events``), ``…/hold``,
  ``…/release`` (``order``: ``fifo``, ``reversed`` or a list of event ids),
  ``…/flush`` (``timeout``); ``GET /_fake/webhooks/deliveries`` (``event_id``)
- ``POST /_fake/faults`` (``route``, ``kind``, ``times``, ``status``, ``code``,
  ``delay``, ``retry_after``); ``DELETE /_fake/faults``

Bodies may be JSON or form data with bracket keys (``source[type]=…``,
``metadata[payment_id]=…``), parameters may also come in the query string, and
JSON bodies on GET are read (omise-python sends them).

What the fake models, with each behaviour's label (CONFIRMED, LIKELY,
UNVERIFIABLE) and public source, its switches and what it does not model, is
listed in ``docs/fake-omise.md``. In short:

- search answers newest first, 30 per page; ``query`` is a word search over
  the id, currency, description and metadata values; ``filters[amount]`` is in
  THB; boolean filters take ``yes``/``on``/``true`` (:mod:`._search`);
- error objects link to ``…/api-errors#not-found`` (hyphens); a fault with
  ``code="backend_error"`` answers HTTP 400, before or after the charge is made;
- an abandoned charge fails ``payment_expired`` when the bank times out (10
  minutes), ``expires_at`` is 7 days after creation; the old 10-minute
  ``expired`` lifetime is ``expiry_model="lifetime"``; expiries may be silent;
- ``POST /charges/:id/expire`` is refused ``failed_expire`` (K PLUS is not
  Alipay barcode); the test control ``POST /_fake/charges/:id/expire`` ends a
  charge as the expiry model would;
- webhook bodies are pretty-printed as Omise's recorded deliveries;
  ``PATCH /charges/:id`` emits ``charge.update``;
- switches (constructor arguments, ``POST /_fake/options``, ``kplus-fsm
  fake-omise`` options): see :class:`FakeOptions`.

The package's modules, innermost first (each imports only those before it):
``_objects`` (records, JSON shapes, ids, times, request parsing), ``_options``
(the switches, the rate limiter), ``_search`` (``GET /search``), ``_webhooks``
(signed deliveries, retries, the delivery controls), ``_state`` (the ledger of
sources, charges and events), ``_faults`` (injected faults), ``_routes`` (the
HTTP surface, over a protocol of the fake), ``_account`` (:class:`FakeOmise`)
and ``_server`` (loopback serving).
"""

from __future__ import annotations

from ._account import FakeOmise
from ._faults import Fault, FaultKind
from ._objects import FakeOmiseError
from ._options import (
    DEFAULT_API_VERSION,
    DEFAULT_BANK_TIMEOUT,
    DEFAULT_CHARGE_LIFETIME,
    LIFETIME_MODEL_LIFETIME,
    ExpiryModel,
    FakeOptions,
)
from ._server import FakeOmiseServer, run_server, start_server
from ._webhooks import RetryPolicy, WebhookDelivery

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_BANK_TIMEOUT",
    "DEFAULT_CHARGE_LIFETIME",
    "LIFETIME_MODEL_LIFETIME",
    "ExpiryModel",
    "FakeOmise",
    "FakeOmiseError",
    "FakeOmiseServer",
    "FakeOptions",
    "Fault",
    "FaultKind",
    "RetryPolicy",
    "WebhookDelivery",
    "run_server",
    "start_server",
]
