"""
Flask: receive Omise webhooks into a kplus_fsm event log.

Run it (configuration comes from the environment, see README.md here)::

    KPLUS_FSM_DB=shop.db OMISE_SECRET_KEY=skey_test_... OMISE_WEBHOOK_SECRET=... \\
        flask --app "flask_app:create_app()" run --port 8000

The view hands the *raw* body bytes (``get_data()``: the signature covers them)
and the headers to :class:`WebhookIntake`, and answers with the status it chose.
``MAX_CONTENT_LENGTH`` caps the body; a larger one is refused with 413.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from kplus_fsm.adapters.webhooks import MAX_BODY, WebhookIntake, intake_from_env


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

    @app.get("/")
    def ready() -> Response:
        return jsonify(ready=True)

    return app
