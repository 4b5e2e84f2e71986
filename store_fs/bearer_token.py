"""What a bearer token of ``agl store`` (``--token``, ``AGL_STORE_TOKEN``) may be, said once
for the server and its clients."""

from __future__ import annotations

from store_fs.errors import BadTokenError

__all__ = ["check_token"]


def check_token(token: str) -> str:
    """``token`` if it travels in an ``Authorization: Bearer`` header unchanged: visible ASCII,
    no space. Anything else raises :class:`~store_fs.errors.BadTokenError`: the server compared
    the UTF-8 bytes of a token the client sent as Latin-1 (the right token refused), a
    surrounding space was stripped from what arrived but not from what was expected, and a
    line break (a token file saved with CRLF) made the request malformed."""
    if not token:
        raise BadTokenError("the bearer token is empty")
    odd = next((c for c in token if not "!" <= c <= "~"), None)
    if odd is not None:
        raise BadTokenError(
            f"the bearer token holds {odd!r}: use visible ASCII characters only (no spaces or line "
            "breaks; e.g. the output of 'openssl rand -hex 32')"
        )
    return token
