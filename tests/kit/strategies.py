"""Hypothesis strategies the property tests share."""

from __future__ import annotations

from hypothesis import strategies as st

TIMESTAMPS = st.one_of(
    st.none(),
    st.integers(min_value=-(10**13), max_value=10**13),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 4_102_444_799, 4_102_444_800, 10**12, -1]),
)
"""What an API may send as a Unix timestamp: none, absurd integers, NaN and infinities, and the edges of the year
2100 (the last accepted second and the first refused one)."""
U64 = 2**64
"""OTLP span times are unsigned 64-bit nanoseconds: every mapped time must be below this."""
