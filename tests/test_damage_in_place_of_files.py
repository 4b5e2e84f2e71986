"""Damage that used to go unseen or break everything: a name where a file or directory belongs
that is something else (a directory, a file, a symbolic link loop or one to nothing), a newest
revision that cannot be read by the data views, an empty store path, and integers JSON text
holds but orjson would round.

Each case: the readers that meet it fail with one line naming the path (exit 7) or leave it out
as documented, ``agl check`` reports it, one ``agl check --fix`` repairs it (moving what was
there to quarantine), and nothing else stored is lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Agl, Result, WarmAgl, assert_error, diff_snapshots, finished_rollouts, snapshot
from http_helpers import RawClient, ServerThread, http_request
from hypothesis import example, given
from hypothesis import strategies as st

from store_fs import CorruptRecordError, FileStore
from store_fs.datasets.views import TrainingData
from store_fs.json_input import DecodeError, loads_exact


@pytest.fixture
def agl(tmp_path: Path, warm_agl: WarmAgl) -> Agl:
    asyncio.run(finished_rollouts(tmp_path / "st", runs=2))
    return Agl(tmp_path / "st", tmp_path, warm=warm_agl)


def _problems(res: Result) -> list[dict[str, object]]:
    assert "Traceback" not in res.stderr, str(res)
    return res.lines()


def _kinds(res: Result) -> set[tuple[object, object, object]]:
    return {(p["kind"], p["path"], p["fixed"]) for p in _problems(res)}


def _newest_revision(store: Path, rollout_id: str) -> Path:
    (directory,) = store.glob(f"rollouts/*/{rollout_id}")
    return max((directory / "history").glob("*.json"))


def _quarantined_notes(store: Path) -> list[str]:
    return sorted(json.loads(n.read_bytes())["path"] for n in store.glob("quarantine/*/**/*.note.json"))


def _lost(before: dict[str, bytes], after: dict[str, bytes], *allowed: str) -> list[str]:
    """What ``before`` held that ``after`` lacks or holds otherwise, outside ``allowed`` prefixes
    and the operational directories a repair rewrites."""
    skip = (*allowed, "index/", "events/", "quarantine/")
    return [
        line
        for line in diff_snapshots(before, after)
        if not line.startswith("+ ") and not line[2:].startswith(skip)
    ]


# --------------------------------------------------------------------------------------------
# the data views: a damaged newest revision is an error, never the rollout one revision earlier
# --------------------------------------------------------------------------------------------


def _above_newest(kind: str) -> Callable[[Path], Path]:
    def damage(newest: Path) -> Path:
        path = newest.with_name(f"{int(newest.stem) + 5:08d}.json")
        if kind == "directory":
            path.mkdir()
        elif kind == "loop":
            path.symlink_to(path.name)
        else:
            path.symlink_to("/nonexistent/revision.json")
        return path

    return damage


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("directory", "a directory"),
        ("loop", "a symbolic link loop"),
        ("dangling", "a symbolic link to nothing"),
    ],
)
def test_a_name_in_history_that_is_no_file_stops_the_data_views_until_check_moves_it(
    agl: Agl, kind: str, reason: str
) -> None:
    rid = sorted(d.name for d in agl.store.glob("rollouts/*/ro-*"))[0]
    bad = _above_newest(kind)(_newest_revision(agl.store, rid))
    cursor = agl.cwd / "cursor.json"
    for view in ("rollouts", "triplets", "messages"):
        res = agl("data", view, "--cursor", str(cursor), "-o", str(agl.cwd / "out.jsonl"))
        assert_error(res, 7, str(bad), reason)
    assert not cursor.exists()  # nothing read: no place saved past the rollout
    assert_error(agl("rollouts", "show", rid), 7, str(bad), reason)

    res = agl("check")
    assert res.code == 7, str(res)
    assert ("corrupt-record", str(bad), False) in _kinds(res)
    assert ("corrupt-record", str(bad), True) in _kinds(agl.ok("check", "--fix", "--grace", "0"))
    assert _problems(agl.ok("check")) == []
    agl.ok("data", "rollouts", "--cursor", str(cursor), "-o", str(agl.cwd / "out.jsonl"))
    rows = [json.loads(line) for line in (agl.cwd / "out.jsonl").read_text().splitlines()]
    assert sorted(r["rollout_id"] for r in rows)[0] == rid  # delivered after all
    assert len(rows) == 2


async def test_a_cursor_stays_before_a_rollout_whose_record_cannot_be_read(tmp_path: Path) -> None:
    """The defect: the newest revision cut short, a reader with a cursor skipped the rollout
    (reading the revision before, not finished) and never delivered it once the file was good."""
    root = tmp_path / "st"
    (rid,) = await finished_rollouts(root)
    newest = _newest_revision(root, rid)
    good = newest.read_bytes()
    newest.chmod(0o644)
    newest.write_bytes(good[:100])
    store = FileStore(root)
    try:
        data = TrainingData(store, "rollouts")
        with pytest.raises(CorruptRecordError) as err:
            await data.read_new()
        assert err.value.path == str(newest)
        with pytest.raises(CorruptRecordError):
            await data.read_new()  # the same place again, not past it
        newest.write_bytes(good)  # repaired by hand
        assert [row["rollout_id"] for row in await data.read_new()] == [rid]
        assert await data.read_new() == []
    finally:
        store.close()


def test_a_revision_that_is_no_rollout_record_stops_the_data_views(agl: Agl) -> None:
    rid = sorted(d.name for d in agl.store.glob("rollouts/*/ro-*"))[0]
    newest = _newest_revision(agl.store, rid)
    newest.chmod(0o644)
    newest.write_text('{"rollout_id": "someone-else", "status": 3}\n')
    out = agl.cwd / "out.jsonl"
    assert_error(agl("data", "rollouts", "-o", str(out)), 7, str(newest), "not a rollout record")
    assert not out.exists()  # the file is published whole or not at all


# --------------------------------------------------------------------------------------------
# a rollout's or fan-out directory's name that is no directory
# --------------------------------------------------------------------------------------------


def _file(path: Path) -> None:
    shutil.rmtree(path)
    path.write_bytes(b"not a directory\n")


def _loop(path: Path) -> None:
    shutil.rmtree(path)
    path.symlink_to(path.name)


@pytest.mark.parametrize("make", [_file, _loop], ids=["file", "loop"])
@pytest.mark.parametrize("level", ["rollout", "fan-out"])
def test_a_rollout_name_that_is_no_directory_is_reported_and_repaired_in_one_pass(
    agl: Agl, make: Callable[[Path], None], level: str
) -> None:
    rid = sorted(d.name for d in agl.store.glob("rollouts/*/ro-*"))[0]
    (directory,) = agl.store.glob(f"rollouts/*/{rid}")
    target = directory if level == "rollout" else directory.parent
    if level == "fan-out":
        survivors = {d.name for d in agl.store.glob("rollouts/*/ro-*") if d.parent != target}
    else:
        survivors = {d.name for d in agl.store.glob("rollouts/*/ro-*") if d != target}
    make(target)
    before = snapshot(agl.store)

    res = agl("check")
    assert res.code == 7, str(res)
    assert ("wrong-file-type", str(target), False) in _kinds(res)
    fixed = _kinds(agl.ok("check", "--fix", "--grace", "0"))
    assert ("wrong-file-type", str(target), True) in fixed
    assert all(done for _kind, _path, done in fixed)
    assert _problems(agl.ok("check")) == []  # the index was rebuilt in the same pass
    assert _quarantined_notes(agl.store) == [target.relative_to(agl.store).as_posix()]
    assert not os.path.lexists(target)
    listed = {r["rollout_id"] for r in agl.ok("rollouts", "list", "--json").lines()}
    assert listed == survivors
    agl.ok("stats")
    assert _lost(before, snapshot(agl.store), target.relative_to(agl.store).as_posix(), "queue/") == []


def test_a_rollout_whose_history_was_removed_is_restored_from_its_mirror(agl: Agl) -> None:
    rid = sorted(d.name for d in agl.store.glob("rollouts/*/ro-*"))[0]
    before = agl.ok("rollouts", "show", rid).json()
    (directory,) = agl.store.glob(f"rollouts/*/{rid}")
    shutil.rmtree(directory / "history")
    res = agl("check")
    assert res.code == 7, str(res)
    assert "--fix restores it" in str(_problems(res))
    assert all(done for _k, _p, done in _kinds(agl.ok("check", "--fix", "--grace", "0")))
    assert _problems(agl.ok("check")) == []  # the index too, in that one pass
    assert agl.ok("rollouts", "show", rid).json() == before
    assert not list(agl.store.glob("quarantine/*"))


@pytest.mark.parametrize("mirror", ["gone", "garbage"])
def test_a_rollout_without_history_or_mirror_is_quarantined_in_one_pass(agl: Agl, mirror: str) -> None:
    rid = sorted(d.name for d in agl.store.glob("rollouts/*/ro-*"))[0]
    (directory,) = agl.store.glob(f"rollouts/*/{rid}")
    shutil.rmtree(directory / "history")
    (directory / "rollout.json").unlink()
    if mirror == "garbage":
        (directory / "rollout.json").write_text("{not json\n")
    assert all(done for _k, _p, done in _kinds(agl.ok("check", "--fix", "--grace", "0")))
    assert _problems(agl.ok("check")) == []
    assert _quarantined_notes(agl.store) == [directory.relative_to(agl.store).as_posix()]
    assert rid not in {r["rollout_id"] for r in agl.ok("rollouts", "list", "--json").lines()}


# --------------------------------------------------------------------------------------------
# per-process logs: a name that is no file is left out by readers and reported by check
# --------------------------------------------------------------------------------------------


def _index_dir(store: Path) -> Path:
    path = store / "index" / "rollouts" / "x.jsonl"
    path.mkdir()
    return path


def _worker_log_dir(store: Path) -> Path:
    (workers,) = store.glob("workers/*")
    path = workers / "log.x.jsonl"
    path.mkdir()
    return path


def _events_loop(store: Path) -> Path:
    path = store / "events" / "y.jsonl"
    path.symlink_to(path.name)
    return path


def _index_dangling(store: Path) -> Path:
    path = store / "index" / "rollouts" / "z.jsonl"
    path.symlink_to("/nonexistent/log.jsonl")
    return path


@pytest.mark.parametrize("damage", [_index_dir, _worker_log_dir, _events_loop, _index_dangling])
def test_a_log_name_that_is_no_file_is_left_out_and_reported(
    agl: Agl, damage: Callable[[Path], Path]
) -> None:
    path = damage(agl.store)
    for args in (("stats",), ("rollouts", "list"), ("workers", "list"), ("events",), ("data", "rollouts")):
        res = agl(*args)
        assert res.code == 0, str(res)
        assert "Traceback" not in res.stderr, str(res)
    assert len(agl.ok("rollouts", "list", "--json").lines()) == 2

    res = agl("check")
    assert res.code == 7, str(res)
    assert _kinds(res) == {("wrong-file-type", str(path), False)}
    assert _kinds(agl.ok("check", "--fix", "--grace", "0")) == {("wrong-file-type", str(path), True)}
    assert not os.path.lexists(path)
    assert _problems(agl.ok("check")) == []


# --------------------------------------------------------------------------------------------
# an empty store path
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("--store", "", "enqueue", '"x"'), ("--store", " ", "stats"), ("report", ""), ("doctor", "")],
)
def test_an_empty_store_path_is_refused_not_read_as_the_default_store(
    tmp_path: Path, warm_agl: WarmAgl, args: tuple[str, ...]
) -> None:
    agl = Agl(tmp_path / "runs" / "default", tmp_path, warm=warm_agl)
    agl.ok("init", str(agl.store))
    before = snapshot(agl.store)
    env = {k: v for k, v in agl.env.items() if k != "AGL_STORE"}
    res = agl(*args, env=env)
    assert_error(res, 4, "the store's path is empty")
    assert diff_snapshots(before, snapshot(agl.store)) == []


# --------------------------------------------------------------------------------------------
# integers beyond 64 bits: refused by name, never rounded into floats
# --------------------------------------------------------------------------------------------


def test_the_cli_refuses_integers_beyond_64_bits(agl: Agl) -> None:
    before = snapshot(agl.store)
    res = agl("enqueue", '{"id": 18446744073709551616}', "--metadata", '{"n": 99999999999999999999}')
    assert_error(res, 4, "64-bit")
    res = agl("enqueue", '{"n": -9223372036854775809}')  # below -2**63, nineteen digits
    assert_error(res, 4, "64-bit")
    assert diff_snapshots(before, snapshot(agl.store)) == []
    # The largest integer JSON can hold here is stored as it is, next to a long digit string.
    stored = agl.ok("enqueue", '{"id": 18446744073709551615, "s": "123456789012345678901234"}').json()
    assert stored["input"] == {"id": 18446744073709551615, "s": "123456789012345678901234"}


def test_the_server_refuses_integers_beyond_64_bits(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "st")
    try:
        with ServerThread(store) as srv, RawClient(srv.port) as client:
            body = '{"rollouts": [{"input": {"id": 18446744073709551616}}]}'
            client.send(
                http_request(
                    "POST", "/v1/agl/queues/rollouts/enqueue", body, {"Content-Type": "application/json"}
                )
            )
            answer = client.answer()
        assert answer.status == 400, answer
        assert "64-bit" in answer.json()["detail"]
        assert asyncio.run(store.query_rollouts()).total == 0
    finally:
        store.close()


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(max_size=30)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(_JSON)
@example(-(2**63) - 1)  # nineteen digits, read as a float by orjson: found by an adversarial pass
@example({"m": -9999999999999999999, "ok": -(2**63)})
def test_loads_exact_reads_what_the_standard_library_reads(value: object) -> None:
    text = json.dumps(value)
    assert loads_exact(text) == json.loads(text)
    assert loads_exact(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    "text", ["[NaN, 123456789012345678901]", "[Infinity, 123456789012345678901]", "[1, 2"]
)
def test_loads_exact_refuses_what_orjson_refuses(text: str) -> None:
    with pytest.raises(DecodeError):
        loads_exact(text)


# --------------------------------------------------------------------------------------------
# a span log's name that is no file: readers pass over it (warning), check moves it aside
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directory", "loop"])
def test_a_span_log_name_that_is_no_file_does_not_stop_readers(agl: Agl, kind: str) -> None:
    rid = sorted(d.name for d in agl.store.glob("rollouts/*/ro-*"))[0]
    aid = agl.ok("rollouts", "show", rid).json()["attempts"][-1]["attempt_id"]
    agl.ok("spans", "add", rid, aid, input='{"name": "kept"}\n')
    (attempt_dir,) = agl.store.glob(f"rollouts/*/{rid}/attempts/*")
    bad = attempt_dir / "spans.zz-damage.jsonl"
    if kind == "directory":
        bad.mkdir()
    else:
        bad.symlink_to(bad.name)
    listed = agl.ok("spans", "list", rid)
    assert [s["name"] for s in listed.lines()] == ["kept"]
    assert str(bad) in listed.stderr
    exported = agl("export", rid)  # what could be read, the damage named (exit 7)
    assert exported.code == 7, str(exported)
    assert [s["name"] for s in exported.json()["spans"]] == ["kept"]
    assert str(bad) in exported.stderr
    # Training data is stricter: the rollout is left out, named, and the rest written (exit 7).
    data = agl("data", "rollouts", "--ended", "any")
    assert data.code == 7, str(data)
    assert rid not in data.stdout
    assert data.stdout.strip()
    assert f"their spans are damaged: {rid}" in data.stderr
    res = agl("check")
    assert res.code == 7, str(res)
    assert _kinds(res) == {("wrong-file-type", str(bad), False)}
    agl.ok("check", "--fix", "--grace", "0")
    assert _problems(agl.ok("check")) == []
    assert not os.path.lexists(bad)


def test_a_bad_index_line_behind_the_snapshot_is_still_reported_and_repaired(agl: Agl) -> None:
    """Compaction copies a bad line into a segment and writes a snapshot of the lines that
    parsed; check read the index from that snapshot, so the line went unreported."""
    log = next(p for p in agl.store.glob("index/rollouts/*.jsonl") if not p.name.startswith("@"))
    with log.open("ab") as f:
        f.write(b"not json\n")
    agl.ok("compact")
    assert (agl.store / "index" / "rollouts" / "snapshot.json").is_file()
    res = agl("check")
    assert res.code == 7, str(res)
    assert [p["kind"] for p in _problems(res)] == ["corrupt-index-line"]
    assert all(done for _k, _p, done in _kinds(agl.ok("check", "--fix", "--grace", "0")))
    assert _problems(agl.ok("check")) == []
    compacted = agl.ok("compact")
    assert "not a valid" not in compacted.stderr
    assert len(agl.ok("rollouts", "list", "--json").lines()) == 2


async def test_a_reader_with_a_cursor_reads_the_revision_the_index_names_past_a_stale_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On NFS a listing of history/ may come from the client's cache, made before the finishing
    revision was; the index line read by the cursor names it. Read through the listing, the
    rollout looked unfinished, was left out, and the cursor moved past it for good."""
    root = tmp_path / "st"
    (rid,) = await finished_rollouts(root)
    newest = _newest_revision(root, rid)
    listdir = os.listdir

    def stale(path: Any) -> list[str]:
        names = listdir(path)
        if str(path).endswith("/history"):
            return [n for n in names if n != newest.name]  # the cache's view: not there yet
        return names

    store = FileStore(root)
    try:
        monkeypatch.setattr(os, "listdir", stale)
        data = TrainingData(store, "rollouts")
        rows = await data.read_new()
        assert [(r["rollout_id"], r["status"]) for r in rows] == [(rid, "succeeded")]
    finally:
        store.close()


