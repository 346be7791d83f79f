"""Per-slot control groups for the sandbox: memory, process count and CPU bandwidth limits that hold
for a program's processes together, so a memory bomb, a fork flood or a CPU-bound swarm of threads
in one sandbox cannot starve a neighbour.

cgroup v2 (memory.max, memory.swap.max, pids.max, cpu.max) where the harness's own cgroup may have
children with those controllers; else cgroup v1 (memory.limit_in_bytes, memory.memsw.limit_in_bytes,
pids.max, cpu.cfs_quota_us), each under the harness's own cgroup of that hierarchy; else none, and
the isolation report says so (the rlimits still apply). Needs root (or a delegated subtree).

One cgroup (per hierarchy) per worker slot, created by the harness when a pool starts and removed
when it ends; a slot runs one program at a time, and each sandboxed process joins its slot's
cgroups first thing after it is cloned, before any untrusted code runs (`mtp_bench.sandbox`).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

CPU_PERIOD_US = 100_000
CONTROLLERS = ("memory", "pids", "cpu")


@dataclass
class Limits:
    memory_mb: int  # the sandbox's processes together (RAM + tmpfs pages they write)
    max_procs: int  # processes and threads together
    cpus: float = 1.0  # CPU bandwidth: this many CPUs' worth of time per period


@dataclass
class SlotGroups:
    version: int
    dirs: list[str]  # one per hierarchy (v2: one)
    procs: list[str] = field(default_factory=list)  # the files a process writes "0" to, to join
    oom_files: list[str] = field(default_factory=list)  # where the kernel counts OOM kills (read by the sandbox)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup mount."""
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if rfields and rfields[0] in ("cgroup", "cgroup2"):
                out.append((fields[4], rfields[0], set(rfields[2].split(",")) if len(rfields) > 2 else set()))
    return out


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                out[c] = path
    return out


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def locate() -> tuple[int | None, dict[str, str], str]:
    """(version, {controller: parent dir}, why not) for where slot cgroups can be created."""
    if os.geteuid() != 0:
        return None, {}, "not root"
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError as e:
        return None, {}, f"cannot read /proc: {e}"
    reasons = []
    for point, kind, _ in mounts:  # v2 first
        if kind != "cgroup2" or "" not in own:
            continue
        parent = os.path.join(point, own[""].lstrip("/"))
        try:
            available = set(open(os.path.join(parent, "cgroup.controllers")).read().split())
            enabled = set(open(os.path.join(parent, "cgroup.subtree_control")).read().split())
        except OSError as e:
            reasons.append(f"v2 at {parent}: {e.strerror}")
            continue
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            reasons.append(f"v2 at {parent}: controllers {', '.join(missing)} not available")
            continue
        try:
            todo = [c for c in CONTROLLERS if c not in enabled]
            if todo:
                _write(os.path.join(parent, "cgroup.subtree_control"), " ".join("+" + c for c in todo))
        except OSError as e:
            reasons.append(f"v2 at {parent}: cannot enable {', '.join(todo)} for children ({e.strerror})")
            continue
        return 2, {"": parent}, ""
    dirs = {}
    for c in CONTROLLERS:
        point = next((p for p, kind, opts in mounts if kind == "cgroup" and c in opts), None)
        if point is None or c not in own:
            reasons.append(f"v1: no {c} hierarchy")
            break
        dirs[c] = os.path.join(point, own[c].lstrip("/"))
    else:
        return 1, dirs, ""
    return None, {}, "; ".join(reasons) or "no cgroup hierarchy mounted"


