"""The store's durability setting (``FORMAT.json``, docs/format.md "Durability"): recorded
when a store is made, changed by ``agl init --durability``, and followed by every process
that opens the store, whatever it asked for, so a durable store stays durable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import Agl, assert_error
from server_helpers import ServerProcess, raw_request

from store_fs import FileStore, init_store
from store_fs._disk import format_file as format_file_module
from store_fs._disk import fsio
from store_fs.errors import CorruptRecordError, ExitCode, MaintenanceBusyError

FIXTURE = Path(__file__).with_name("fixtures") / "store-7ad8760"

# Counts this process's fsync and fdatasync calls: one byte each, appended to $SYNC_LOG.<pid>.
SITECUSTOMIZE = """
import os
_log = os.environ.get("SYNC_LOG")
if _log:
    _fd = os.open(f"{_log}.{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _fsync, _fdatasync = os.fsync, os.fdatasync

    def fsync(fd):
        os.write(_fd, b"s")
        return _fsync(fd)

    def fdatasync(fd):
        os.write(_fd, b"d")
        return _fdatasync(fd)

    os.fsync, os.fdatasync = fsync, fdatasync
"""


def format_file(root: Path) -> dict[str, object]:
    body: dict[str, object] = json.loads((root / "FORMAT.json").read_text())
    return body


def test_a_store_records_the_durability_it_was_made_with_and_every_opener_follows_it(tmp_path: Path) -> None:
    durable = FileStore(tmp_path / "durable", durability="fsync")
    assert durable.created
    assert durable.durability == "fsync"
    assert format_file(durable.root)["durability"] == "fsync"
    # No argument, or one asking for less: the store's setting wins.
    assert FileStore(durable.root, create=False).durability == "fsync"
    assert FileStore(durable.root, create=False, durability="process").durability == "fsync"

    plain = FileStore(tmp_path / "plain")
    assert plain.durability == "process"
    assert format_file(plain.root)["durability"] == "process"
    # A process may ask for more than the store requires; the store's setting stays.
    assert FileStore(plain.root, durability="fsync").durability == "fsync"
    assert format_file(plain.root)["durability"] == "process"
    assert FileStore(plain.root).durability == "process"


def test_init_store_changes_an_existing_stores_setting_and_keeps_the_rest_of_the_file(tmp_path: Path) -> None:
    root = tmp_path / "old"
    shutil.copytree(FIXTURE, root)
    before = format_file(root)
    assert "durability" not in before  # written before the setting existed
    assert FileStore(root, create=False).durability == "process"

    assert init_store(root) == root  # no setting given: nothing changes
    assert format_file(root) == before
    init_store(root, durability="fsync")
    assert format_file(root) == {**before, "durability": "fsync"}  # created_by kept
    assert FileStore(root, create=False).durability == "fsync"
    init_store(root, durability="process")
    assert FileStore(root, create=False).durability == "process"
    with pytest.raises(ValueError, match="durability"):
        init_store(root, durability="always")  # type: ignore[arg-type]


def test_a_format_file_naming_an_unknown_durability_is_damage(tmp_path: Path) -> None:
    root = FileStore(tmp_path / "store").root
    for value in ("always", 5, None):
        body = {**format_file(root), "durability": value}
        (root / "FORMAT.json").write_text(json.dumps(body))
        with pytest.raises(CorruptRecordError, match="durability"):
            FileStore(root, create=False)
        with pytest.raises(CorruptRecordError, match="durability"):
            init_store(root, durability="fsync")  # a damaged file is not rewritten
        assert format_file(root) == body


HOLD_LOCK = """
import sys, time
from pathlib import Path
from store_fs._disk.layout import Layout
from store_fs._disk.maintenance import maintenance_lock
with maintenance_lock(Layout(Path(sys.argv[1]))):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _hold_lock(root: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(root), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    return holder


def _release(holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait(10)
    if holder.stdout is not None:
        holder.stdout.close()


def test_the_setting_changes_under_the_maintenance_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = FileStore(tmp_path / "store").root
    monkeypatch.setattr(format_file_module, "LOCK_WAIT_SECONDS", 0.3)
    holder = _hold_lock(root, 60)
    try:
        with pytest.raises(MaintenanceBusyError):  # a repair that does not end
            init_store(root, durability="fsync")
        assert format_file(root)["durability"] == "process"
        init_store(root, durability="process")  # already so: no lock needed
    finally:
        _release(holder)
    holder = _hold_lock(root, 0.1)  # a repair that ends soon: the change waits for it
    try:
        monkeypatch.setattr(format_file_module, "LOCK_WAIT_SECONDS", 30.0)
        init_store(root, durability="fsync")
    finally:
        _release(holder)
    assert format_file(root)["durability"] == "fsync"


CREATE = """
import sys, time
from store_fs import FileStore
start = float(sys.argv[2])
while time.time() < start:
    pass
store = FileStore(sys.argv[1], durability=sys.argv[3])
print(store.created, store.durability, flush=True)
"""


def test_of_processes_creating_one_store_at_once_exactly_one_created_it(tmp_path: Path) -> None:
    """The first to write FORMAT.json created the store and set it; the others opened it."""
    root = tmp_path / "store"
    start = time.time() + 1.5
    asked = ["process", "fsync", "process", "fsync"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, str(root), str(start), setting], stdout=subprocess.PIPE, text=True
        )
        for setting in asked
    ]
    answers = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        answers.append(out.split())
    assert [created for created, _ in answers].count("True") == 1, answers
    setting = format_file(root)["durability"]
    creator = next(i for i, (created, _) in enumerate(answers) if created == "True")
    assert setting == asked[creator]
    for (_, used), wanted in zip(answers, asked, strict=True):
        assert used == ("fsync" if "fsync" in (wanted, setting) else "process")


def test_agl_init_sets_shows_and_changes_the_durability(tmp_path: Path) -> None:
    agl = Agl(tmp_path / "store", tmp_path)
    made = agl("init", "--durability", "fsync")
    assert made.code == 0, str(made)
    assert "(durability: fsync)" in made.stderr
    assert format_file(agl.store)["durability"] == "fsync"

    again = agl("init")
    assert again.code == 0, str(again)
    assert "(durability: fsync)" in again.stderr
    assert format_file(agl.store)["durability"] == "fsync"

    lowered = agl("init", "--durability", "process")
    assert lowered.code == 0, str(lowered)
    assert "durability: process, was fsync" in lowered.stderr
    assert format_file(agl.store)["durability"] == "process"

    assert_error(agl("init", "--durability", "sometimes"), ExitCode.USAGE, "--durability")
    body = {**format_file(agl.store), "durability": "always"}
    (agl.store / "FORMAT.json").write_text(json.dumps(body))
    for args in (("init", "--durability", "fsync"), ("stats",)):
        assert_error(agl(*args), ExitCode.CORRUPT, "FORMAT.json", "durability")
    assert format_file(agl.store) == body


def _syncs(log_prefix: Path) -> int:
    return sum(p.stat().st_size for p in log_prefix.parent.glob(log_prefix.name + ".*"))


@pytest.mark.parametrize("durability", ["process", "fsync"])
def test_commands_and_the_server_fsync_exactly_on_a_durable_store(
    tmp_path: Path, durability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real processes that are not told anything (a CLI call, ``agl store`` with two
    workers) sync their writes when, and only when, the store says so."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    agl = Agl(tmp_path / "store", tmp_path)
    assert agl("init", "--durability", durability).code == 0

    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    cli_log = tmp_path / "cli-syncs"
    env = {**agl.env, "PYTHONPATH": path, "SYNC_LOG": str(cli_log)}
    res = agl("enqueue", '"q"', env=env)
    assert res.code == 0, str(res)
    assert (_syncs(cli_log) > 0) == (durability == "fsync")

    server_log = tmp_path / "server-syncs"
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("SYNC_LOG", str(server_log))
    with ServerProcess(agl.store, tmp_path / "server.log", args=["--workers", "2"]) as server:
        body = json.dumps({"rollouts": [{"input": "over http"}]}).encode()
        status, _, _ = raw_request(server.url, "POST", "/v1/agl/queues/rollouts/enqueue", body)
        assert status == 201
        assert f"(durability: {durability})" in server.log_text()
    assert (_syncs(server_log) > 0) == (durability == "fsync")
    stats = agl("stats")
    assert stats.code == 0, str(stats)
    assert json.loads(stats.stdout)["total_rollouts"] == 2


def test_agl_store_durability_option_records_it_in_a_store_it_creates(tmp_path: Path) -> None:
    store = tmp_path / "new"
    with ServerProcess(store, tmp_path / "server.log", args=["--durability", "fsync"]) as server:
        assert "created a new store" in server.log_text()
        assert "(durability: fsync)" in server.log_text()
    assert format_file(store)["durability"] == "fsync"
    # On an existing process store, the option makes this server sync; the store stays as it is.
    plain = FileStore(tmp_path / "plain").root
    with ServerProcess(plain, tmp_path / "plain.log", args=["--durability", "fsync"]) as server:
        assert "(durability: fsync)" in server.log_text()
    assert format_file(plain)["durability"] == "process"


def test_going_to_fsync_first_flushes_what_the_store_already_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data written while the store was `process` may still be in the page cache: the change to
    `fsync` runs sync(2) before it publishes the new setting (the crash filesystem of
    tests/test_power_cut.py cannot see sync(2), so this checks the call, not its effect)."""
    root = FileStore(tmp_path / "store").root
    order: list[str] = []
    real_sync, real_publish = os.sync, fsio.publish

    def sync() -> None:
        order.append("sync(2)")
        real_sync()

    def publish(path: Path, data: bytes, *, durable: bool = False) -> None:
        order.append(f"publish {path.name} durable={durable}")
        real_publish(path, data, durable=durable)

    monkeypatch.setattr(os, "sync", sync)
    monkeypatch.setattr(fsio, "publish", publish)
    init_store(root, durability="fsync")
    assert order == ["sync(2)", "publish FORMAT.json durable=True"]
    order.clear()
    init_store(root, durability="fsync")  # no change: nothing to flush or write
    init_store(root, durability="process")  # going down needs no flush
    assert order == ["publish FORMAT.json durable=True"]
