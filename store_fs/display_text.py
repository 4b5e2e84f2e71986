"""Stored text made safe to show: characters that would not show as themselves become codes.

Stored values (worker ids, span names, error messages, prompts) come from agents and are
shown to people by ``agl``'s tables and ``agl report``'s page. Control characters there
are worse than unreadable: an escape sequence written to a terminal moves the cursor,
retitles the window or hides the lines around it; a NUL is an HTML parse error; and the
bidirectional controls reorder the text after them, so U+202E can make a name read as
another. :func:`visible` writes each of them as ``\\uXXXX``, except tab, line feed and
carriage return: a prompt keeps its lines on the page, and a table joins whitespace anyway.
"""

from __future__ import annotations

from typing import Final

__all__ = ["visible"]

_AS_CODES: Final = {
    code: f"\\u{code:04x}"
    for code in (
        *range(0x00, 0x09),
        0x0B,
        0x0C,
        *range(0x0E, 0x20),
        *range(0x7F, 0xA0),
        0x061C,
        0x200E,
        0x200F,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
}


def visible(text: str) -> str:
    """``text`` with every control (but tab, line feed and carriage return) and bidirectional
    control written as ``\\uXXXX``."""
    return text.translate(_AS_CODES)