def test_a_directory_in_the_wrong_fan_out_is_moved_aside_in_one_pass(agl: Agl) -> None:
    """Found by an adversarial pass: `rollouts/zz/stray` was taken for rollout `stray`, whose
    directory `check --fix` then looked for in another fan-out: ENOENT (exit 1) at every run,
    and the rest of the repairs never done."""
    stray = agl.store / "rollouts" / "zz" / "stray"
    stray.mkdir(parents=True)
    (stray / "x").write_text("kept\n")
    misplaced = agl.store / "rollouts" / "zz" / "ro-0123456789ab"  # a rollout id, wrong fan-out
    misplaced.mkdir()
    before = {r["rollout_id"] for r in agl.ok("rollouts", "list", "--json").lines()}
    res = agl("check")
    assert res.code == 7, str(res)
    assert _kinds(res) == {
        ("misplaced-directory", str(stray), False),
        ("misplaced-directory", str(misplaced), False),
    }
    fixed = agl.ok("check", "--fix", "--grace", "0")
    assert all(done for _kind, _path, done in _kinds(fixed))
    assert _problems(agl.ok("check")) == []
    assert sorted(_quarantined_notes(agl.store)) == ["rollouts/zz/ro-0123456789ab", "rollouts/zz/stray"]
    assert {r["rollout_id"] for r in agl.ok("rollouts", "list", "--json").lines()} == before


def test_an_attempt_directory_linked_from_elsewhere_is_read_by_every_view(agl: Agl, tmp_path: Path) -> None:
    """A directory moved to another disk and linked back: the span readers and ``agl check``
    followed the link, the data views and export took it for damage (rows left out, exit 7
    that ``check --fix`` never cleared). Found by an adversarial pass."""
    rid = agl.ok("rollouts", "list").lines()[0]["rollout_id"]
    agl.ok("reward", rid, "0.5")  # a span: the attempt's directory is made
    (attempt,) = agl.store.glob(f"rollouts/*/{rid}/attempts/*")
    attempt.rename(tmp_path / "elsewhere")
    attempt.symlink_to(tmp_path / "elsewhere")
    assert agl.ok("check").lines() == []
    assert rid in {r["rollout_id"] for r in agl.ok("data", "rollouts", "--ended", "any").lines()}
    assert agl("export", "--all").code == 0