def create(version: int, parents: dict[str, str], name: str, limits: Limits) -> SlotGroups:
    """A slot's cgroups with its limits written (OSError if the kernel refuses one)."""
    quota = str(int(limits.cpus * CPU_PERIOD_US))
    mb = limits.memory_mb * 1024 * 1024
    groups = SlotGroups(version, [])
    try:
        if version == 2:
            d = os.path.join(parents[""], name)
            os.mkdir(d)
            groups.dirs.append(d)
            _write(os.path.join(d, "memory.max"), str(mb))
            if os.path.exists(os.path.join(d, "memory.swap.max")):
                _write(os.path.join(d, "memory.swap.max"), "0")
            _write(os.path.join(d, "pids.max"), str(limits.max_procs))
            _write(os.path.join(d, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
            groups.procs.append(os.path.join(d, "cgroup.procs"))
            groups.oom_files.append(os.path.join(d, "memory.events"))
        else:
            for c in CONTROLLERS:
                d = os.path.join(parents[c], name)
                os.mkdir(d)
                groups.dirs.append(d)
                if c == "memory":
                    _write(os.path.join(d, "memory.limit_in_bytes"), str(mb))
                    if os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes")):
                        _write(os.path.join(d, "memory.memsw.limit_in_bytes"), str(mb))  # no escape to swap
                    groups.oom_files.append(os.path.join(d, "memory.oom_control"))
                elif c == "pids":
                    _write(os.path.join(d, "pids.max"), str(limits.max_procs))
                else:
                    _write(os.path.join(d, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
                    _write(os.path.join(d, "cpu.cfs_quota_us"), quota)
                groups.procs.append(os.path.join(d, "cgroup.procs"))
    except OSError:
        remove(groups)
        raise
    return groups


def remove(groups: SlotGroups, attempts: int = 100) -> None:
    """Kill whatever is left in the slot's cgroups and remove them (children die asynchronously: retry)."""
    for d in reversed(groups.dirs):
        for _ in range(attempts):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                try:
                    for pid in open(os.path.join(d, "cgroup.procs")).read().split():
                        try:
                            os.kill(int(pid), 9)
                        except OSError:
                            pass
                except OSError:
                    pass
                time.sleep(0.01)


def probe(limits: Limits) -> dict:
    """{"version": 1 | 2 | None, "controllers": [...], "why_not": str}: tried by creating a cgroup."""
    version, parents, why = locate()
    if version is None:
        return {"version": None, "controllers": [], "why_not": why}
    try:
        groups = create(version, parents, f"mtp-bench-probe-{os.getpid()}", limits)
    except OSError as e:
        return {"version": None, "controllers": [], "why_not": f"v{version}: cannot create a cgroup ({e.strerror})"}
    remove(groups)
    return {"version": version, "controllers": list(CONTROLLERS), "why_not": "", "parents": parents}


_OURS = re.compile(r"^mtp-bench-(?:probe-)?(\d+)-")


def remove_stale(parents: dict[str, str]) -> list[str]:
    """Remove the slot cgroups of harnesses that are gone (killed: an OOM kill, SIGKILL), with whatever
    sandboxed process is still in them. Ours are named mtp-bench-PID-... (mtp-bench-probe-PID-...);
    a live PID's are left alone. Returns the removed directories."""
    removed = []
    for parent in parents.values():
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            m = _OURS.match(name + "-")
            if m is None or _alive(int(m.group(1))):
                continue
            d = os.path.join(parent, name)
            remove(SlotGroups(0, [d]))
            if not os.path.exists(d):
                removed.append(d)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def available_memory_mb() -> int | None:
    """Memory this process's processes may still use: the least of MemAvailable and, up its own
    memory cgroup and the cgroup's ancestors, every limit minus its usage (v2 memory.max, v1
    memory.limit_in_bytes). None where none of them can be read."""
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) // 1024)
    except (OSError, ValueError):
        pass
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError:
        return min(found) if found else None
    for point, kind, opts in mounts:
        if kind == "cgroup2" and "" in own:
            path, limit_f, usage_f = own[""], "memory.max", "memory.current"
        elif kind == "cgroup" and "memory" in opts and "memory" in own:
            path, limit_f, usage_f = own["memory"], "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        d = os.path.join(point, path.lstrip("/"))
        while d.startswith(point):
            try:
                limit = open(os.path.join(d, limit_f)).read().strip()
                usage = int(open(os.path.join(d, usage_f)).read())
                if limit != "max" and int(limit) < 1 << 60:
                    found.append(max(0, int(limit) - usage) // (1024 * 1024))
            except (OSError, ValueError):
                pass
            if d == point:
                break
            d = os.path.dirname(d)
    return min(found) if found else None
