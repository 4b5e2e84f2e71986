"""``store_fs.doctor``: the filesystem checks, on a local directory and on the simulated NFS
mounts (tests/nfs_fuse.py), and the advice for NFS mount options."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from two_hosts import TwoHosts, two_hosts  # noqa: F401

from store_fs import FileStore
from store_fs.doctor import Finding, MountInfo, _durability, _nfs_option_findings, diagnose, mount_of


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def assert_store_fit(findings: list[Finding], root: Path) -> None:
    checks = by_check(findings)
    for name in ("exclusive create", "link", "rename", "clock", "wake-ups", "space", "mount"):
        assert name in checks, name
    assert [f for f in findings if f.level == "fail"] == []
    assert abs(float(checks["clock"].message.split()[4])) < 1.0
    # The scratch directory and the doctor's clock probe are gone; the store is untouched.
    assert not [p for p in (root / "locks").iterdir() if p.name.startswith("doctor-")]


def test_local_directory(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    before = sorted(p.name for p in (tmp_path / "store").iterdir())
    findings = diagnose(store.root)
    assert_store_fit(findings, store.root)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == before
    assert "a local filesystem" in by_check(findings)["mount"].message


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        diagnose(tmp_path / "nowhere")


def test_simulated_nfs_mount(two_hosts: Callable[..., TwoHosts]) -> None:  # noqa: F811
    hosts = two_hosts()
    FileStore(hosts.a.path / "store")
    findings = diagnose(hosts.b.path / "store")
    assert_store_fit(findings, hosts.b.path / "store")
    assert "fuse.nfs_fuse" in by_check(findings)["mount"].message


def test_mount_lookup_and_nfs_advice(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw,relatime 0 0\n"
        "server:/export /mnt/agl nfs4 rw,soft,vers=4.2,acregmax=60,acdirmax=60,lookupcache=all 0 0\n"
    )
    info = mount_of(Path("/mnt/agl/exp1"), mounts)
    assert info is not None
    assert (info.mount_point, info.fstype) == ("/mnt/agl", "nfs4")
    advice = " ".join(f.message + " " + f.advice for f in _nfs_option_findings(info.options))
    for needle in ("soft", "lookupcache=positive", "acregmax=60", "actimeo=1"):
        assert needle in advice
    assert _nfs_option_findings(("rw", "hard", "noac")) == []
    root = mount_of(Path("/etc"), mounts)
    assert root is not None
    assert root.fstype == "ext4"


def test_agl_doctor_through_the_installed_command(tmp_path: Path) -> None:
    from cli_helpers import Agl

    agl = Agl(tmp_path / "store", tmp_path)
    assert agl("init").code == 0
    res = agl("doctor")
    assert res.code == 0, str(res)
    checks = {line["check"]: line for line in res.lines()}
    assert {"mount", "exclusive create", "link", "rename", "clock", "wake-ups", "space"} <= set(checks)
    assert all(line["level"] in ("ok", "warn") for line in checks.values())
    missing = agl("doctor", str(tmp_path / "nowhere"))
    assert missing.code == 5, str(missing)
    assert missing.stderr.startswith("agl: no store at")


def test_durability_says_what_the_setting_protects_against_on_this_mount(tmp_path: Path) -> None:
    plain = FileStore(tmp_path / "plain")
    durable = FileStore(tmp_path / "durable", durability="fsync")
    disk = MountInfo("/", "ext4", ("rw", "relatime"))
    finding = _durability(plain.layout, disk)
    assert finding is not None
    assert (finding.level, finding.message.split(":")[0]) == ("ok", "process")
    assert f"agl init --durability fsync {plain.root}" in finding.advice
    finding = _durability(durable.layout, disk)
    assert finding is not None
    assert (finding.level, finding.advice) == ("ok", "")
    assert "survives power loss" in finding.message
    spaced = FileStore(tmp_path / "a store")
    finding = _durability(spaced.layout, disk)
    assert finding is not None
    assert f"--durability fsync '{spaced.root}'" in finding.advice
    finding = _durability(durable.layout, MountInfo("/", "ext4", ("rw", "nobarrier")))
    assert finding is not None
    assert finding.level == "warn"
    assert "nobarrier" in finding.message
    for store in (plain, durable):  # in memory: nothing survives a reboot, whatever the setting
        finding = _durability(store.layout, MountInfo("/dev/shm", "tmpfs", ("rw",)))
        assert finding is not None
        assert finding.level == "warn"
        assert "in memory (tmpfs)" in finding.message
    # Through diagnose, on the real mount of tmp_path.
    assert "durability" in by_check(diagnose(durable.root))
    (plain.root / "FORMAT.json").write_text('{"version": 1, "durability": "sometimes"}')
    finding = _durability(plain.layout, disk)
    assert finding is not None
    assert finding.level == "fail"
    assert "durability" in finding.message
