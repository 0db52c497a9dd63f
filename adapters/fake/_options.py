"""
The switches of the fake Omise: how it expires charges, how its search behaves,
what the account can do, and how fast it lets clients call it.

Private to :mod:`kplus_fsm.adapters.fake`, which re-exports :class:`FakeOptions`.

Invariants: a :class:`FakeOptions` is frozen and valid (its validators run on
every construction and every ``attrs.evolve``); the fake swaps the whole value at
once, so a request sees either the old switches or the new ones, never a mix.
Each switch's default is the most likely reading of Omise's behaviour, labelled
in ``docs/fake-omise.md``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, get_args

import attrs

from ._objects import FakeOmiseError, as_int, as_str

ExpiryModel = Literal["bank_timeout", "lifetime"]
EXPIRY_MODELS: Final = frozenset(get_args(ExpiryModel))

#: ``expires_at`` is seven days after creation in every recorded mobile-banking
#: charge (omise-swift's SCB fixture, the K PLUS guide's own example, omise-php's
#: 2025 ``charges-get.json``): the default of the ``bank_timeout`` model.
DEFAULT_CHARGE_LIFETIME: Final = dt.timedelta(days=7)
#: The lifetime of the ``lifetime`` model: the ten minutes of the K PLUS guide's prose.
LIFETIME_MODEL_LIFETIME: Final = dt.timedelta(minutes=10)
#: How long the bank waits for the buyer before the charge fails ``payment_expired``
#: (the guide's ten minutes, read as the bank's window; other acquirers publish
#: 14-15 minutes for K PLUS: Antom's "default timeout", Xendit's "payment request
#: expiry"). LIKELY, not confirmed.
DEFAULT_BANK_TIMEOUT: Final = dt.timedelta(minutes=10)
#: The oldest API version that can create sources (K PLUS guide, "Minimum API version").
MIN_SOURCE_API_VERSION: Final = "2017-11-02"
DEFAULT_API_VERSION: Final = "2019-05-29"

_VERSION: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_TRUE: Final = frozenset({"true", "yes", "on", "1"})
_FALSE: Final = frozenset({"false", "no", "off", "0"})


def _positive_delta(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value <= dt.timedelta(0):
        raise ValueError(f"{attribute.name} must be positive")


def _not_negative(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number, 0 or more")


def _rate(_instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise ValueError(f"{attribute.name} must be a positive number of requests per second")


def _version(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        raise ValueError(f"{attribute.name} is a date like 2019-05-29")


def _model(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in EXPIRY_MODELS:
        raise ValueError(f"{attribute.name} is one of {', '.join(sorted(EXPIRY_MODELS))}")


@attrs.frozen(kw_only=True)
class FakeOptions:
    """
    Every switch of :class:`~kplus_fsm.adapters.fake.FakeOmise` (the same names
    as its constructor's arguments, ``POST /_fake/options`` and the
    ``kplus-fsm fake-omise`` options).

    Expiry (what happens to a charge nobody pays):

    - ``expiry_model="bank_timeout"`` (default, LIKELY): ``bank_timeout`` after
      creation the bank gives up and the charge ends ``failed`` with
      ``failure_code="payment_expired"``; ``expires_at`` is ``charge_lifetime``
      (default 7 days) after creation and a charge still pending then ends
      ``expired``.
    - ``expiry_model="lifetime"`` (the fake's old model, less likely): no bank
      timeout; at ``expires_at`` (default 10 minutes after creation) the charge
      ends ``expired``.
    - ``expiry_webhook`` (default True): whether an expiry emits
      ``charge.complete``. False models Omise ending a charge silently: only a
      read (reconciliation) finds out.

    Search: ``search_metadata`` (default True) says whether ``query`` finds
    metadata values; ``search_lag`` (seconds, default 0) hides charges younger
    than that from ``/search`` while ``GET /charges`` lists them at once.

    The account: ``kplus_enabled`` (default True) and ``api_version`` (the
    account's default ``Omise-Version``); without K PLUS, or with a version older
    than 2017-11-02, creating a source (or a charge with an inline source)
    answers ``service_not_found``. ``expire_endpoint`` (default False): whether
    ``POST /charges/:id/expire`` works for K PLUS (documented for Alipay barcode
    only; refused ``failed_expire`` by default).

    Throttling: ``rate_limit`` requests per second with bursts of ``rate_burst``
    (default None: no limit); over it, HTTP 429 ``too_many_requests`` with
    ``Retry-After`` (whole seconds) unless ``retry_after_header`` is False.

    Raises:
        ValueError: an unknown model, a lifetime or timeout that is not
            positive, a negative lag, a bad rate or burst, a malformed version.
    """

    expiry_model: ExpiryModel = attrs.field(default="bank_timeout", validator=_model)
    charge_lifetime: dt.timedelta | None = attrs.field(default=None, validator=_positive_delta)
    bank_timeout: dt.timedelta = attrs.field(
        default=DEFAULT_BANK_TIMEOUT, validator=_positive_delta
    )
    expiry_webhook: bool = True
    expire_endpoint: bool = False
    search_metadata: bool = True
    search_lag: float = attrs.field(default=0.0, validator=_not_negative)
    kplus_enabled: bool = True
    api_version: str = attrs.field(default=DEFAULT_API_VERSION, validator=_version)
    rate_limit: float | None = attrs.field(default=None, validator=_rate)
    rate_burst: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    retry_after_header: bool = True

    @property
    def lifetime(self) -> dt.timedelta:
        """``expires_at - created_at`` of a new charge under this model."""
        if self.charge_lifetime is not None:
            return self.charge_lifetime
        if self.expiry_model == "lifetime":
            return LIFETIME_MODEL_LIFETIME
        return DEFAULT_CHARGE_LIFETIME

    @property
    def timeout(self) -> dt.timedelta | None:
        """When the bank gives up on a pending charge (``None``: never)."""
        return self.bank_timeout if self.expiry_model == "bank_timeout" else None

    def to_json(self) -> dict[str, Any]:
        """The switches as JSON (durations in seconds)."""
        return {
            "object": "fake_options",
            "expiry_model": self.expiry_model,
            "charge_lifetime": self.lifetime.total_seconds(),
            "bank_timeout": self.bank_timeout.total_seconds(),
            "expiry_webhook": self.expiry_webhook,
            "expire_endpoint": self.expire_endpoint,
            "search_metadata": self.search_metadata,
            "search_lag": self.search_lag,
            "kplus_enabled": self.kplus_enabled,
            "api_version": self.api_version,
            "rate_limit": self.rate_limit,
            "rate_burst": self.rate_burst,
            "retry_after_header": self.retry_after_header,
        }


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise FakeOmiseError(400, "bad_request", f"{name} is true or false")


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FakeOmiseError(400, "bad_request", f"{name} is a number of seconds")
    try:
        number = float(value)
    except ValueError:
        raise FakeOmiseError(400, "bad_request", f"{name} is a number of seconds") from None
    if not math.isfinite(number):
        raise FakeOmiseError(400, "bad_request", f"{name} is a number of seconds")
    return number


def _delta(value: Any, name: str) -> dt.timedelta:
    return dt.timedelta(seconds=_seconds(value, name))


def _optional_rate(value: Any, name: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
        return None
    return _seconds(value, name)


#: How ``POST /_fake/options`` reads each field (durations in seconds).
_CONVERT: Final[Mapping[str, Callable[[Any, str], Any]]] = {
    "expiry_model": as_str,
    "charge_lifetime": _delta,
    "bank_timeout": _delta,
    "expiry_webhook": _flag,
    "expire_endpoint": _flag,
    "search_metadata": _flag,
    "search_lag": _seconds,
    "kplus_enabled": _flag,
    "api_version": as_str,
    "rate_limit": _optional_rate,
    "rate_burst": as_int,
    "retry_after_header": _flag,
}


def option_changes(params: Mapping[str, Any]) -> dict[str, Any]:
    """
    The switches ``params`` names, converted (the body of ``POST /_fake/options``;
    durations in seconds). Whether the values are in range is checked when they
    are applied (:class:`FakeOptions`' validators).

    Raises:
        FakeOmiseError: 400 ``bad_request`` for an unknown field or a bad value.
    """
    changes: dict[str, Any] = {}
    for name, value in params.items():
        convert = _CONVERT.get(name)
        if convert is None:
            raise FakeOmiseError(400, "bad_request", f"unknown option {name!s:.40}")
        changes[name] = convert(value, name)
    return changes


def version_at_least(version: str, minimum: str) -> bool:
    """Whether the ``YYYY-MM-DD`` API ``version`` is ``minimum`` or newer."""
    return version >= minimum


class RateLimiter:
    """
    A token bucket on the monotonic clock: ``burst`` requests at once, then
    ``rate`` per second. Thread-safe.
    """

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._tokens: float | None = None
        self._stamp = 0.0

    def take(self, rate: float | None, burst: int) -> float:
        """Take one token; 0.0 when allowed, else the seconds until the next one."""
        if rate is None:
            with self._lock:
                self._tokens = None
            return 0.0
        with self._lock:
            now = self._now()
            if self._tokens is None:
                self._tokens, self._stamp = float(burst), now
            self._tokens = min(float(burst), self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / rate
