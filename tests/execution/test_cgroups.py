"""Where slot cgroups go and what is written there, on fake cgroup trees (the machine's own
hierarchy is exercised by tests/execution/test_sandbox.py, with whichever version it has)."""

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
    assert sandbox._oom_kills(SimpleNamespace(oom_files=groups.oom_files)) == 2  # what the worker reads


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
