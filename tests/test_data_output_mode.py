"""``-o`` onto an existing file keeps its permissions (``agl data -o``, ``agl report -o``).

Found by an adversarial pass: the file was published by renaming a new temporary file over it,
created 0644 less the umask, so training data made private (0600) became readable by everyone.
The temporary file now takes the old file's mode (and owner and group where allowed) before it
is renamed over it; a new name gets 0644 less the umask, as before.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cli_helpers import Agl
from datasets_helpers import store_with_one_rollout

from store_fs.output_targets import create_temp_beside


@pytest.fixture
def agl(tmp_path: Path) -> Agl:
    store_with_one_rollout(tmp_path / "store")
    return Agl(tmp_path / "store", tmp_path)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    ("args", "name", "mode"),
    [
        (("data", "triplets"), "private.jsonl", 0o600),
        (("data", "messages"), "shared.jsonl", 0o660),
        (("data", "rollouts"), "odd.jsonl", 0o604),
        (("report",), "report.html", 0o640),
    ],
)
def test_output_onto_an_existing_file_keeps_its_mode(
    agl: Agl, tmp_path: Path, args: tuple[str, ...], name: str, mode: int
) -> None:
    out = tmp_path / name
    out.write_text("old\n")
    out.chmod(mode)
    before = out.stat().st_ino
    agl.ok(*args, "-o", str(out))
    assert out.stat().st_ino != before  # published whole, by rename
    assert out.read_text() != "old\n"
    assert _mode(out) == mode
    link = tmp_path / f"link-{name}"
    link.symlink_to(out)  # through a link: the file it names keeps its mode
    agl.ok(*args, "-o", str(link))
    assert link.is_symlink()
    assert _mode(out) == mode


def test_parquet_onto_an_existing_file_keeps_its_mode(agl: Agl, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "t.parquet"
    out.write_bytes(b"")
    out.chmod(0o600)
    agl.ok("data", "triplets", "-o", str(out))
    assert out.stat().st_size > 0
    assert _mode(out) == 0o600


def test_a_new_output_file_gets_0644_less_the_umask(agl: Agl, tmp_path: Path) -> None:
    out = tmp_path / "new.jsonl"
    agl.ok("data", "triplets", "-o", str(out))
    assert _mode(out) == 0o644 & ~_umask()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another owner needs root")
def test_the_temporary_file_takes_the_old_files_owner_and_group(tmp_path: Path) -> None:
    out = tmp_path / "theirs.jsonl"
    out.write_text("old\n")
    os.chown(out, 12345, 23456)
    os.chmod(out, 0o2640)  # set-group-id too: a change of owner clears it, the mode sets it again
    fd, temp = create_temp_beside(out)
    os.close(fd)
    made = temp.stat()
    assert (made.st_uid, made.st_gid) == (12345, 23456)
    assert stat.S_IMODE(made.st_mode) == 0o2640


@pytest.mark.parametrize("args", [("data", "triplets"), ("report",)], ids=["parquet", "report"])
def test_a_read_only_output_is_replaced_and_stays_read_only(
    agl: Agl, tmp_path: Path, args: tuple[str, ...]
) -> None:
    """Found in review: the temporary file took the old file's 0444 at creation, and pyarrow and
    the report reopen it by name, which a user without root's override was refused (exit 1, the
    temporary file left behind). It stays writable by its owner until it is published."""
    if args[0] == "data":
        pytest.importorskip("pyarrow")
    out = tmp_path / ("t.parquet" if args[0] == "data" else "r.html")
    out.write_text("old\n")
    out.chmod(0o444)
    fd, temp = create_temp_beside(out)  # what a writer gets: writable by its owner
    os.close(fd)
    assert _mode(temp) == 0o644
    temp.unlink()
    agl.ok(*args, "-o", str(out))  # Parquet by the name's suffix
    assert out.read_bytes() != b"old\n"
    assert _mode(out) == 0o444
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("name", ["FORMAT.json", "rollouts/rows.jsonl", "index/rollouts/x.jsonl"])
@pytest.mark.parametrize("args", [("data", "triplets"), ("report",)], ids=["data", "report"])
def test_an_output_name_the_store_keeps_its_own_data_under_is_refused(
    agl: Agl, args: tuple[str, ...], name: str
) -> None:
    """Found by an adversarial pass: `agl report -o STORE/FORMAT.json` replaced the store's
    format file (exit 0), after which no command opened the store."""
    before = (agl.store / "FORMAT.json").read_bytes()
    res = agl(*args, "-o", str(agl.store / name))
    assert res.code == 4, str(res)
    assert "belongs to the store" in res.stderr
    assert (agl.store / "FORMAT.json").read_bytes() == before
    agl.ok(*args, "-o", str(agl.store / "beside.out"))  # beside its own names is fine


@pytest.mark.parametrize(
    "args",
    [
        ("data", "rollouts", "--cursor", "resources/versions/9.json"),
        ("data", "rollouts", "--cursor", "index/rollouts/my.jsonl"),
        ("prune", "--older-than", "0s", "--archive", "resources/versions/7.json"),
    ],
    ids=["cursor-as-resources", "cursor-as-index-log", "archive-as-resources"],
)
def test_a_cursor_or_archive_named_inside_the_store_is_refused(agl: Agl, args: tuple[str, ...]) -> None:
    """The same for ``--cursor`` and ``--archive`` (found by a later pass): a cursor saved as
    ``resources/versions/9.json`` made 'latest resources' read as none published."""
    *head, last = args
    res = agl(*head, str(agl.store / last))
    assert res.code == 4, str(res)
    assert "belongs to the store" in res.stderr
    assert not (agl.store / last).exists()
