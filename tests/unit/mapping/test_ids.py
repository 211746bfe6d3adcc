"""Deterministic ids and W3C traceparent parsing."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepscope.mapping.ids import parse_traceparent, span_id_for, trace_id_for_run

VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class TestDerivedIds:
    def test_trace_id_is_stable(self) -> None:
        """The same run id yields the same trace id on every call (and so in every process)."""
        assert trace_id_for_run("run_abc") == trace_id_for_run("run_abc")
        # A fixed value pins the hash scheme: changing it would split every in-flight trace across a deploy.
        assert trace_id_for_run("run_abc") == int(
            hashlib.blake2b(b"stepscope/v1\x1ftrace\x1frun_abc", digest_size=16).hexdigest(), 16
        )

    def test_trace_ids_are_distinct_and_sized(self) -> None:
        """Different runs get different 128-bit trace ids."""
        ids = {trace_id_for_run(f"run_{i}") for i in range(1000)}
        assert len(ids) == 1000
        assert all(0 < value < 2**128 for value in ids)

    def test_span_ids_depend_on_kind_and_parts(self) -> None:
        """Span ids differ across kinds and part boundaries, and fit in 64 bits."""
        ids = [
            span_id_for("run", "x"),
            span_id_for("step", "x"),
            span_id_for("call", "a:b", "c"),
            span_id_for("call", "a", "b:c"),
            span_id_for("call", "a", "b"),
        ]
        assert len(set(ids)) == len(ids)
        assert all(0 < value < 2**64 for value in ids)
        assert span_id_for("step", "x") == 0xC7A29522316D5B2E  # the same in every process: a re-export is a duplicate

    @given(st.text(min_size=1, max_size=40))
    def test_ids_never_zero(self, text: str) -> None:
        """No input yields an all-zero (invalid) id."""
        assert trace_id_for_run(text) != 0
        assert span_id_for("step", text) != 0


class TestParseTraceparent:
    def test_valid(self) -> None:
        """A version-00 traceparent yields its trace id, span id and flags."""
        assert parse_traceparent(VALID) == (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 1)

    def test_surrounding_blanks_ignored(self) -> None:
        """Blanks around a metadata value do not invalidate it."""
        assert parse_traceparent(f" {VALID}\t") == parse_traceparent(VALID)

    def test_unsampled_flags_kept(self) -> None:
        """Flags 00 are returned as 0."""
        assert parse_traceparent(VALID[:-2] + "00") == (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 0)

    @pytest.mark.parametrize(
        "value",
        [
            None,
            "",
            "garbage",
            VALID.upper(),
            "01" + VALID[2:],
            "ff" + VALID[2:],
            VALID + "-extra",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
            "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
        ],
    )
    def test_invalid_is_none(self, value: str | None) -> None:
        """Anything but a well-formed version-00 traceparent with non-zero ids is ignored."""
        assert parse_traceparent(value) is None
