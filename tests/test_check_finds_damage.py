"""agl check finds damage that made other commands fail, names the file, and --fix repairs only
what it can without losing anything: corrupt resources (reported, left in place), an unreadable
worker log line (skipped by readers, quarantined), files of the wrong kind among a rollout's
attempts (quarantined), and a ``span-seq/`` without a counter (remade from the stored spans).

The CLI tests run the real ``agl``; each starts from the store of the defect reports: resources
added, one rollout enqueued and dequeued by worker ``w1`` (plus two spans where spans matter).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import Agl, Result, WarmAgl, assert_error, diff_snapshots, snapshot

from store_fs import FileStore, PromptTemplate, Span


async def _build(root: Path) -> None:
    store = FileStore(root)
    try:
        await store.add_resources({"main_prompt": PromptTemplate(template="Q {x}", engine="f-string")})
        await store.enqueue_rollout(input="a")
    finally:
        store.close()


@pytest.fixture
def agl(tmp_path: Path, warm_agl: WarmAgl) -> Agl:
    # Made in process but the dequeue (what is tested is `agl check`; each agl call costs ~0.4 s),
    # which an agl process does so that worker w1's log has a writer that is gone.
    asyncio.run(_build(tmp_path / "st"))
    runner = Agl(tmp_path / "st", tmp_path, warm=warm_agl)
    runner.dequeue("w1")
    return runner


async def _attempt_id(root: Path, rollout_id: str) -> str:
    store = FileStore(root)
    try:
        attempt = await store.get_latest_attempt(rollout_id)
        assert attempt is not None
        return attempt.attempt_id
    finally:
        store.close()


def _rollout(agl: Agl) -> tuple[str, str, Path]:
    """The one rollout's id, its attempt's id, and its directory."""
    (directory,) = agl.store.glob("rollouts/*/ro-*")
    return directory.name, asyncio.run(_attempt_id(agl.store, directory.name)), directory


async def _add_spans(root: Path, rid: str, aid: str) -> None:
    store = FileStore(root)
    try:
        for seq, name in enumerate(("a", "b"), 1):
            await store.add_span(
                Span.from_attributes(
                    rollout_id=rid, attempt_id=aid, sequence_id=seq, name=name, attributes={}
                )
            )
    finally:
        store.close()


def _with_spans(agl: Agl) -> tuple[str, str, Path]:
    rid, aid, directory = _rollout(agl)
    asyncio.run(_add_spans(agl.store, rid, aid))
    return rid, aid, directory


def _problems(res: Result) -> list[dict[str, object]]:
    assert "Traceback" not in res.stderr, str(res)
    return res.lines()


def _found(res: Result, path: Path, kind: str, *, fixed: bool) -> dict[str, object]:
    """The one problem ``res`` reports for ``path``, of ``kind`` and ``fixed`` as given."""
    hits = [p for p in _problems(res) if p["path"] == str(path)]
    assert [(p["kind"], p["fixed"]) for p in hits] == [(kind, fixed)], str(res)
    return hits[0]


def _lost(before: dict[str, bytes], after: dict[str, bytes], *changed: Path, root: Path) -> list[str]:
    """What ``before`` held that ``after`` lacks or holds otherwise, except under ``changed``
    (paths under ``root``) and the rollout index (rewritten by design)."""
    allowed = (*(p.relative_to(root).as_posix() for p in changed), "index/")
    return [
        line
        for line in diff_snapshots(before, after)
        if not line.startswith("+ ") and not line[2:].startswith(allowed)
    ]


def _quarantined(store: Path, original: Path) -> Path:
    """Where a repair moved ``original`` (its note names it)."""
    rel = original.relative_to(store).as_posix()
    for note in store.glob("quarantine/*/**/*.note.json"):
        if json.loads(note.read_bytes())["path"] == rel:
            return note.with_name(note.name.removesuffix(".note.json"))
    raise AssertionError(f"nothing from {rel} in quarantine")


# --------------------------------------------------------------------------------------------
# 1. resources: reported by name, never repaired
# --------------------------------------------------------------------------------------------


def _cut_pointer(store: Path) -> Path:
    (path,) = store.glob("resources/versions/*.json")
    os.truncate(path, 3)
    return path


def _cut_body(store: Path) -> Path:
    (path,) = store.glob("resources/objects/*/*.json")
    os.truncate(path, 10)
    return path


def _garbage_version(store: Path) -> Path:
    (path,) = store.glob("resources/by-id/*/*.json")
    path.write_bytes(b"garbage\n")
    return path


def _no_bodies(store: Path) -> Path:
    shutil.rmtree(store / "resources" / "objects")
    (path,) = store.glob("resources/by-id/*/*.json")
    return path


@pytest.mark.parametrize(
    ("damage", "kind"),
    [
        (_cut_pointer, "corrupt-resource-pointer"),
        (_cut_body, "corrupt-resource-object"),
        (_garbage_version, "corrupt-resource-version"),
        (_no_bodies, "corrupt-resource-version"),
    ],
)
def test_damaged_resources_are_reported_by_name_and_left_in_place(
    agl: Agl, damage: Callable[[Path], Path], kind: str
) -> None:
    assert _problems(agl.ok("check")) == []
    damaged = damage(agl.store)
    assert_error(agl("enqueue", '"b"'), 7)  # the failure the check must foresee

    res = agl("check")
    assert res.code == 7, str(res)
    found = _found(res, damaged, kind, fixed=False)
    if damage is _no_bodies:
        assert "resources/objects/" in str(found["detail"]), found  # the missing body, by path

    before = snapshot(agl.store)
    res = agl("check", "--fix")
    assert res.code == 7, str(res)
    _found(res, damaged, kind, fixed=False)
    assert not (agl.store / "quarantine").exists()
    after = snapshot(agl.store)
    assert _lost(before, after, root=agl.store) == []  # nothing moved or changed
    assert {p for p in after.keys() - before.keys() if p.startswith("resources/")} == set()  # or invented


async def test_a_new_version_over_a_damaged_latest_one_is_refused_naming_it(tmp_path: Path) -> None:
    """update_resources read the latest version's create_time without looking: a version file
    without one (damaged by hand) ended as a KeyError. It names the file now, and adds nothing."""
    from store_fs import CorruptRecordError

    store = FileStore(tmp_path / "st")
    try:
        update = await store.add_resources({"p": PromptTemplate(template="Q {x}", engine="f-string")})
        (latest,) = (tmp_path / "st").glob(f"resources/by-id/{update.resources_id}/*.json")
        body = json.loads(latest.read_bytes())
        del body["create_time"]
        latest.write_text(json.dumps(body))
        before = snapshot(tmp_path / "st")
        with pytest.raises(CorruptRecordError, match=latest.name):
            await store.update_resources(
                update.resources_id, {"p": PromptTemplate(template="R {x}", engine="f-string")}
            )
        assert [p for p in snapshot(tmp_path / "st").keys() - before.keys() if "by-id" in p] == []
    finally:
        store.close()


def test_an_index_a_killed_rebuild_set_aside_is_removed(agl: Agl) -> None:
    """A rebuild renames the old index to ``.rollouts-<hex>.old`` and deletes it; killed in
    between, the copy stayed for good (found by an adversarial pass)."""
    aside = agl.store / "index" / ".rollouts-0123abcd.old"
    (aside / "logs").mkdir(parents=True)
    (aside / "logs" / "vm-1.jsonl").write_text("{}\n")
    old = time.time() - 7200
    os.utime(aside, (old, old))
    _found(agl("check"), aside, "temp-file", fixed=False)
    _found(agl.ok("check", "--fix"), aside, "temp-file", fixed=True)
    assert not aside.exists()


def test_a_stale_temporary_file_among_resources_is_removed(agl: Agl) -> None:
    (fan,) = agl.store.glob("resources/objects/*")
    torn = fan / ".0123abcd.json.vm-1.tmp"
    torn.write_bytes(b'{"main_pro')
    old = time.time() - 7200
    os.utime(torn, (old, old))
    res = agl("check")
    assert res.code == 7, str(res)
    _found(res, torn, "temp-file", fixed=False)
    _found(agl.ok("check", "--fix"), torn, "temp-file", fixed=True)
    assert not torn.exists()
    assert _problems(agl.ok("check")) == []
    agl.ok("resources", "list")


# --------------------------------------------------------------------------------------------
# 2. a worker log line that cannot be read
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "junk",
    [b"garbage\n", b'{"t": 9e9, "status": 5}\n', b'{"t": 9e9, "last_heartbeat_time": "soon"}\n'],
    ids=["not-json", "status-not-a-status", "time-not-a-number"],
)
def test_a_garbage_worker_log_line_is_skipped_reported_and_quarantined(agl: Agl, junk: bytes) -> None:
    # A line that parses but holds a value its field refuses, folded in, failed every read of
    # the worker as surely as one that does not parse.
    workers = agl.ok("workers", "list").lines()
    (log,) = agl.store.glob("workers/w1/log.*.jsonl")
    good = log.read_bytes()
    with log.open("ab") as f:
        f.write(junk)
    before = snapshot(agl.store)

    res = agl.ok("workers", "list")  # the line is skipped, with a warning naming it
    assert res.lines() == workers
    assert f"corrupt worker log line in {log} at byte {len(good)}" in res.stderr
    agl.ok("report", "-o", str(agl.cwd / "report.html"))

    res = agl("check")
    assert res.code == 7, str(res)
    assert f"byte {len(good)}" in str(_found(res, log, "corrupt-worker-log", fixed=False)["detail"])

    _found(agl.ok("check", "--fix"), log, "corrupt-worker-log", fixed=True)  # its writer exited
    assert log.read_bytes() == good
    assert _quarantined(agl.store, log).read_bytes() == junk
    assert _problems(agl.ok("check")) == []
    assert agl.ok("workers", "list").lines() == workers
    assert _lost(before, snapshot(agl.store), log, root=agl.store) == []


async def test_a_live_writers_worker_log_is_only_reported(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "st")
    await store.enqueue_rollout(input="a")
    assert await store.dequeue_rollout(worker_id="w1") is not None  # this process writes w1's log
    (log,) = (tmp_path / "st" / "workers" / "w1").glob("log.*.jsonl")
    with log.open("ab") as f:
        f.write(b"[1, 2]\n")
    [problem] = [p for p in store.check(fix=True) if p.kind == "corrupt-worker-log"]
    assert (problem.path, problem.fixed) == (str(log), False)
    assert log.read_bytes().endswith(b"[1, 2]\n")
    worker = await store.get_worker_by_id("w1")
    assert worker is not None
    assert worker.status == "busy"
    store.close()


# --------------------------------------------------------------------------------------------
# 3. files of the wrong kind among a rollout's attempts
# --------------------------------------------------------------------------------------------


def test_an_attempts_entry_that_is_a_file_is_reported_and_moved_aside(agl: Agl) -> None:
    rid, aid, directory = _rollout(agl)
    attempts = directory / "attempts"
    attempts.write_bytes(b"not a directory\n")
    before = snapshot(agl.store)
    assert agl("stats").code != 0  # "Not a directory" until it is repaired

    res = agl("check")
    assert res.code == 7, str(res)
    _found(res, attempts, "wrong-file-type", fixed=False)

    _found(agl.ok("check", "--fix"), attempts, "wrong-file-type", fixed=True)
    assert _quarantined(agl.store, attempts).read_bytes() == b"not a directory\n"
    assert _problems(agl.ok("check")) == []
    assert _lost(before, snapshot(agl.store), attempts, root=agl.store) == []
    agl.ok("stats")
    agl.ok("reward", rid, "0.5", "--attempt", aid)  # its attempt's directory made anew
    assert agl.ok("spans", "list", rid).lines()[0]["sequence_id"] == 1


def test_a_span_log_that_is_a_directory_is_reported_without_a_crash(agl: Agl) -> None:
    rid, aid, directory = _with_spans(agl)
    (span_log,) = directory.glob("attempts/*/spans.*.jsonl")
    span_log.unlink()
    (span_log / "inside").mkdir(parents=True)
    before = snapshot(agl.store)

    res = agl("check")
    assert res.code == 7, str(res)
    _found(res, span_log, "wrong-file-type", fixed=False)

    _found(agl.ok("check", "--fix"), span_log, "wrong-file-type", fixed=True)
    assert (_quarantined(agl.store, span_log) / "inside").is_dir()
    assert _problems(agl.ok("check")) == []
    agl.ok("spans", "add", rid, aid, input='{"name": "c"}\n')  # the log is made anew
    assert [s["name"] for s in agl.ok("spans", "list", rid).lines()] == ["c"]
    assert _lost(before, snapshot(agl.store), span_log, directory / "span-seq", root=agl.store) == []


# --------------------------------------------------------------------------------------------
# 4. a span-seq/ without a counter
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("junk", ["abc", "-5"])
def test_a_span_counter_lost_among_junk_is_remade_from_the_stored_spans(agl: Agl, junk: str) -> None:
    rid, aid, directory = _with_spans(agl)
    counter_dir = directory / "span-seq"
    for name in os.listdir(counter_dir):
        (counter_dir / name).unlink()
    (counter_dir / junk).touch()
    before = snapshot(agl.store)

    res = agl("check")
    assert res.code == 7, str(res)
    assert junk in str(_found(res, counter_dir, "no-span-counter", fixed=False)["detail"])

    _found(agl.ok("check", "--fix"), counter_dir, "no-span-counter", fixed=True)
    assert sorted(os.listdir(counter_dir)) == ["2"]  # the highest sequence_id stored
    assert _quarantined(agl.store, counter_dir / junk).read_bytes() == b""
    assert _problems(agl.ok("check")) == []
    res = agl.ok("spans", "add", rid, aid, input='{"name": "c"}\n', timeout=15)  # no 70 s wait
    assert res.lines()[0]["sequence_id"] == 3
    assert [s["sequence_id"] for s in agl.ok("spans", "list", rid).lines()] == [1, 2, 3]
    assert _lost(before, snapshot(agl.store), counter_dir, directory / "attempts", root=agl.store) == []


async def test_a_junk_span_counter_without_spans_is_emptied_for_the_next_allocation(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "st")
    rollout = await store.enqueue_rollout(input="a")
    counter_dir = store.layout.span_seq_dir(rollout.rollout_id)
    counter_dir.mkdir()
    (counter_dir / "junk").mkdir()  # a directory is junk as well
    [problem] = store.check(fix=True)
    assert (problem.kind, problem.path, problem.fixed) == ("no-span-counter", str(counter_dir), True)
    assert os.listdir(counter_dir) == []  # no span stored: the next allocation makes the counter
    assert store.check() == []
    attempted = await store.dequeue_rollout()
    assert attempted is not None
    assert await store.get_next_span_sequence_id(rollout.rollout_id, attempted.attempt.attempt_id) == 1
    store.close()


async def test_a_late_span_after_check_fix_republished_the_file_is_not_lost(tmp_path: Path) -> None:
    """``check --fix`` cuts a bad line out of a finished attempt's span file by publishing a new
    copy; a long-lived process that wrote the file (a runner, ``agl store``) kept appending to
    the old copy, so a grader's late reward was reported stored and lost (an adversarial pass)."""
    import subprocess

    from cli_helpers import AGL, agl_env

    from store_fs.rewards import reward_span

    root = tmp_path / "store"
    store = FileStore(root)  # the long-lived writer
    await store.enqueue_rollout(input="q")
    attempted = await store.dequeue_rollout(worker_id="w")
    assert attempted is not None
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    await store.add_span(reward_span(0.1, rollout_id=rid, attempt_id=aid, sequence_id=1))
    await store.update_attempt(rid, aid, status="succeeded")
    (log,) = root.glob(f"rollouts/*/{rid}/attempts/*/spans.*.jsonl")
    with log.open("ab") as file:
        file.write(b'{"rollout_id": "ro-torn\n')  # a line that does not parse
    fixed = subprocess.run([AGL, "check", "--fix"], env=agl_env(root), capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stderr
    assert await store.add_span(reward_span(0.9, rollout_id=rid, attempt_id=aid, sequence_id=2)) is not None
    reader = FileStore(root, span_cache_bytes=0)
    assert [s.sequence_id for s in await reader.query_spans(rid)] == [1, 2]
    reader.close()
    store.close()


async def test_a_live_attempt_left_without_its_claim_token_is_found_and_given_one_back(
    tmp_path: Path,
) -> None:
    """``check --fix`` moved a torn newest revision (the attempt's ``succeeded`` commit) to
    quarantine: the rollout read as running, its attempt live, but the commit had taken the
    claim token, so the reaper never judged it (``timeout_seconds`` never fired) and ``agl
    check`` reported nothing (found by an adversarial pass)."""
    import subprocess

    from cli_helpers import AGL, agl_env

    from store_fs import RolloutConfig

    root = tmp_path / "store"
    store = FileStore(root, scan_debounce_seconds=0)
    rollout = await store.enqueue_rollout(input="q", config=RolloutConfig(timeout_seconds=0.5))
    attempted = await store.dequeue_rollout(worker_id="w")
    assert attempted is not None
    await store.add_span(
        Span.from_attributes(
            attributes={},
            rollout_id=rollout.rollout_id,
            attempt_id=attempted.attempt.attempt_id,
            sequence_id=1,
            name="step",
        )
    )
    await store.update_attempt(rollout.rollout_id, attempted.attempt.attempt_id, status="succeeded")
    store.close()
    newest = max(root.glob(f"rollouts/*/{rollout.rollout_id}/history/*.json"))
    newest.write_bytes(newest.read_bytes()[:40])  # torn
    fixed = subprocess.run([AGL, "check", "--fix"], env=agl_env(root), capture_output=True, text=True)
    kinds = [json.loads(line)["kind"] for line in fixed.stdout.splitlines()]
    assert "untracked-attempt" in kinds, fixed.stdout
    time.sleep(0.6)  # past timeout_seconds
    store = FileStore(root, scan_debounce_seconds=0)
    store.reap()
    got = await store.get_rollout_by_id(rollout.rollout_id)
    assert got is not None
    assert got.status == "failed"  # the reaper judged it: timed out, no retry allowed
    assert subprocess.run([AGL, "check"], env=agl_env(root), capture_output=True).returncode == 0
    store.close()
