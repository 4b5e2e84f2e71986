"""The file server's clock, read from here: how old a file is, whatever this host's clock says.

Every age the protocol judges (a claim's grace period, a journal token's, a pending token's,
how long a heartbeat file has been silent) compares a time the file server stamped
(``st_ctime``, ``st_mtime``) with "now". On NFS those stamps come from the server's clock,
so "now" must too: a host whose clock runs 5 s ahead would otherwise see every file 5 s
older than it is, skip grace periods, and reap attempts that are alive.

"Now" on the server is this host's clock plus an offset, measured by touching a probe file
(``locks/clock.<host>``: the server stamps a write with its own time) and reading
its ``st_mtime`` back. The offset is measured on first use and again every
:data:`REMEASURE_SECONDS` of real time; on a local filesystem it is about zero. The
probe's cost (an open, a write and a ``stat``) is paid once a minute, not per age.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time

from store_fs._disk.context import Context
from store_fs._disk.fsio import host_tag

__all__ = ["REMEASURE_SECONDS", "server_age", "server_now", "server_offset"]

log = logging.getLogger(__name__)

REMEASURE_SECONDS = 60.0


class _Offset:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = 0.0
        self.measured_at: float | None = None  # time.monotonic(): real time, even under a FakeClock


def _measure(ctx: Context) -> float:
    # One probe per host, shared by its processes: the stamp, not the content, is what is read,
    # and a store written by thousands of one-shot processes keeps one file per machine.
    probe = ctx.layout.locks / f"clock.{host_tag()}"
    before = ctx.clock.time()
    try:
        # A write, not utime(path, None): every filesystem stamps a write with its own clock
        # when it lands (on NFS at close), while "set to now" is not carried faithfully by all
        # (some FUSE layers turn it into the epoch).
        # Not blocking, not through a link: a FIFO planted under this fixed name hung every
        # command that opens the store; such a name is judged by this host's clock instead.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_NOFOLLOW
        fd = os.open(probe, flags, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(probe))
            os.write(fd, b"file server clock probe\n")
        finally:
            os.close(fd)
        stamped = os.stat(probe).st_mtime
    except OSError as err:  # a read-only store, say: judge by this host's clock
        log.debug("cannot read the file server's clock through %s: %s", probe, err)
        return 0.0
    after = ctx.clock.time()
    return stamped - (before + after) / 2


def server_offset(ctx: Context) -> float:
    """Seconds to add to this host's clock (``ctx.clock``, so tests can drive it) to read the
    file server's. Writers put it beside the times they write (heartbeats), so that readers on
    other hosts can move those times onto the server's clock too."""
    offset: _Offset = ctx.local("server-clock", _Offset)
    with offset.lock:
        real = time.monotonic()
        if offset.measured_at is None or real - offset.measured_at >= REMEASURE_SECONDS:
            offset.value = _measure(ctx)
            offset.measured_at = real
        return offset.value


def server_now(ctx: Context) -> float:
    """Now, by the file server's clock."""
    return ctx.clock.time() + server_offset(ctx)


def server_age(ctx: Context, stamp: float) -> float:
    """Seconds since ``stamp``, a time the file server put on a file (``st_ctime``/``st_mtime``)."""
    return server_now(ctx) - stamp
