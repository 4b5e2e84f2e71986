"""Id safety checks (store_fs/_disk/ids.py): the plain-id shortcut accepts exactly what the
rules accept, for any string (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from store_fs._disk.ids import MAX_NAME_LENGTH, check_name_id
from store_fs.errors import InvalidIdError


def allowed_by_the_rules(value: str) -> bool:
    """docs/behaviour.md's rules for an id that becomes a file name, written out plainly."""
    try:
        encoded = value.encode()
    except UnicodeEncodeError:
        return False
    return (
        value != ""
        and not any(c in value for c in "\x00/\\")
        and not value.startswith(".")
        and ".." not in value
        and not any(ord(c) < 32 or ord(c) == 127 for c in value)
        and len(value) <= MAX_NAME_LENGTH
        and len(encoded) <= MAX_NAME_LENGTH
    )


def accepted(value: str) -> bool:
    try:
        assert check_name_id("worker", value) == value
    except InvalidIdError:
        return False
    return True


ODD = st.text(alphabet="ab-_.:/\\\x00\x01\x1f\x7f é\ud800", max_size=MAX_NAME_LENGTH + 10)
PLAIN = st.from_regex(rf"[A-Za-z0-9_\-]{{{MAX_NAME_LENGTH - 3},{MAX_NAME_LENGTH + 3}}}", fullmatch=True)


@settings(max_examples=500)
@given(st.one_of(st.text(), ODD, PLAIN, st.just("ro-0123456789ab"), st.just("-")))
def test_an_id_is_accepted_exactly_when_the_rules_allow_it(value: str) -> None:
    assert accepted(value) == allowed_by_the_rules(value)
