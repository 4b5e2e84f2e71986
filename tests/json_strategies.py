"""Hypothesis strategies for JSON values and span attributes, shared by the property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# orjson wants valid UTF-8 (no lone surrogates) and 64-bit integers.
ints64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)


def texts(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(exclude_categories=["Cs"]), max_size=max_size)


def json_values(
    text: st.SearchStrategy[str], *, max_children: int, max_leaves: int
) -> st.SearchStrategy[Any]:
    """Any JSON value orjson can write."""
    return st.recursive(
        st.none() | st.booleans() | ints64 | finite | text,
        lambda children: (
            st.lists(children, max_size=max_children) | st.dictionaries(text, children, max_size=max_children)
        ),
        max_leaves=max_leaves,
    )


def attribute_values(text: st.SearchStrategy[str], *, min_floats: int = 0) -> st.SearchStrategy[Any]:
    """Values of every member of the span attribute union (scalars and one-type lists)."""
    return st.one_of(
        text,
        st.booleans(),
        ints64,
        finite,
        st.lists(text, max_size=4),
        st.lists(st.booleans(), max_size=4),
        st.lists(ints64, max_size=4),
        st.lists(finite, min_size=min_floats, max_size=4),
    )
