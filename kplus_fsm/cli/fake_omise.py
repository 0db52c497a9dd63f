"""
``kplus-fsm fake-omise``: serve a fake Opn (Omise) API for integration tests
(:mod:`kplus_fsm.adapters.fake`, imported only when the command runs).

Added to the :data:`kplus_fsm.cli.cli` group by :mod:`kplus_fsm.cli`. Exit
codes: 0 after Ctrl-C; 2 usage (an option out of its bounds, keys or a webhook
secret the fake refuses); 4 the address cannot be bound.
"""

from __future__ import annotations

import datetime as dt

import click

from . import _params
from ._output import EXIT_STORE, EXIT_USAGE, fail


@click.command("fake-omise")
@click.option("--host", default="127.0.0.1", show_default=True, type=_params.HOST)
@click.option("--port", default=8765, show_default=True, type=_params.PORT)
@click.option(
    "--secret-key", required=True, help="The secret key clients must use (skey_test_...)."
)
@click.option("--public-key", required=True, help="The public key (pkey_test_...).")
@click.option("--webhook-url", default=None, help="Where to POST webhook events.")
@click.option(
    "--webhook-secret", default=None, help="Base64 secret to sign webhooks with (Omise-Signature)."
)
@click.option(
    "--expiry-model",
    type=click.Choice(["bank_timeout", "lifetime"]),
    default="bank_timeout",
    show_default=True,
    help="bank_timeout: an unpaid charge fails payment_expired after --bank-timeout-minutes "
    "(likely); lifetime: it expires at expires_at (the fake's old model).",
)
@click.option(
    "--charge-minutes",
    default=None,
    type=_params.CHARGE_MINUTES,
    help="expires_at minus created_at [default: 7 days under bank_timeout, 10 under lifetime].",
)
@click.option(
    "--bank-timeout-minutes",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="How long the bank waits for the buyer (bank_timeout model).",
)
@click.option(
    "--expiry-webhook/--no-expiry-webhook",
    default=True,
    show_default=True,
    help="Whether an expiry sends charge.complete (off: only a read finds out).",
)
@click.option(
    "--expire-endpoint/--no-expire-endpoint",
    default=False,
    show_default=True,
    help="Whether POST /charges/:id/expire works for K PLUS (off: failed_expire).",
)
@click.option(
    "--search-metadata/--no-search-metadata",
    default=True,
    show_default=True,
    help="Whether the search query finds metadata values.",
)
@click.option(
    "--search-lag",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds before a new charge can be found by /search (GET /charges lists it at once).",
)
@click.option(
    "--kplus-enabled/--kplus-disabled",
    default=True,
    show_default=True,
    help="Disabled: creating a K PLUS source or charge answers service_not_found.",
)
@click.option(
    "--api-version",
    default="2019-05-29",
    show_default=True,
    help="The account's default Omise-Version (before 2017-11-02: service_not_found).",
)
@click.option(
    "--rate-limit",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Requests per second before HTTP 429 (default: no limit).",
)
@click.option(
    "--rate-burst", default=10, show_default=True, type=click.IntRange(min=1), help="Burst size."
)
@click.option(
    "--retry-after/--no-retry-after",
    default=True,
    show_default=True,
    help="Whether a 429 carries Retry-After.",
)
def fake_omise(
    host: str,
    port: int,
    secret_key: str,
    public_key: str,
    webhook_url: str | None,
    webhook_secret: str | None,
    expiry_model: str,
    charge_minutes: int | None,
    bank_timeout_minutes: float,
    expiry_webhook: bool,
    expire_endpoint: bool,
    search_metadata: bool,
    search_lag: float,
    kplus_enabled: bool,
    api_version: str,
    rate_limit: float | None,
    rate_burst: int,
    retry_after: bool,
) -> None:
    """
    Serve a fake Opn (Omise) API for integration tests: sources, charges, events,
    search, the test-mode mark_as_paid / mark_as_failed, an authorize page, signed
    webhooks, and test controls under /_fake/ (POST /_fake/options changes the
    switches below while it runs). GET / answers when ready. Serves until Ctrl-C.
    """
    from ..adapters.fake import FakeOptions, run_server  # noqa: PLC0415 - only to serve the fake

    try:
        options = FakeOptions(
            expiry_model="lifetime" if expiry_model == "lifetime" else "bank_timeout",
            charge_lifetime=None
            if charge_minutes is None
            else dt.timedelta(minutes=charge_minutes),
            bank_timeout=dt.timedelta(minutes=bank_timeout_minutes),
            expiry_webhook=expiry_webhook,
            expire_endpoint=expire_endpoint,
            search_metadata=search_metadata,
            search_lag=search_lag,
            kplus_enabled=kplus_enabled,
            api_version=api_version,
            rate_limit=rate_limit,
            rate_burst=rate_burst,
            retry_after_header=retry_after,
        )
        run_server(
            host,
            port,
            secret_key=secret_key,
            public_key=public_key,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            options=options,
            announce=lambda url: click.echo(f"fake Omise listening on {url} (Ctrl-C to stop)"),
        )
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_STORE)


__all__ = ["fake_omise"]
