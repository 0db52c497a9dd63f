"""
Omise webhook signatures (omise-facts §3.4, CORROBORATED, not CONFIRMED):

- headers ``Omise-Signature`` and ``Omise-Signature-Timestamp`` (Unix seconds);
- signed message: ``<timestamp> + "." + <raw body bytes>``;
- HMAC-SHA256 keyed with the dashboard's webhook secret **base64-decoded**;
- lower-case hex; during a secret roll the header carries several signatures
  separated by commas, and any one matching is enough.

Verification is constant-time, over the raw bytes, with a bounded clock skew
(5 minutes either way by default). No secret ever appears in a message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import attrs

SIGNATURE_HEADER: Final = "Omise-Signature"
TIMESTAMP_HEADER: Final = "Omise-Signature-Timestamp"
DEFAULT_TOLERANCE: Final = 300.0

__all__ = [
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SignatureCheck",
    "decode_secret",
    "sign",
    "signature_headers",
    "verify_signature",
]


def decode_secret(secret: str | bytes) -> bytes:
    """
    The HMAC key of a webhook secret as shown in the dashboard (base64).

    Raises:
        ValueError: the secret is not valid base64 (the message never shows it).
    """
    try:
        key = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the webhook secret is not valid base64") from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def sign(body: bytes, secret: str | bytes, timestamp: int | str) -> str:
    """The hex HMAC-SHA256 signature of ``body`` at ``timestamp``."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(decode_secret(secret), message, hashlib.sha256).hexdigest()


def signature_headers(
    body: bytes, secrets: Sequence[str | bytes], timestamp: int
) -> dict[str, str]:
    """The two headers Omise sends, signed with every secret (rotation: several)."""
    return {
        SIGNATURE_HEADER: ",".join(sign(body, s, timestamp) for s in secrets),
        TIMESTAMP_HEADER: str(timestamp),
    }


@attrs.frozen
class SignatureCheck:
    """
    The verdict on one delivery: ``ok``, and ``reason`` in words when not.
    ``signed`` says whether a signature matched the webhook secret, whatever
    the timestamp: a delivery that is ``signed`` but not ``ok`` is genuine but
    outside the clock tolerance (stale, or from the future).
    ``out_of_tolerance``: the timestamp is outside the tolerance, signed or not.
    """

    ok: bool
    reason: str
    timestamp: int | None = None
    signed: bool = False
    out_of_tolerance: bool = False

    @property
    def verification(self) -> str:
        """The string recorded in ``inbox.verification``."""
        return "verified" if self.ok else f"failed: {self.reason}"

    @property
    def stale(self) -> bool:
        """Signed with the secret, but its timestamp is outside the tolerance."""
        return self.signed and not self.ok


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lower = name.lower()
    for key, value in headers.items():
        if key.lower() == lower:
            return value
    return None


def verify_signature(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Iterable[str | bytes],
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> SignatureCheck:
    """
    Check a delivery's signature against any of ``secrets`` (base64), on the
    raw ``body`` bytes, refusing timestamps more than ``tolerance`` seconds away
    from ``now`` (Unix seconds) in either direction.
    """
    keys = [decode_secret(s) for s in secrets]
    if not keys:
        raise ValueError("no webhook secret configured")
    raw_sig = _header(headers, SIGNATURE_HEADER)
    raw_ts = _header(headers, TIMESTAMP_HEADER)
    if not raw_sig:
        return SignatureCheck(False, f"missing {SIGNATURE_HEADER} header")
    if not raw_ts:
        return SignatureCheck(False, f"missing {TIMESTAMP_HEADER} header")
    ts_text = raw_ts.strip()
    # isascii: str.isdigit() also accepts superscripts and other scripts' digits
    # (U+00B2, U+0661), which int() or the ASCII signed message refuse.
    if not ts_text.isascii() or not ts_text.isdigit() or len(ts_text) > 12:
        return SignatureCheck(False, "the signature timestamp is not Unix seconds")
    timestamp = int(ts_text)
    message = ts_text.encode("ascii") + b"." + body
    # compare_digest refuses non-ASCII text: such a "signature" can only be wrong.
    offered = [s.strip().lower() for s in raw_sig.split(",") if s.strip() and s.isascii()]
    signed = False
    for key in keys:
        expected = hmac.new(key, message, hashlib.sha256).hexdigest()
        # compare_digest: constant time for each comparison.
        if any(hmac.compare_digest(expected, sig) for sig in offered):
            signed = True
            break
    skew = now - timestamp
    if skew > tolerance:
        return SignatureCheck(
            False,
            f"the signature timestamp is {int(skew)} s old (limit {int(tolerance)} s)",
            timestamp,
            signed,
            out_of_tolerance=True,
        )
    if -skew > tolerance:
        return SignatureCheck(
            False,
            f"the signature timestamp is {int(-skew)} s in the future (limit {int(tolerance)} s)",
            timestamp,
            signed,
            out_of_tolerance=True,
        )
    if signed:
        return SignatureCheck(True, "signature valid", timestamp, True)
    return SignatureCheck(False, "no signature matches the webhook secret", timestamp)
