"""
Django: receive Omise webhooks into a kplus_fsm event log.

A single-file Django project, to keep the example whole. In a real project the
view goes into an app's ``views.py``, the URL into ``urls.py`` and the two
settings below into ``settings.py``. Run it (configuration comes from the
environment, see README.md here)::

    KPLUS_FSM_DB=shop.db OMISE_SECRET_KEY=skey_test_... OMISE_WEBHOOK_SECRET=... \\
        python django_app.py runserver 8000

The view is CSRF-exempt (Omise cannot send a CSRF token; the signature is the
check), reads the *raw* body (``request.body``: the signature covers it) and
answers with the status :class:`WebhookIntake` chose. ``returned`` is the page
K PLUS sends the buyer back to (``orders/<order_ref>/return``, the
``return_uri`` of the order's charges): it reads the charge now.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from kplus_fsm import Status
from kplus_fsm.adapters.webhooks import MAX_BODY, WebhookIntake, intake_from_env
from kplus_fsm.exceptions import GatewayError

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=os.environ.get(
            "DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver"
        ).split(","),
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(32),
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        INSTALLED_APPS=[],
        DATA_UPLOAD_MAX_MEMORY_SIZE=MAX_BODY,  # request.body beyond this: RequestDataTooBig
    )

_intake: WebhookIntake | None = None


def set_intake(intake: WebhookIntake) -> None:
    """Use ``intake`` (tests); otherwise one is built from the environment on first use."""
    global _intake  # noqa: PLW0603 - one intake per process, like a settings object
    _intake = intake


def get_intake() -> WebhookIntake:
    global _intake  # noqa: PLW0603
    if _intake is None:
        _intake = intake_from_env()
    return _intake


@csrf_exempt
@require_POST
def omise_webhook(request: HttpRequest) -> JsonResponse:
    intake = get_intake()
    headers = dict(request.headers)
    try:
        body = request.body
    except RequestDataTooBig:
        result = intake.refuse_oversized(
            headers, size=int(headers.get("Content-Length") or 0) or None, limit=MAX_BODY
        )
    else:
        result = intake.handle(body, headers)
    return JsonResponse(result.to_json(), status=result.status)


@require_GET
def returned(request: HttpRequest, order_ref: str) -> JsonResponse:
    status, answer = order_status(get_intake(), order_ref)
    return JsonResponse(answer, status=status)


@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ready": True})


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


urlpatterns = [
    path("webhooks/omise", omise_webhook),
    path("orders/<str:order_ref>/return", returned),
    path("", ready),
]


if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
