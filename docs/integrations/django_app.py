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
answers with the status :class:`WebhookIntake` chose.
"""

from __future__ import annotations

import os
import secrets
import sys

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from kplus_fsm.adapters.webhooks import MAX_BODY, WebhookIntake, intake_from_env

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
def ready(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ready": True})


urlpatterns = [
    path("webhooks/omise", omise_webhook),
    path("", ready),
]


if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
