"""Stored row shapes: canonical JSON, the hash chain, bodies, upcasting old events."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kplus_fsm import EventKind, Tracker, _codec
from kplus_fsm._model import EVENT_VERSIONS


class TestCanonicalJSON:
    """The hash chain depends on one exact serialisation."""

    def test_sorted_compact_utf8(self) -> None:
        """Keys sorted, no spaces, non-ASCII kept as is."""
        assert _codec.dumps({"b": 1, "a": "บาท"}) == '{"a":"บาท","b":1}'

    def test_chain_hash_depends_on_previous_and_content(self) -> None:
        """Changing the previous hash or any column changes the hash."""
        row = {"id": 1, "x": "a"}
        base = _codec.chain_hash(_codec.GENESIS, row, ("id", "x"))
        assert len(base) == 64
        assert _codec.chain_hash("1" * 64, row, ("id", "x")) != base
        assert _codec.chain_hash(_codec.GENESIS, {"id": 1, "x": "b"}, ("id", "x")) != base


def stdlib_chain_hash(previous: str, values: list[Any]) -> str:
    """The chain's definition, written with the standard library only."""
    payload = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((previous + payload).encode("utf-8")).hexdigest()


row_values = st.lists(
    st.one_of(
        st.none(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.text(st.characters(blacklist_categories=["Cs"])),
    ),
    min_size=1,
    max_size=6,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=["Cs"])),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


class TestFastCodec:
    """orjson does the work; the stored forms and hashes stay the standard library's."""

    @given(values=row_values)
    def test_chain_hash_is_the_stdlib_definition(self, values: list[Any]) -> None:
        """Logs written before the switch to orjson verify after it, byte for byte."""
        row = {str(i): v for i, v in enumerate(values)}
        columns = tuple(row)
        assert _codec.chain_hash("a" * 64, row, columns) == stdlib_chain_hash("a" * 64, values)

    @given(value=json_values)
    def test_round_trip_is_exact(self, value: Any) -> None:
        """Whatever dumps writes, loads reads back equal (big integers included)."""
        assert _codec.loads(_codec.dumps(value)) == value

    def test_big_integers_are_exact(self) -> None:
        """Beyond 64 bits orjson would read a float: such values are marked and read exactly."""
        text = _codec.dumps({"order": 2**70})
        assert text == ' {"order":1180591620717411303424}'
        assert _codec.loads(text) == {"order": 2**70}
        assert isinstance(_codec.loads(text)["order"], int)

    def test_stdlib_text_still_reads(self) -> None:
        """Rows written by the standard library before the switch read the same."""
        value = {"b": [1, 2.5, None, "x"], "a": "บาท"}
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert _codec.loads(text) == value
        assert _codec.dumps(value) == text


class TestParseJson:
    """Inputs are read by orjson only where its reading is the standard library's."""

    @given(value=json_values | st.integers(min_value=-(2**80), max_value=2**80))
    def test_same_value_as_the_standard_library(self, value: Any) -> None:
        text = json.dumps(value, ensure_ascii=False)
        for raw in (text, text.encode("utf-8")):
            parsed = _codec.parse_json(raw)
            assert parsed == json.loads(raw)
            assert type(parsed) is type(json.loads(raw))

    @pytest.mark.parametrize(
        "text",
        [
            "-9223372036854775809",
            "18446744073709551616",
            '{"order": 123456789012345678901234567890}',
            "NaN",
            '["\\ud800"]',
            '{"a": 1, "a": 2}',
        ],
    )
    def test_edge_cases(self, text: str) -> None:
        """Big integers stay integers; NaN and lone surrogates read as json.loads reads them."""
        got, want = _codec.parse_json(text), json.loads(text)
        assert repr(got) == repr(want)

    @pytest.mark.parametrize("text", ["", "{", "[1,]", "\ufeff{}", "{'a': 1}"])
    def test_errors_are_the_standard_librarys(self, text: str) -> None:
        with pytest.raises(ValueError, match=r".") as ours:
            _codec.parse_json(text)
        with pytest.raises(ValueError, match=r".") as theirs:
            json.loads(text)
        assert type(ours.value) is type(theirs.value)
        assert str(ours.value) == str(theirs.value)


class TestBodies:
    """Any raw input can be stored and read back exactly."""

    @pytest.mark.parametrize(
        ("raw", "encoding"),
        [
            (b'{"object":"event"}', "text"),
            (b"\xff\xfe not utf-8", "base64"),
            ("plain text", "text"),
            ({"b": [1, 2], "a": None}, "json"),
        ],
    )
    def test_round_trip(self, raw: Any, encoding: str) -> None:
        """encode_body and decode_body are inverses; bytes that are not UTF-8 go base64."""
        body, enc = _codec.encode_body(raw)
        assert enc == encoding
        back = _codec.decode_body(body, enc)
        if isinstance(raw, bytes) and enc == "text":
            assert back == raw.decode()
        else:
            assert back == raw


class TestUpcasting:
    """Old payload versions are lifted to the current one on read."""

    def test_old_version_is_upcast(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A v1 payment.requested read after its kind moved to v2 goes through the upcaster."""
        with Tracker(tmp_path / "k.db") as t:
            t.request_payment(payment_id="p1", amount=5_000, return_uri="https://s.example/r")
            monkeypatch.setitem(EVENT_VERSIONS, EventKind.PAYMENT_REQUESTED, 2)

            def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
                return {**data, "channel": "web"}

            monkeypatch.setitem(_codec.UPCASTERS, ("payment.requested", 1), v1_to_v2)
            (event,) = t.store.stream("p1")
            assert event.event_version == 2
            assert event.data["channel"] == "web"
            assert event.data["amount"] == 5_000
            # The stored row itself is untouched (append-only, hash chain intact).
            assert t.verify().ok

    def test_unknown_kind_left_alone(self) -> None:
        """A kind this version does not know is returned as stored."""
        assert _codec.upcast("future.kind", 7, {"x": 1}) == (7, {"x": 1})
