"""
Omise webhook signatures (``kplus_fsm.adapters.signatures``), checked against
values made independently here with plain ``hmac``/``hashlib`` from the scheme
of docs/omise-facts.md: lower-case hex HMAC-SHA256 of ``"<timestamp>.<raw
body>"``, keyed with the base64-**decoded** secret; comma-separated signatures
during a secret roll; timestamps in Unix seconds within a tolerance.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from kplus_fsm.adapters.signatures import (
    DEFAULT_TOLERANCE,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureCheck,
    decode_secret,
    sign,
    signature_headers,
    verify_signature,
)

KEY = b"the dashboard's webhook secret, raw bytes"
SECRET = base64.b64encode(KEY).decode()
OLD_KEY = b"the secret before the roll"
OLD_SECRET = base64.b64encode(OLD_KEY).decode()
BODY = b'{"object": "event", "id": "evnt_test_1", "key": "charge.complete"}'
NOW = 1_767_225_600


def by_hand(key: bytes, timestamp: int, body: bytes) -> str:
    """The signature, computed without the module under test."""
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def headers(signature: str, timestamp: int | str = NOW) -> dict[str, str]:
    return {"Omise-Signature": signature, "Omise-Signature-Timestamp": str(timestamp)}


class TestSigning:
    """What the fake Omise sends, byte for byte."""

    def test_sign_is_hmac_sha256_of_timestamp_dot_body(self) -> None:
        expected = by_hand(KEY, NOW, BODY)
        assert sign(BODY, SECRET, NOW) == expected
        assert sign(BODY, SECRET.encode(), str(NOW)) == expected
        assert len(expected) == 64
        assert expected == expected.lower()

    def test_headers_carry_every_secret_in_order(self) -> None:
        sent = signature_headers(BODY, [SECRET, OLD_SECRET], NOW)
        assert (SIGNATURE_HEADER, TIMESTAMP_HEADER) == (
            "Omise-Signature",
            "Omise-Signature-Timestamp",
        )
        assert sent == {
            "Omise-Signature": f"{by_hand(KEY, NOW, BODY)},{by_hand(OLD_KEY, NOW, BODY)}",
            "Omise-Signature-Timestamp": str(NOW),
        }


class TestVerifying:
    """A delivery signed by hand is accepted; anything else is refused with a reason."""

    def test_a_signature_made_by_hand_is_valid(self) -> None:
        check = verify_signature(BODY, headers(by_hand(KEY, NOW, BODY)), [SECRET], now=NOW)
        assert check == SignatureCheck(True, "signature valid", NOW, True)
        assert check.verification == "verified"
        assert not check.stale

    def test_header_names_any_case_and_upper_case_hex(self) -> None:
        sent = {
            "omise-signature": by_hand(KEY, NOW, BODY).upper(),
            "OMISE-SIGNATURE-TIMESTAMP": f" {NOW} ",
        }
        assert verify_signature(BODY, sent, [SECRET], now=NOW).ok

    def test_during_a_roll_any_listed_signature_matches_any_secret(self) -> None:
        old_only = by_hand(OLD_KEY, NOW, BODY)
        both = f"{'0' * 64}, {old_only}"
        assert verify_signature(BODY, headers(both), [SECRET, OLD_SECRET], now=NOW).ok
        assert not verify_signature(BODY, headers(old_only), [SECRET], now=NOW).ok

    def test_a_tampered_body_or_another_key_is_refused(self) -> None:
        genuine = by_hand(KEY, NOW, BODY)
        tampered = verify_signature(BODY + b" ", headers(genuine), [SECRET], now=NOW)
        other = verify_signature(BODY, headers(by_hand(b"x", NOW, BODY)), [SECRET], now=NOW)
        for check in (tampered, other):
            assert check == SignatureCheck(
                False, "no signature matches the webhook secret", NOW, False
            )
            assert check.verification == "failed: no signature matches the webhook secret"

    def test_the_timestamp_is_part_of_the_signed_message(self) -> None:
        moved = headers(by_hand(KEY, NOW, BODY), NOW + 1)
        assert not verify_signature(BODY, moved, [SECRET], now=NOW).signed

    @pytest.mark.parametrize(
        ("offset", "reason"),
        [
            (-3600, "the signature timestamp is 3600 s old (limit 300 s)"),
            (3600, "the signature timestamp is 3600 s in the future (limit 300 s)"),
        ],
    )
    def test_outside_the_tolerance_genuine_is_stale(self, offset: int, reason: str) -> None:
        at = NOW + offset
        check = verify_signature(BODY, headers(by_hand(KEY, at, BODY), at), [SECRET], now=NOW)
        assert check == SignatureCheck(False, reason, at, True, out_of_tolerance=True)
        assert check.stale
        assert DEFAULT_TOLERANCE == 300.0

    def test_within_a_custom_tolerance(self) -> None:
        at = NOW - 3600
        sent = headers(by_hand(KEY, at, BODY), at)
        assert verify_signature(BODY, sent, [SECRET], now=NOW, tolerance=3600).ok
        assert not verify_signature(BODY, sent, [SECRET], now=NOW, tolerance=3599).ok

    @pytest.mark.parametrize(
        ("sent", "reason"),
        [
            ({"Omise-Signature-Timestamp": str(NOW)}, "missing Omise-Signature header"),
            ({"Omise-Signature": "ab"}, "missing Omise-Signature-Timestamp header"),
            (headers("ab", "\u00b2"), "the signature timestamp is not Unix seconds"),
            (headers("ab", "1.5"), "the signature timestamp is not Unix seconds"),
            (headers("ab", "1" * 13), "the signature timestamp is not Unix seconds"),
        ],
    )
    def test_malformed_headers(self, sent: dict[str, str], reason: str) -> None:
        check = verify_signature(BODY, sent, [SECRET], now=NOW)
        assert (check.ok, check.reason, check.signed) == (False, reason, False)

    def test_a_non_ascii_signature_is_wrong_not_an_error(self) -> None:
        check = verify_signature(BODY, headers("\u00e9"), [SECRET], now=NOW)
        assert (check.ok, check.signed) == (False, False)


class TestSecrets:
    """The key is the base64-decoded secret; a bad secret never shows in the error."""

    def test_decode(self) -> None:
        assert decode_secret(SECRET) == KEY
        assert decode_secret(SECRET.encode()) == KEY

    @pytest.mark.parametrize("bad", ["not base64 %%% sekrit", ""])
    def test_bad_secrets(self, bad: str) -> None:
        with pytest.raises(ValueError, match="webhook secret") as caught:
            decode_secret(bad)
        assert "sekrit" not in str(caught.value)
        with pytest.raises(ValueError, match="webhook secret"):
            sign(BODY, bad, NOW)

    def test_no_secret_configured(self) -> None:
        with pytest.raises(ValueError, match="no webhook secret configured"):
            verify_signature(BODY, headers("ab"), [], now=NOW)
