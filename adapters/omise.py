"""
The Opn Payments (Omise) REST API over httpx: sources, charges, events, search.

:class:`OmiseClient` implements :class:`kplus_fsm.ChargeAPI` (``create_charge``,
``retrieve_charge``, ``find_charge``) and the other reads a K PLUS integration
needs. Everything is configured by the constructor (no module globals); the
httpx transport can be injected (``httpx.MockTransport`` in tests, or the fake
Omise).

Wire facts (``omise-facts.md`` §4): HTTP Basic auth with the key as user name
and an empty password; ``Omise-Version`` pinned on every request; JSON request
bodies; GET parameters in the query string; Omise error objects
``{"object": "error", "code", "message", "location"}``.

Error codes: :data:`ERROR_CODES` is the one table of every documented Omise
error code, each with its HTTP status, what it means for the caller and its
source (the same table is in ``docs/omise-facts.md``). ``refused`` codes are a
definite "no" (:class:`OmiseAPIError`; ``service_not_found`` is
:class:`OmiseServiceNotFoundError`); ``retry`` codes (``backend_error``, a 400
that means "try again") are no answer at all (:class:`OmiseTransientError`): on
a create the outcome is unknown, on a read it is retried like a 5xx. HTTP 429 and
5xx are never a definite answer, whatever their code. An undocumented code with a
4xx status is taken as a refusal (Omise documents 4xx as the caller's error).

Retries: only safe reads (GET) are retried, on HTTP 429/500/502/503/504, on
``retry`` codes, on connection errors and timeouts, with exponential backoff and
full jitter, and ``Retry-After`` honoured when the server sends one (a hint
longer than :attr:`RetryPolicy.max_retry_after` ends the retries at once). A
POST (a create) is **never** retried: a second ``POST /charges`` could charge the
payer twice; the caller settles an unknown outcome with
:meth:`OmiseClient.find_charge` and :meth:`OmiseClient.charges_created`.

Errors (every low-level httpx exception is translated in one place,
``_translate_transport_errors``; no ``JSONDecodeError`` or httpx exception ever
escapes)::

    KplusFSMError
    ├── GatewayError
    │   ├── GatewayRefusedError
    │   │   └── OmiseAPIError            an Omise error object with a 4xx status
    │   │       │                        (not 429) and a ``refused`` code: a definite "no"
    │   │       └── OmiseServiceNotFoundError  service_not_found: K PLUS is not enabled
    │   │                                for the account, or the API version is
    │   │                                older than 2017-11-02
    │   └── GatewayUnavailableError
    │       └── OmiseUnavailableError    no definite answer: 429, 5xx (error object
    │           │                        or not), a connection error, a body that is
    │           │                        not JSON, not an object, truncated, or not
    │           │                        the object asked for (even with a 2xx), a
    │           │                        scan too long to finish
    │           ├── OmiseTransientError  an error object whose code means "try
    │           │                        again" (backend_error, HTTP 400)
    │           └── OmiseTimeoutError    (also a builtin TimeoutError) connect, read,
    │                                    write or pool timeout
    └── OmiseConfigurationError(ValueError)  misuse before any request: no key for
                                             the call, an empty id, a bad limit

Every method that talks to the API raises :class:`OmiseAPIError` or
:class:`OmiseUnavailableError` (including :class:`OmiseTimeoutError`), and
:class:`OmiseConfigurationError` for misuse; nothing else. On a create,
:class:`OmiseUnavailableError` means the outcome is *unknown*: a charge may exist.

No message, ``repr`` or log line ever contains a key or the ``Authorization``
header; log lines never contain bodies. Logging (structlog, logger
``kplus_fsm.adapters.omise``): one ``omise_request`` line per HTTP attempt at
debug (method, path, status, attempt, elapsed_ms, error: the exception's type
name when no response arrived) and an ``omise_retry``
warning before each retry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Literal
from urllib.parse import quote

import attrs
import httpx
import structlog

from kplus_fsm import __version__, omise_time, parse_json
from kplus_fsm.exceptions import GatewayRefusedError, GatewayUnavailableError, KplusFSMError

__all__ = [
    "CHARGES_CREATED_MAX_PAGES",
    "DEFAULT_API_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_CREATE_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "ERROR_CODES",
    "RETRYABLE_STATUSES",
    "ErrorCode",
    "ErrorMeaning",
    "OmiseAPIError",
    "OmiseClient",
    "OmiseConfigurationError",
    "OmiseServiceNotFoundError",
    "OmiseTimeoutError",
    "OmiseTransientError",
    "OmiseUnavailableError",
    "RetryPolicy",
    "error_meaning",
]

log = structlog.get_logger("kplus_fsm.adapters.omise")

DEFAULT_BASE_URL: Final = "https://api.omise.co"
DEFAULT_API_VERSION: Final = "2019-05-29"
#: Reads: 10 s to connect, 30 s to read.
DEFAULT_TIMEOUT: Final = httpx.Timeout(10.0, read=30.0)
#: Creates: banks can take ~40 s to answer (omise-java issue #1), so read for 60 s.
DEFAULT_CREATE_TIMEOUT: Final = httpx.Timeout(10.0, read=60.0)
#: The HTTP statuses after which a GET is retried.
RETRYABLE_STATUSES: Final = frozenset({429, 500, 502, 503, 504})

#: ``find_charge`` reads at most this many search pages of ``_FIND_PER_PAGE``.
_FIND_MAX_PAGES: Final = 10
#: The documented default page size of the search API (omise.co, *Search query
#: and filters*: "a default of 30 results per page").
_FIND_PER_PAGE: Final = 30
_MAX_LIST_LIMIT: Final = 100
#: :meth:`OmiseClient.charges_created` reads at most this many pages of 100
#: charges; a window holding more raises :class:`OmiseUnavailableError`.
CHARGES_CREATED_MAX_PAGES: Final = 50


# ----------------------------------------------------------------- error codes

ErrorMeaning = Literal["refused", "retry"]
"""``refused``: a definite "no" (a create made nothing). ``retry``: no answer;
try again (a create's outcome is unknown; a read is retried)."""

_DOC_ERRORS: Final = "Opn docs, API errors (docs.opn.ooo/api-errors), 400 Bad Request"
_OLD_ERRORS: Final = "omise.co/api-errors (the older errors page)"


@attrs.frozen(kw_only=True)
class ErrorCode:
    """One documented Omise error code: its HTTP status (``None``: not
    documented), what it means for the caller, and where it is documented."""

    code: str
    status: int | None
    meaning: ErrorMeaning
    source: str


def _codes(*rows: tuple[str, int | None, ErrorMeaning, str]) -> dict[str, ErrorCode]:
    return {
        code: ErrorCode(code=code, status=st, meaning=m, source=src) for code, st, m, src in rows
    }


#: Every documented Omise error code (the table of ``docs/omise-facts.md``).
ERROR_CODES: Final[Mapping[str, ErrorCode]] = _codes(
    ("authentication_failure", 401, "refused", f"{_OLD_ERRORS}; omise-python errors.py"),
    ("backend_error", 400, "retry", f'{_DOC_ERRORS}: "Please try again"'),
    ("bad_request", 400, "refused", _DOC_ERRORS),
    ("brand_not_supported", 400, "refused", _DOC_ERRORS),
    ("documents_locked", 400, "refused", _DOC_ERRORS),
    ("expired_charge", 400, "refused", _DOC_ERRORS),
    ("failed_capture", 400, "refused", _DOC_ERRORS),
    ("failed_expire", 400, "refused", _DOC_ERRORS),
    ("failed_fraud_check", 400, "refused", _DOC_ERRORS),
    ("failed_multi_currency", 400, "refused", f"{_DOC_ERRORS} (team research note)"),
    ("failed_refund", 400, "refused", f"{_DOC_ERRORS} (team research note); omise-php"),
    ("failed_void", None, "refused", f"{_OLD_ERRORS}; omise-swift APIError.swift"),
    ("invalid_amount", None, "refused", f"{_OLD_ERRORS}; omise-swift APIError.swift"),
    ("invalid_bank_account", None, "refused", f"{_OLD_ERRORS}; omise-php exceptions"),
    ("invalid_card", None, "refused", f"{_OLD_ERRORS}; omise-python errors.py"),
    ("invalid_card_token", None, "refused", f"{_OLD_ERRORS}; omise-python errors.py"),
    ("invalid_charge", 400, "refused", "omise-go charge_test.go (400/invalid_charge)"),
    ("invalid_filter", None, "refused", "omise-swift APIError.swift"),
    ("invalid_filters", None, "refused", f'{_OLD_ERRORS} (heading "Invalid filters")'),
    ("invalid_link", None, "refused", "omise-php exceptions"),
    ("invalid_page", None, "refused", f"{_OLD_ERRORS}; omise-swift APIError.swift"),
    ("invalid_recipient", None, "refused", "omise-python errors.py; omise-php exceptions"),
    ("invalid_scope", None, "refused", f"{_OLD_ERRORS}; omise-swift APIError.swift"),
    ("locked_out", None, "refused", "omise-swift APIError.swift"),
    ("missing_card", None, "refused", f"{_OLD_ERRORS}; omise-python errors.py"),
    ("not_found", 404, "refused", "omise-go charge_test.go (404/not_found), 404 fixtures"),
    ("service_not_found", None, "refused", "omise.js issue #70 (Omise staff)"),
    ("used_token", None, "refused", f"{_OLD_ERRORS}; omise-python errors.py"),
)


def error_meaning(http_status: int, code: str) -> ErrorMeaning:
    """
    What an Omise error object means for the caller: HTTP 429 and 5xx are never
    a definite answer (``retry``); otherwise the code's row of
    :data:`ERROR_CODES`; an undocumented code with a 4xx status is ``refused``.
    """
    if http_status == 429 or http_status >= 500:
        return "retry"
    row = ERROR_CODES.get(code)
    return row.meaning if row is not None else "refused"


Method = Literal["GET", "POST"]


# ----------------------------------------------------------------------- errors


class OmiseAPIError(GatewayRefusedError):
    """
    Omise answered with an error object and a 4xx status (other than 429): a
    definite refusal. ``http_status``, ``code`` (e.g. ``invalid_charge``),
    ``message`` (Omise's English text), ``location`` (its documentation URL),
    ``error`` (the whole error object); ``method`` and ``path`` of the request.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int,
        code: str,
        error: dict[str, object] | None = None,
        location: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message, http_status=http_status, code=code, error=error)
        self.location = location
        self.method = method
        self.path = path


class OmiseServiceNotFoundError(OmiseAPIError):
    """
    ``service_not_found``: the account cannot create this kind of source or
    charge. For K PLUS: it is not enabled for the account (ask Opn support), or
    the API version in use is older than 2017-11-02 (K PLUS guide, "Minimum API
    version"; omise.js issue #70). A definite refusal: nothing was created.
    """


class OmiseUnavailableError(GatewayUnavailableError):
    """
    No definite answer from Omise: HTTP 429 or 5xx, a connection error, or a
    body that is not the expected Omise object. ``http_status`` is ``None`` when
    no response arrived; ``retry_after`` is the server's ``Retry-After`` in
    seconds, if any; ``method`` and ``path`` name the request. ``error`` is the
    Omise error object when the 429/5xx carried one, else ``None``.
    """

    def __init__(
        self,
        reason: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
        error: dict[str, object] | None = None,
    ) -> None:
        super().__init__(reason, http_status=http_status, retry_after=retry_after)
        self.method = method
        self.path = path
        self.error = error


class OmiseTransientError(OmiseUnavailableError):
    """
    Omise answered an error object whose code means "try again"
    (``backend_error``: "An error occurred communicating with the provider …
    Please try again", listed under HTTP 400). No definite answer: on a create a
    charge may or may not exist; a read is retried like a 5xx. ``code`` is the
    error code.
    """

    def __init__(self, reason: str, *, code: str, **kwargs: Any) -> None:
        super().__init__(reason, **kwargs)
        self.code = code


class OmiseTimeoutError(OmiseUnavailableError, TimeoutError):
    """A connect, read, write or pool timeout (also a builtin ``TimeoutError``)."""


class OmiseConfigurationError(KplusFSMError, ValueError):
    """
    The client cannot make this call as configured or asked (no key for it, an
    empty id, a limit out of range). Raised before any request is sent.
    """


# ------------------------------------------------------------------ retry policy


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """
    Bounded retries for safe reads (GET only; a create is never retried).

    ``attempts`` counts the first try (``1`` disables retries). The delay before
    retry *n* (1-based) is drawn uniformly from
    ``[0, min(max_delay, base_delay * 2 ** (n - 1))]`` ("full jitter"), unless the
    response carried ``Retry-After``: then exactly that many seconds are slept,
    and a hint longer than ``max_retry_after`` ends the retries at once.
    """

    attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    base_delay: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    max_delay: float = attrs.field(default=8.0, validator=attrs.validators.ge(0))
    max_retry_after: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    statuses: frozenset[int] = RETRYABLE_STATUSES

    def backoff(self, retry: int) -> float:
        """The jittered delay, in seconds, before retry number ``retry`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(retry - 1, 0)))
        return random.uniform(0.0, ceiling)  # noqa: S311 - jitter, not cryptography


def _parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), or ``None``."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


# ------------------------------------------------------------ error translation


@contextlib.contextmanager
def _translate_transport_errors(method: str, path: str) -> Iterator[None]:
    """The one place where httpx's exceptions become :class:`OmiseUnavailableError`."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise OmiseTimeoutError(
            f"{method} {path}: {_TIMEOUT_KIND.get(type(exc), 'timeout')} ({type(exc).__name__})",
            method=method,
            path=path,
        ) from exc
    except (httpx.HTTPError, httpx.StreamError) as exc:
        raise OmiseUnavailableError(
            f"{method} {path}: no response ({type(exc).__name__}: {_short(str(exc))})",
            method=method,
            path=path,
        ) from exc


_TIMEOUT_KIND: Final[Mapping[type[BaseException], str]] = {
    httpx.ConnectTimeout: "connect timeout",
    httpx.ReadTimeout: "read timeout",
    httpx.WriteTimeout: "write timeout",
    httpx.PoolTimeout: "connection pool timeout",
}


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_body(response: httpx.Response) -> str:
    ctype = response.headers.get("content-type", "no content type").split(";")[0].strip()
    return f"{ctype}, {len(response.content)} bytes"


def _interpret(
    response: httpx.Response, *, method: str, path: str, expect: str, now: float
) -> dict[str, Any]:
    """The expected Omise object of a response, or the matching error."""
    status = response.status_code
    retry_after = _parse_retry_after(response.headers.get("retry-after"), now=now)
    try:
        body: Any = parse_json(response.content)
    except (ValueError, RecursionError):
        body = None
        parsed = False
    else:
        parsed = True
    error = (
        body
        if isinstance(body, dict)
        and body.get("object") == "error"
        and isinstance(body.get("code"), str)
        else None
    )
    if 400 <= status < 500 and status != 429 and error is not None:
        message = error.get("message")
        text = message if isinstance(message, str) else "(no message)"
        code = error["code"]
        if error_meaning(status, code) == "retry":
            raise OmiseTransientError(
                f"{method} {path}: Omise error {code} ({_short(text)}): try again",
                code=code,
                http_status=status,
                retry_after=retry_after,
                method=method,
                path=path,
                error=dict(error),
            )
        location = error.get("location")
        refusal = OmiseServiceNotFoundError if code == "service_not_found" else OmiseAPIError
        raise refusal(
            text,
            http_status=status,
            code=code,
            error=dict(error),
            location=location if isinstance(location, str) else None,
            method=method,
            path=path,
        )
    if not 200 <= status < 300:
        if error is not None:
            what = f"Omise error {error['code']}"
        elif parsed:
            what = "a JSON body that is not an Omise error object"
        else:
            what = f"a body that is not JSON ({_describe_body(response)})"
        raise OmiseUnavailableError(
            f"{method} {path}: {what}",
            http_status=status,
            retry_after=retry_after,
            method=method,
            path=path,
            error=dict(error) if error is not None else None,
        )
    if not parsed:
        reason = f"the body is not JSON or is truncated ({_describe_body(response)})"
    elif not isinstance(body, dict):
        reason = f"the body is a JSON {type(body).__name__}, not an object"
    elif body.get("object") != expect:
        got = body.get("object")
        reason = f"expected an Omise {expect!r} object, got {_short(repr(got), 40)}"
    else:
        return body
    raise OmiseUnavailableError(
        f"{method} {path}: {reason}", http_status=status, method=method, path=path
    )


def _segment(value: str, what: str) -> str:
    """One percent-encoded path segment (an id is never allowed to change the path)."""
    if not isinstance(value, str) or not value.strip():
        raise OmiseConfigurationError(f"{what} must be a non-empty string")
    return quote(value, safe="")


def _utc(value: dt.datetime) -> dt.datetime:
    when = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def _carries(item: Any, payment_id: str) -> bool:
    """Whether a search hit is a charge whose ``metadata.payment_id`` is exactly ``payment_id``."""
    if not isinstance(item, dict) or item.get("object") != "charge":
        return False
    metadata = item.get("metadata")
    return isinstance(metadata, Mapping) and metadata.get("payment_id") == payment_id


def _format_time(value: str | dt.datetime) -> str:
    return value if isinstance(value, str) else omise_time(value)


# ------------------------------------------------------------------------ client


class OmiseClient:
    """
    A client of the Opn Payments (Omise) REST API; implements
    :class:`kplus_fsm.ChargeAPI`.

    Args:
        secret_key: ``skey_…``; needed for everything but creating sources.
        public_key: ``pkey_…``; used to create sources when set.
        base_url: the API root (the fake Omise's URL in tests).
        api_version: sent as ``Omise-Version`` on every request.
        timeout: for reads.
        create_timeout: for creates (a long read: banks can take ~40 s).
        retry: the retry policy of safe reads.
        transport: an httpx transport (``httpx.MockTransport``, the fake Omise);
            default: httpx's own HTTP transport.
        sleep: how to wait between retries (inject a recorder in tests).

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        *,
        secret_key: str | None = None,
        public_key: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        api_version: str = DEFAULT_API_VERSION,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        create_timeout: httpx.Timeout = DEFAULT_CREATE_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._secret_key = secret_key or None
        self._public_key = public_key or None
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self.timeout = timeout
        self.create_timeout = create_timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            headers={
                "Accept": "application/json",
                "Omise-Version": api_version,
                "User-Agent": f"kplus-fsm/{__version__} httpx/{httpx.__version__}",
            },
        )

    def __repr__(self) -> str:
        return (
            f"OmiseClient(base_url={self.base_url!r}, api_version={self.api_version!r}, "
            f"secret_key={'set' if self._secret_key else 'unset'}, "
            f"public_key={'set' if self._public_key else 'unset'})"
        )

    def close(self) -> None:
        """Close the connection pool (and the injected transport)."""
        self._http.close()

    def __enter__(self) -> OmiseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- sources

    def create_source(
        self,
        *,
        amount: int,
        currency: str = "THB",
        type: str = "mobile_banking_kbank",
        platform_type: str | None = None,
    ) -> dict[str, Any]:
        """
        ``POST /sources`` (public key if set, else secret key). Never retried.

        Raises:
            OmiseAPIError: a definite refusal (an Omise error object).
            OmiseUnavailableError: no definite answer (timeout, 429, 5xx, garbage).
            OmiseConfigurationError: misuse (no key for the call, a bad argument).
        """
        params: dict[str, Any] = {"amount": amount, "currency": currency, "type": type}
        if platform_type is not None:
            params["platform_type"] = platform_type
        key = self._key(prefer_public=True)
        return self._request("POST", "/sources", key=key, json_body=params, expect="source")

    def retrieve_source(self, source_id: str) -> dict[str, Any]:
        """
        ``GET /sources/:id`` (secret key if set, else public key).

        Raises:
            OmiseAPIError: a definite refusal (an Omise error object).
            OmiseUnavailableError: no definite answer (timeout, 429, 5xx, garbage).
            OmiseConfigurationError: misuse (no key for the call, a bad argument).
        """
        path = f"/sources/{_segment(source_id, 'source_id')}"
        key = self._key(prefer_public=False, allow_public=True)
        return self._checked_id(
            self._request("GET", path, key=key, expect="source"), source_id, path
        )

    # ---------------------------------------------------------------- charges

    def create_charge(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """
        ``POST /charges`` with ``params`` as JSON (``amount``, ``currency``,
        ``source`` as an id or an inline ``{"type": "mobile_banking_kbank"}``,
        ``return_uri``, ``metadata`` with the payment id, …). **Never retried**:
        on :class:`OmiseUnavailableError` a charge may exist; look it up with
        :meth:`find_charge` before creating another.

        Raises:
            OmiseAPIError: a definite refusal; no charge was created.
            OmiseUnavailableError: the outcome is unknown (incl. OmiseTimeoutError).
            OmiseConfigurationError: no secret key.
        """
        return self._request(
            "POST",
            "/charges",
            key=self._key(),
            json_body=dict(params),
            expect="charge",
            timeout=self.create_timeout,
        )

    def retrieve_charge(self, charge_id: str) -> dict[str, Any]:
        """
        ``GET /charges/:id`` with the secret key: the authoritative charge.

        Raises:
            OmiseAPIError: a definite refusal (e.g. 404 ``not_found``).
            OmiseUnavailableError: no definite answer (timeout, 429, 5xx, garbage).
            OmiseConfigurationError: misuse (no secret key, an empty id).
        """
        path = f"/charges/{_segment(charge_id, 'charge_id')}"
        return self._checked_id(
            self._request("GET", path, key=self._key(), expect="charge"), charge_id, path
        )

    def list_charges(
        self,
        *,
        offset: int = 0,
        limit: int = 20,
        from_: str | dt.datetime | None = None,
        to: str | dt.datetime | None = None,
        order: str | None = None,
    ) -> dict[str, Any]:
        """
        ``GET /charges``: a list object (``data``, ``total``, ``offset``, ``limit``).
        ``limit`` is 1 to 100; ``order`` is ``chronological`` (Omise's default)
        or ``reverse_chronological``; naive datetimes are taken as UTC.

        Raises:
            OmiseAPIError: a definite refusal (an Omise error object).
            OmiseUnavailableError: no definite answer (timeout, 429, 5xx, garbage).
            OmiseConfigurationError: misuse (no key for the call, a bad argument).
        """
        params = self._page_params(offset, limit, from_=from_, to=to, order=order)
        return self._request("GET", "/charges", key=self._key(), params=params, expect="list")

    def charges_created(
        self, *, since: dt.datetime, until: dt.datetime
    ) -> Iterator[dict[str, Any]]:
        """
        Every charge created in [``since``, ``until``], oldest first, as charge
        objects: ``GET /charges?from=…&to=…&order=chronological&limit=100``,
        page after page (``offset``). A generator: pages are read as the caller
        iterates, and each page is a GET retried like the other reads. Naive
        datetimes are taken as UTC; ``since`` is rounded down and ``until`` up to
        the second (Omise's timestamps are whole seconds), so the window never
        shrinks. Oldest-first pages keep earlier offsets stable while charges are
        created during the scan (they are appended at the end).

        Raises:
            OmiseAPIError: while iterating, a definite refusal (an error object).
            OmiseUnavailableError: while iterating, no definite answer (timeout, 429, 5xx,
                garbage, an item that is not a charge), or the window holds more
                than :data:`CHARGES_CREATED_MAX_PAGES` pages: a caller never
                mistakes an incomplete scan for "not found".
            OmiseConfigurationError: at the call, before any request: no secret
                key, ``since`` after ``until``.
        """
        self._key()
        start, end = _utc(since), _utc(until)
        if start > end:
            raise OmiseConfigurationError("since must not be after until")
        start = start.replace(microsecond=0)
        if end.microsecond:
            end = end.replace(microsecond=0) + dt.timedelta(seconds=1)
        return self._charges_created(start, end)

    def _charges_created(self, start: dt.datetime, end: dt.datetime) -> Iterator[dict[str, Any]]:
        offset = 0
        for _page in range(CHARGES_CREATED_MAX_PAGES):
            listed = self.list_charges(
                offset=offset, limit=_MAX_LIST_LIMIT, from_=start, to=end, order="chronological"
            )
            data, total = listed.get("data"), listed.get("total")
            if not isinstance(data, list) or not isinstance(total, int):
                raise OmiseUnavailableError(
                    "GET /charges: a list without its data or total",
                    http_status=200,
                    method="GET",
                    path="/charges",
                )
            if total > CHARGES_CREATED_MAX_PAGES * _MAX_LIST_LIMIT:
                raise self._too_many(total)
            for index, item in enumerate(data):
                if not isinstance(item, dict) or item.get("object") != "charge":
                    raise OmiseUnavailableError(
                        f"GET /charges: item {offset + index} is not a charge object",
                        http_status=200,
                        method="GET",
                        path="/charges",
                    )
                yield item
            offset += len(data)
            if not data or offset >= total:
                return
        raise self._too_many(None)

    @staticmethod
    def _too_many(total: int | None) -> OmiseUnavailableError:
        held = f"{total} charges" if total is not None else "more charges"
        return OmiseUnavailableError(
            f"GET /charges: the window holds {held} than the {CHARGES_CREATED_MAX_PAGES} "
            f"pages of {_MAX_LIST_LIMIT} this scan may read: it is incomplete",
            http_status=200,
            method="GET",
            path="/charges",
        )

    def list_charge_events(
        self, charge_id: str, *, offset: int = 0, limit: int = 20
    ) -> dict[str, Any]:
        """
        ``GET /charges/:id/events``: a list object of the charge's events.

        Raises:
            OmiseAPIError: a definite refusal (an Omise error object).
            OmiseUnavailableError: no definite answer (timeout, 429, 5xx, garbage).
            OmiseConfigurationError: misuse (no key for the call, a bad argument).
        """
        path = f"/charges/{_segment(charge_id, 'charge_id')}/events"
        params = self._page_params(offset, limit)
        return self._request("GET", path, key=self._key(), params=params, expect="list")

    def retrieve_event(self, event_id: str) -> dict[str, Any]:
        """
        ``GET /events/:id``.

        Raises:
            OmiseAPIError: a definite refusal (an Omise error object).
            OmiseUnavailableError: no definite answer (timeout, 429, 5xx, garbage).
            OmiseConfigurationError: misuse (no key for the call, a bad argument).
        """
        path = f"/events/{_segment(event_id, 'event_id')}"
        return self._checked_id(
            self._request("GET", path, key=self._key(), expect="event"), event_id, path
        )

    def search_charges(
        self,
        query: str,
        *,
        page: int = 1,
        per_page: int = 20,
        order: str | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """
        ``GET /search?scope=charge&query=…``: a search object (``data``,
        ``page``, ``total_pages``). ``filters`` become ``filters[name]=value``.
        The search is full-text: use :meth:`find_charge` for an exact payment id.

        Raises:
            OmiseAPIError: a definite refusal (an Omise error object).
            OmiseUnavailableError: no definite answer (timeout, 429, 5xx, garbage).
            OmiseConfigurationError: misuse (no key for the call, a bad argument).
        """
        if page < 1 or per_page < 1:
            raise OmiseConfigurationError("page and per_page must be at least 1")
        params: dict[str, str | int] = {
            "scope": "charge",
            "query": query,
            "page": page,
            "per_page": per_page,
        }
        if order is not None:
            params["order"] = order
        for name, value in (filters or {}).items():
            params[f"filters[{name}]"] = value
        return self._request("GET", "/search", key=self._key(), params=params, expect="search")

    def find_charge(self, payment_id: str) -> dict[str, Any] | None:
        """
        The newest charge whose ``metadata.payment_id`` is exactly
        ``payment_id``, or ``None`` when a complete search found none.

        Searches ``scope=charge`` for the payment id, newest first
        (``order=reverse_chronological``, Omise's documented default), 30 per
        page, and keeps only exact metadata matches: the search matches words
        and may return near matches. It reads every page up to 10; when more
        pages remain and no exact match was found, the scan is incomplete and
        raises rather than answering "none" (with newest-first pages, a match
        found early is the newest).

        Whether Omise's search indexes metadata is not settled, and a search
        index can lag: ``None`` means "not found by the search", never "no
        charge exists"; :meth:`charges_created` lists by creation time.

        Raises:
            OmiseAPIError: a definite refusal (an Omise error object).
            OmiseUnavailableError: no definite answer (timeout, 429, 5xx,
                garbage, a malformed search page, more pages than it may read).
            OmiseConfigurationError: misuse (no key for the call, a bad argument).
        """
        if not isinstance(payment_id, str) or not payment_id.strip():
            raise OmiseConfigurationError("payment_id must be a non-empty string")
        matches: list[dict[str, Any]] = []
        page = 1
        while True:
            result = self.search_charges(
                payment_id, page=page, per_page=_FIND_PER_PAGE, order="reverse_chronological"
            )
            data, total_pages = result.get("data"), result.get("total_pages")
            if not isinstance(data, list) or not isinstance(total_pages, int):
                raise OmiseUnavailableError(
                    "GET /search: a search page without its data or total_pages",
                    http_status=200,
                    method="GET",
                    path="/search",
                )
            matches.extend(c for c in data if _carries(c, payment_id))
            if page >= total_pages or (matches and page >= _FIND_MAX_PAGES):
                break
            if page >= _FIND_MAX_PAGES:
                raise OmiseUnavailableError(
                    f"GET /search: {total_pages} pages match {payment_id!r}; "
                    f"no exact match in the first {_FIND_MAX_PAGES}: the scan is incomplete",
                    http_status=200,
                    method="GET",
                    path="/search",
                )
            page += 1
        if not matches:
            return None
        # Newest first by created_at (ISO-8601 UTC sorts as text); ties: the earlier hit.
        return max(
            enumerate(matches),
            key=lambda pair: (str(pair[1].get("created_at") or ""), -pair[0]),
        )[1]

    # --------------------------------------------------------------- plumbing

    def _key(self, *, prefer_public: bool = False, allow_public: bool = False) -> str:
        if prefer_public and self._public_key:
            return self._public_key
        if self._secret_key:
            return self._secret_key
        if (prefer_public or allow_public) and self._public_key:
            return self._public_key
        raise OmiseConfigurationError(
            "this call needs the Omise secret key (OmiseClient(secret_key=...))"
        )

    @staticmethod
    def _page_params(
        offset: int,
        limit: int,
        *,
        from_: str | dt.datetime | None = None,
        to: str | dt.datetime | None = None,
        order: str | None = None,
    ) -> dict[str, str | int]:
        if offset < 0:
            raise OmiseConfigurationError("offset must be 0 or more")
        if not 1 <= limit <= _MAX_LIST_LIMIT:
            raise OmiseConfigurationError(f"limit must be from 1 to {_MAX_LIST_LIMIT}")
        params: dict[str, str | int] = {"offset": offset, "limit": limit}
        if from_ is not None:
            params["from"] = _format_time(from_)
        if to is not None:
            params["to"] = _format_time(to)
        if order is not None:
            params["order"] = order
        return params

    @staticmethod
    def _checked_id(obj: dict[str, Any], wanted: str, path: str) -> dict[str, Any]:
        if obj.get("id") != wanted:
            got = _short(repr(obj.get("id")), 40)
            raise OmiseUnavailableError(
                f"GET {path}: the answer is about another object (id {got})",
                http_status=200,
                method="GET",
                path=path,
            )
        return obj

    def _redact(self, text: str) -> str:
        for key in (self._secret_key, self._public_key):
            if key:
                text = text.replace(key, "[redacted]")
        return text

    def _send(
        self,
        method: Method,
        path: str,
        *,
        key: str,
        attempt: int,
        params: Mapping[str, str | int] | None,
        json_body: Mapping[str, Any] | None,
        timeout: httpx.Timeout | None,
    ) -> httpx.Response:
        """One HTTP attempt, logged, with httpx's exceptions translated."""
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            with _translate_transport_errors(method, path):
                response = self._http.request(
                    method,
                    path,
                    params=params,
                    json=json_body,
                    auth=httpx.BasicAuth(key, ""),
                    timeout=timeout if timeout is not None else self.timeout,
                )
            status = response.status_code
            return response
        except OmiseUnavailableError as exc:
            error = type(exc.__cause__ or exc).__name__
            raise
        finally:
            log.debug(
                "omise_request",
                method=method,
                path=path,
                status=status,
                attempt=attempt,
                elapsed_ms=round((time.monotonic() - started) * 1000, 1),
                error=error,
            )

    def _scrub(self, exc: OmiseAPIError | OmiseUnavailableError) -> None:
        """Make sure no key appears in an error (defence in depth)."""
        if isinstance(exc, OmiseAPIError):
            exc.message = self._redact(exc.message)
        else:
            exc.reason = self._redact(exc.reason)
        exc.args = tuple(self._redact(str(a)) for a in exc.args)
        if exc.error is not None:
            exc.error = {
                k: self._redact(v) if isinstance(v, str) else v for k, v in exc.error.items()
            }

    def _request(
        self,
        method: Method,
        path: str,
        *,
        key: str,
        expect: str,
        params: Mapping[str, str | int] | None = None,
        json_body: Mapping[str, Any] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> dict[str, Any]:
        attempts = self.retry.attempts if method == "GET" else 1
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._send(
                    method,
                    path,
                    key=key,
                    attempt=attempt,
                    params=params,
                    json_body=json_body,
                    timeout=timeout,
                )
                return _interpret(
                    response, method=method, path=path, expect=expect, now=time.time()
                )
            except OmiseAPIError as exc:
                self._scrub(exc)
                raise
            except OmiseUnavailableError as exc:
                self._scrub(exc)
                retryable = (
                    exc.http_status is None
                    or exc.http_status in self.retry.statuses
                    or isinstance(exc, OmiseTransientError)
                )
                if not retryable or attempt >= attempts:
                    raise
                if exc.retry_after is not None:
                    if exc.retry_after > self.retry.max_retry_after:
                        raise
                    delay = exc.retry_after
                else:
                    delay = self.retry.backoff(attempt)
                log.warning(
                    "omise_retry",
                    method=method,
                    path=path,
                    status=exc.http_status,
                    attempt=attempt,
                    delay_s=round(delay, 3),
                    error=type(exc).__name__,
                )
            self._sleep(delay)
