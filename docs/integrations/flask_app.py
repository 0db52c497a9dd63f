"""
Flask: receive Omise webhooks into a kplus_fsm event log.

Run it (configuration comes from the environment, see README.md here)::

    KPLUS_FSM_DB=shop.db OMISE_SECRET_KEY=skey_test_... OMISE_WEBHOOK_SECRET=... \\
        flask --app "flask_app:create_app()" run --port 8000

The view hands the *raw* body bytes (``get_data()``: the signature covers them)
and the headers to :class:`WebhookIntake`, and answers with the status it chose.
``MAX_CONTENT_LENGTH`` caps the body; a larger one is refused with 413.
``GET /orders/<order_ref>/return`` is the page K PLUS sends the buyer back to
(the ``return_uri`` of the order's charges): it reads the charge now.
"""

from __future__ import annotations

import contextlib
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from kplus_fsm import Status
from kplus_fsm.adapters.webhooks import MAX_BODY, WebhookIntake, intake_from_env
from kplus_fsm.exceptions import GatewayError


def create_app(intake: WebhookIntake | None = None) -> Flask:
    """The application; ``intake`` defaults to one built from the environment."""
    webhooks = intake if intake is not None else intake_from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    @app.post("/webhooks/omise")
    def omise_webhook() -> tuple[Response, int]:
        headers = dict(request.headers)
        try:
            body = request.get_data(cache=False)
        except RequestEntityTooLarge:
            result = webhooks.refuse_oversized(headers, size=request.content_length, limit=MAX_BODY)
        else:
            result = webhooks.handle(body, headers)
        return jsonify(result.to_json()), result.status

    @app.get("/orders/<order_ref>/return")
    def returned(order_ref: str) -> tuple[Response, int]:
        status, answer = order_status(webhooks, order_ref)
        return jsonify(answer), status

    @app.get("/")
    def ready() -> Response:
        return jsonify(ready=True)

    return app


def order_status(intake: WebhookIntake, order_ref: str) -> tuple[int, dict[str, Any]]:
    """
    What the return page says when K PLUS sends the buyer back: the order's
    latest attempt, read from Omise now (``Tracker.refresh``) while it is still
    open, rather than waiting for the webhook. If Omise does not answer, the
    page shows what the log knows; the webhook or reconciliation settles it.
    """
    tracker = intake.tracker
    attempts = tracker.attempts(order_ref)
    if not attempts:
        return 404, {"order_ref": order_ref, "status": None, "paid": False}
    latest = attempts[-1]
    if not latest.is_terminal and intake.client is not None:
        with contextlib.suppress(GatewayError):
            latest = tracker.refresh(intake.client, latest.payment_id).payment or latest
    paid = latest.status is Status.SUCCESSFUL or any(
        a.status is Status.SUCCESSFUL for a in attempts[:-1]
    )
    return 200, {
        "order_ref": order_ref,
        "payment_id": latest.payment_id,
        "status": latest.status.value,
        "paid": paid,
    }
