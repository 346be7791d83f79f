"""Where slot cgroups go and what is written there, on fake cgroup trees (the machine's own
hierarchy is exercised by tests/execution/test_sandbox.py, with whichever version it has)."""

import os
from types import SimpleNamespace

import pytest

from mtp_bench.execution import cgroups, sandbox


@pytest.fixture
def fake_v2(tmp_path, monkeypatch):
    root = tmp_path / "unified"
    own = root / "team" / "me"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (own / "cgroup.subtree_control").write_text("memory\n")
    monkeypatch.setattr(cgroups, "_mounts", lambda: [(str(root), "cgroup2", set())])
    monkeypatch.setattr(cgroups, "_own_paths", lambda: {"": "/team/me"})
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 0)
    return own


def test_v2_enables_the_controllers_and_writes_the_limits(fake_v2):
    version, parents, why = cgroups.locate()
    assert (version, parents, why) == (2, {"": str(fake_v2)}, "")
    assert (fake_v2 / "cgroup.subtree_control").read_text() == "+pids +cpu"  # memory was on already
    groups = cgroups.create(2, parents, "slot", cgroups.Limits(memory_mb=300, max_procs=40, cpus=1.0))
    d = fake_v2 / "slot"
    assert groups.dirs == [str(d)] and groups.procs == [str(d / "cgroup.procs")]
    assert (d / "memory.max").read_text() == str(300 << 20)
    assert (d / "pids.max").read_text() == "40" and (d / "cpu.max").read_text() == "100000 100000"
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    fds = [os.open(f, os.O_RDONLY) for f in groups.oom_files]  # as the worker holds them
    try:
        assert sandbox._oom_kills(SimpleNamespace(oom_fds=fds)) == 2  # what the worker reads
        (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 5\n")
        assert sandbox._oom_kills(SimpleNamespace(oom_fds=fds)) == 5  # read afresh each time
    finally:
        for fd in fds:
            os.close(fd)


def test_v2_without_the_controllers_says_why(fake_v2):
    (fake_v2 / "cgroup.controllers").write_text("hugetlb\n")
    version, _, why = cgroups.locate()
    assert version is None and "memory, pids, cpu not available" in why


def test_v1_uses_each_hierarchy_under_our_own_cgroup(tmp_path, monkeypatch):
    mounts = []
    own = {}
    for c in cgroups.CONTROLLERS:
        (tmp_path / c / "job").mkdir(parents=True)
        mounts.append((str(tmp_path / c), "cgroup", {"rw", c}))
        own[c] = "/job"
    monkeypatch.setattr(cgroups, "_mounts", lambda: [(str(tmp_path / "unified"), "cgroup2", set()), *mounts])
    monkeypatch.setattr(cgroups, "_own_paths", lambda: {**own, "": "/"})
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 0)
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    (tmp_path / "unified" / "cgroup.subtree_control").write_text("")
    version, parents, why = cgroups.locate()
    assert version == 1 and parents == {c: str(tmp_path / c / "job") for c in cgroups.CONTROLLERS}
    groups = cgroups.create(1, parents, "slot", cgroups.Limits(memory_mb=100, max_procs=9, cpus=0.5))
    assert (tmp_path / "memory" / "job" / "slot" / "memory.limit_in_bytes").read_text() == str(100 << 20)
    assert (tmp_path / "pids" / "job" / "slot" / "pids.max").read_text() == "9"
    assert (tmp_path / "cpu" / "job" / "slot" / "cpu.cfs_quota_us").read_text() == "50000"
    assert len(groups.procs) == 3


def test_not_root_means_no_cgroups(monkeypatch):
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 1000)
    assert cgroups.locate() == (None, {}, "not root")


def test_available_memory_is_the_least_of_memavailable_and_each_cgroup_limit(fake_v2):
    (fake_v2 / "memory.max").write_text(str(600 << 20))
    (fake_v2 / "memory.current").write_text(str(100 << 20))
    (fake_v2.parent / "memory.max").write_text("max")  # an ancestor without a limit
    (fake_v2.parent / "memory.current").write_text(str(5 << 30))
    assert cgroups.available_memory_mb() == 500


def test_remove_stale_takes_dead_harnesses_groups_only(tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    for name in (f"mtp-bench-{dead.pid}-0-1", f"mtp-bench-probe-{dead.pid}", f"mtp-bench-{os.getpid()}-0-1", "other"):
        (tmp_path / name).mkdir()
    removed = cgroups.remove_stale({"memory": str(tmp_path)})
    assert sorted(os.path.basename(d) for d in removed) == sorted([f"mtp-bench-{dead.pid}-0-1", f"mtp-bench-probe-{dead.pid}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"mtp-bench-{os.getpid()}-0-1", "other"])
