"""The execution sandbox's process side: runs one untrusted Python program behind OS-level isolation.

This file imports only a few standard modules because it runs as a script: each worker of the pool
in `mtp_bench.execution` is `python -I mtp_bench/execution/sandbox.py --worker SLOT`, a small long-lived process
that forks a fresh sandbox per program (no new interpreter per program; a small worker keeps the
copy-on-write cost of each fork low). The public API (`SandboxConfig`, `ExecResult`, `run_program`,
`run_programs`, `isolation_report`) is in `mtp_bench.execution`, whose docstring says what the sandbox
does and does not protect against.

Once per worker (`prepare_worker`): a network namespace with no interface up, a uts namespace, and a
mount namespace in which every mount is read-only and nosuid (directories that hold Python but that
the sandbox uid could not enter, e.g. /root for pyenv, are replaced by an empty tmpfs with only the
Python install bound back in).

One program, step by step (`_run_one` in the worker, the trusted supervisor):

    worker ──clone(NEWNS|NEWPID|NEWIPC)──> C (pid 1 of a fresh pid namespace; the program runs here)
                                            0) join the slot's cgroups (memory, pids, cpu)
                                            1) setsid; mount a fresh /proc and a fresh size-limited
                                               tmpfs on /tmp (the cwd) over the read-only view
                                            2) drop to an unprivileged uid/gid with no groups and no
                                               capabilities, no_new_privs, parent-death signal, rlimits
                                            3) stdin </dev/null, stdout/stderr to capped pipes, every
                                               other fd closed but its two pipes to J, empty environment
                                            4) exec the program (prompt + completion), say "ready",
                                               then answer J's calls with plain data (`wire`)
    then the run's nonce is made (C's memory never held it), and the job goes to the worker's judge
    J (cloned once, the same steps 0-3 under the slot's judge uid, not dumpable): the tests, the names
    they call in C, the nonce, and the two pipe ends to C (SCM_RIGHTS). J runs the tests, every call
    to the program a round trip to C, and sends back nonce + verdict on its socket.
    5) the worker waits with the wall-clock deadline, SIGKILLs C on its verdict or on expiry (C's
       death kills every process of its pid namespace and unmounts its tmpfs), drains the pipes,
       decides the result, and answers the pool with one JSON object. A judge that hangs past the
       deadline, or dies, is replaced before the next program.

A single-process job (a program given as one source) runs as S instead of C: steps 0-3, then the
whole program, and only if it returns normally the nonce on a verdict pipe only S holds.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import resource
import select
import signal
import struct
import sys
import time
from types import SimpleNamespace


def _load_wire():
    """mtp_bench/execution/wire.py, loaded by path: this script runs as `python -I`, outside the package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mtp_bench_wire", os.path.join(os.path.dirname(__file__), "wire.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __package__:  # imported by the harness (mtp_bench.execution)
    from mtp_bench.execution import wire
else:
    wire = _load_wire()

# -----------------------------------------------------------------------------
# Linux constants (x86_64 and aarch64 share these) and libc

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 0x4000, 1 << 18
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE = 442, -100, 0x8000  # mount_setattr(2), Linux >= 5.12
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NAME, PR_SET_NO_NEW_PRIVS = 1, 4, 15, 38
MS_BIND = 4096
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}.get(os.uname().machine)
SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_pylibc = ctypes.PyDLL(None, use_errno=True)  # keeps the GIL held across the call (for clone)
_pylibc.syscall.restype = ctypes.c_long


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _readonly_everything() -> None:
    """Every mount of this mount namespace read-only and nosuid, recursively (mount_setattr)."""
    attr = struct.pack("QQQQ", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)  # struct mount_attr
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), b"/",
                        ctypes.c_uint(AT_RECURSIVE), buf, ctypes.c_size_t(len(attr)))
    _check(int(ret), "mount_setattr / read-only")


def _drop_capabilities() -> None:
    """capset(2) to empty effective/permitted/inheritable sets (needed when we stay uid 0 in a user ns)."""
    if SYS_CAPSET is None:
        raise OSError(0, f"capset syscall number unknown on {os.uname().machine}")
    header = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0), 8)  # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(b"\0" * 24, 24)  # 2 x {effective, permitted, inheritable}
    _check(int(_libc.syscall(ctypes.c_long(SYS_CAPSET), header, data)), "capset")


# -----------------------------------------------------------------------------
# seccomp: the system calls a test program never needs, denied with EPERM (a classic BPF filter)
#
# Nothing a program does may outlive it or reach outside its sandbox. The kernel keyring would (a key
# in the uid's user keyring survives the program, even the harness: state between samples, issue 21);
# so would ptrace, bpf and perf_event_open (other processes, the kernel), mounts and new namespaces
# (a user namespace gives back the privileges that hide the answer key), kernel modules, kexec,
# handles to host files by number, io_uring (system calls the filter cannot see). clone3 answers
# ENOSYS, so the C library falls back to clone, whose flags the filter can read: a clone into a new
# namespace is denied, a plain fork or thread is not.

SECCOMP_MODE_FILTER, PR_SET_SECCOMP = 2, 22
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_DENIED = {  # name -> (x86_64, aarch64)
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "kcmp": (312, 272),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442),
    "unshare": (272, 97), "setns": (308, 268),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "reboot": (169, 142),
    "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89), "quotactl": (179, 60), "syslog": (103, 116),
    "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "adjtimex": (159, 171), "vhangup": (153, 58),
}
_CLONE3 = 435  # both
_NEW_NAMESPACES = 0x7E020080  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME (in clone's flags)


def seccomp_filter(machine: str) -> bytes | None:
    """The filter program (struct sock_filter[]), or None where the system call numbers are unknown.

    A call from another architecture's table (x86_64's x32 ABI, 32-bit compat) kills the process: the
    numbers below would mean other calls there."""
    if machine not in _AUDIT_ARCH:
        return None
    col = 0 if machine == "x86_64" else 1
    ld, jeq, jset, ret, jge = 0x20, 0x15, 0x45, 0x06, 0x35  # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JSET|K, RET|K, JGE
    ins = lambda code, jt, jf, k: struct.pack("HBBI", code, jt, jf, k)  # noqa: E731
    eperm = SECCOMP_RET_ERRNO | 1
    prog = [ins(ld, 0, 0, 4), ins(jeq, 1, 0, _AUDIT_ARCH[machine]), ins(ret, 0, 0, SECCOMP_RET_KILL_PROCESS),
            ins(ld, 0, 0, 0)]  # seccomp_data.arch, then .nr
    if machine == "x86_64":
        prog += [ins(jge, 0, 1, 0x40000000), ins(ret, 0, 0, SECCOMP_RET_KILL_PROCESS)]  # x32 numbers
    numbers = sorted({v[col] for v in _DENIED.values()})
    for nr in numbers:
        prog += [ins(jeq, 0, 1, nr), ins(ret, 0, 0, eperm)]
    prog += [ins(jeq, 0, 1, _CLONE3), ins(ret, 0, 0, SECCOMP_RET_ERRNO | 38)]  # ENOSYS: use clone
    clone_nr = SYS_CLONE if SYS_CLONE is not None else -1
    prog += [ins(jeq, 0, 4, clone_nr), ins(ld, 0, 0, 16),  # args[0], its low 32 bits (little-endian)
             ins(jset, 0, 1, _NEW_NAMESPACES), ins(ret, 0, 0, eperm), ins(ret, 0, 0, SECCOMP_RET_ALLOW),
             ins(ret, 0, 0, SECCOMP_RET_ALLOW)]
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_FILTER = seccomp_filter(os.uname().machine)
_FILTER_BUF = ctypes.create_string_buffer(_FILTER, len(_FILTER)) if _FILTER else None
_FPROG = _SockFprog(len(_FILTER) // 8, ctypes.cast(_FILTER_BUF, ctypes.c_void_p)) if _FILTER else None


def _install_seccomp() -> None:
    """Install the filter on this process (inherited by every child; needs no_new_privs first)."""
    if _FPROG is None:
        raise OSError(0, f"no seccomp filter for {os.uname().machine}")
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(_FPROG), 0, 0), "prctl(SECCOMP)")


def _write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# -----------------------------------------------------------------------------
# isolation features: probed once, then applied exactly (never a silent fallback)

FEATURES = (
    "user_namespace",  # only used (and only needed) when the harness is not root
    "mount_namespace", "network_namespace", "pid_namespace", "ipc_namespace", "uts_namespace",
    "readonly_root",  # every mount read-only + nosuid: no writes outside the private /tmp
    "private_tmp",  # a fresh size-limited tmpfs on /tmp, the cwd; gone with the sandbox
    "private_proc",  # /proc of the sandbox's own pid namespace: no view of host processes
    "unprivileged_uid",  # a uid/gid of its own, no supplementary groups (harness is root)
    "no_capabilities",  # empty capability sets + no_new_privs
    "allowlisted_root",  # an empty root with only Python, its import path, system libraries, /dev's basics
    "seccomp",  # a filter denying the system calls a test program never needs (keyring, ptrace, bpf, mounts, ...)
)
_NS_FLAGS = {"user_namespace": CLONE_NEWUSER, "mount_namespace": CLONE_NEWNS, "network_namespace": CLONE_NEWNET,
             "pid_namespace": CLONE_NEWPID, "ipc_namespace": CLONE_NEWIPC, "uts_namespace": CLONE_NEWUTS}


def _write_id_maps(uid: int, gid: int) -> None:
    """Map our own uid/gid to root inside a new user namespace, so mounts are allowed there."""
    _write_file("/proc/self/setgroups", "deny")
    _write_file("/proc/self/uid_map", f"0 {uid} 1")
    _write_file("/proc/self/gid_map", f"0 {gid} 1")


def python_exposures() -> dict[str, list[str]]:
    """Directories the sandbox uid cannot enter that hold this Python (e.g. /root for a pyenv install).

    Returns {hidden_dir: [python roots under it]}. In the sandbox each hidden dir is covered by an empty
    tmpfs and only the Python roots are bind-mounted back, so imports work and the rest stays hidden.
    """
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    roots |= {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    roots = {r for r in roots if not any(r.startswith(q + "/") for q in roots)}  # outermost only
    out: dict[str, list[str]] = {}
    for r in sorted(roots):
        parts = r.split("/")
        for i in range(2, len(parts)):  # proper ancestors, "/" excluded
            ancestor = "/".join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:  # not searchable by others
                out.setdefault(ancestor, []).append(r)
                break
    return out


def _expose_python(exposures: dict[str, list[str]]) -> None:
    for hidden, roots in exposures.items():
        fds = [os.open(r, os.O_PATH) for r in roots]  # handles on the originals before they are covered
        _mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=1024,mode=0755")
        for r, fd in zip(roots, fds):
            os.makedirs(r, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", r, None, MS_BIND | MS_REC)
            os.close(fd)


# -----------------------------------------------------------------------------
# the allowlisted root: a program sees only what it needs to run Python, nothing else of the host
#
# Hiding what the harness knows of (`hidden_paths`) cannot cover a copy of the benchmark data it does
# not know of (a checkout beside ../shared/data, a download in a home directory). So the worker builds
# an empty root once (a tmpfs), binds into it, read-only and at their own paths, the Python
# installation and its import path, the system libraries, a few files of /etc the C library reads and
# the basic devices, and pivots into it: every other path of the host is absent for its programs.

SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc/ld.so.cache", "/etc/ld.so.conf",
                "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
                "/etc/hosts", "/etc/alternatives")
DEVICES = ("null", "zero", "full", "random", "urandom")
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)
MNT_DETACH = 2
_TMP_BINDS: list[str] = []  # allowlisted paths under /tmp (a venv there): bound again over each private /tmp


def python_roots() -> list[str]:
    """The Python installation (prefixes, a venv's and its base's) and the import path entries inside them."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    roots = set(prefixes)
    for p in sys.path:  # an entry outside every prefix (an editable checkout) is not the installation's
        real = os.path.realpath(p) if p else ""
        if real and os.path.isdir(real) and any(real == q or real.startswith(q + "/") for q in prefixes):
            roots.add(real)
    return sorted(roots)


def allowlist() -> list[str]:
    """Every path the program's root holds (outermost only), besides /dev's devices, /proc and /tmp."""
    paths = {p for p in SYSTEM_PATHS if os.path.lexists(p)} | set(python_roots())
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths if not os.path.islink(q)))


def _allowlisted_root(paths: list[str]) -> None:
    """Build the empty root, bind `paths` and the devices in, pivot into it (in the worker, once).

    Every source is opened (O_PATH) before anything is mounted, and bound from that handle: so the
    staging point may cover an allowlisted path (a venv under /tmp) without hiding it from the new
    root, and nothing allowlisted is ever looked up through the staging tree itself."""
    global _TMP_BINDS
    if SYS_PIVOT_ROOT is None:
        raise OSError(0, f"pivot_root syscall number unknown on {os.uname().machine}")
    # 1) handles on the originals (a symlink, /bin -> usr/bin, is recreated as a symlink)
    items = [(p, None, os.readlink(p)) if os.path.islink(p) else (p, os.open(p, os.O_PATH), None) for p in paths]
    items += [(f"/dev/{d}", os.open(f"/dev/{d}", os.O_PATH), None) for d in DEVICES if os.path.exists(f"/dev/{d}")]
    # 2) the new root: a fresh tmpfs on a staging point (/tmp: this mount namespace's own, covered here only)
    stage = "/tmp"
    _mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    try:
        for d in ("dev", "proc", "tmp"):
            os.mkdir(f"{stage}/{d}", 0o755)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"{stage}/dev/{name}")
        for path, fd, link in items:
            target = stage + path
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            if link is not None:
                os.symlink(link, target)
                continue
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(target, mode=0o755, exist_ok=True)
            else:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
            _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    finally:
        for _, fd, _ in items:
            if fd is not None:
                os.close(fd)
    # 3) pivot: the staging tmpfs becomes "/", the old root is detached (nothing of it stays reachable)
    os.chdir(stage)
    _check(int(_libc.syscall(ctypes.c_long(SYS_PIVOT_ROOT), b".", b".")), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    _TMP_BINDS = [p for p in paths if p.startswith("/tmp/") and not os.path.islink(p)]


def _private_tmp(options: str) -> None:
    """A fresh tmpfs on /tmp, with the allowlisted paths that live under /tmp (a venv there) bound
    again over it: opened before it covers them, in this process's own mount namespace (a bind from
    a handle of another namespace, the worker's, is refused)."""
    fds = [os.open(p, os.O_PATH) for p in _TMP_BINDS]
    try:
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, options)
        for path, fd in zip(_TMP_BINDS, fds):
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
    finally:
        for fd in fds:
            os.close(fd)


# Namespaces a program can leave nothing behind in are made once per worker (the costly network
# namespace above all); the rest once per program. An empty network namespace keeps no state once its
# processes are dead (sockets die with them, and without CAP_NET_ADMIN nothing else can be created);
# the hostname cannot be changed without privilege. SysV IPC objects outlive their creator, so the
# ipc namespace is per program, like the pid namespace (a fresh init) and the mount namespace (a
# fresh /tmp and /proc on top of the worker's read-only view).
_PER_WORKER = ("user_namespace", "network_namespace", "uts_namespace")
_PER_PROGRAM = ("mount_namespace", "pid_namespace", "ipc_namespace")


def prepare_worker(features: dict[str, bool]) -> None:
    """Once per worker: its namespaces, and the read-only view of the filesystem its sandboxes copy."""
    uid, gid = os.getuid(), os.getgid()
    flags = sum(_NS_FLAGS[name] for name in _PER_WORKER if features.get(name))
    flags |= CLONE_NEWNS if features.get("mount_namespace") else 0
    if flags:
        _unshare(flags)
    if features.get("user_namespace"):
        _write_id_maps(uid, gid)
    if features.get("mount_namespace"):
        _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
        if features.get("allowlisted_root"):
            _allowlisted_root(allowlist())
        elif features.get("unprivileged_uid"):
            _expose_python(python_exposures())
        if features.get("readonly_root"):
            _readonly_everything()


def _clone(flags: int) -> int:
    """fork(2) into new namespaces in one step: clone(flags | SIGCHLD) with the caller's stack.

    A raw clone skips what os.fork does around it (Python's at-fork hooks, glibc's atfork handlers);
    that is safe here because the worker is single-threaded and holds the GIL through the call (PyDLL),
    and the child reseeds `random` itself. It saves the second fork a helper process would need
    (unshare(CLONE_NEWPID) only moves the caller's future children), about 2 ms of CPU per program.
    """
    if SYS_CLONE is None:
        raise OSError(0, f"clone syscall number unknown on {os.uname().machine}")
    pid = _pylibc.syscall(ctypes.c_long(SYS_CLONE), ctypes.c_ulong(flags | signal.SIGCHLD), None, None, None, None)
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid


def _lock_down(features: dict[str, bool], uid: int, config: SimpleNamespace) -> None:
    """S's part, in this order: mounts (need privilege), then the uid drop, then limits."""
    # 1a) filesystem: the worker's view is already read-only; new mounts on top are writable
    if features.get("private_proc"):
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # 1a') the first the kernel kills when memory runs out (the harness and its workers: the last);
    # inherited by every process the program starts
    try:
        _write_file("/proc/self/oom_score_adj", "1000")
    except OSError:
        pass  # no /proc in its view: the harness's own setting stays
    if features.get("private_tmp"):
        owner = f",uid={uid},gid={uid}" if features.get("unprivileged_uid") else ""
        _private_tmp(f"size={config.tmp_mb}m,nr_inodes=4096,mode=0700{owner}")
    # 1b) benchmark data (tests, references, expected outputs) out of sight: a folder under an empty
    # read-only tmpfs, a file under /dev/null; what this view does not show (under the host's /tmp,
    # a hidden home) is out of sight already
    for path, is_dir in getattr(config, "hidden", None) or ():
        if features.get("mount_namespace") and os.path.lexists(path):
            if is_dir:
                _mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       "size=4k,nr_inodes=1,mode=0555")
            else:
                _mount("/dev/null", path, None, MS_BIND)
    # 2a) identity: no groups, own gid and uid (clears every capability), then belt and braces
    if features.get("unprivileged_uid"):
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        _check(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(DUMPABLE)")  # its own /proc/self readable
    if features.get("no_capabilities"):
        _drop_capabilities()
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    if features.get("seccomp"):  # last of the kernel-facing steps: prctl(PDEATHSIG) and setrlimit stay allowed
        _install_seccomp()
    # 2b) die with the supervisor (set after the uid change, which would clear it)
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    # 2c) resource limits (lowering is always allowed)
    mb = 1024 * 1024
    for res, value in ((resource.RLIMIT_CPU, _cpu_limit(config)), (resource.RLIMIT_AS, config.memory_mb * mb),
                       (resource.RLIMIT_FSIZE, config.max_file_mb * mb), (resource.RLIMIT_NPROC, config.max_procs),
                       (resource.RLIMIT_NOFILE, config.max_files), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))  # CPU: soft = hard, so SIGKILL (a pid 1 ignores SIGXCPU)


def _cpu_limit(config: SimpleNamespace) -> int:
    return config.cpu_s if config.cpu_s is not None else int(config.timeout_s) + 2


# -----------------------------------------------------------------------------
# the sandboxed processes: S (single-process mode), or J (the judge) and C (the candidate)


def _enter(features: dict[str, bool], uid: int, config: SimpleNamespace, workdir: str, out_w: int, err_w: int,
           keep: list[int], dumpable: bool, cgroup_fds: list[int]) -> list[int]:
    """Steps 1-3 in a freshly cloned sandbox process; returns the new numbers of the `keep` fds."""
    for fd in cgroup_fds:  # 0) into the slot's cgroups (every hierarchy) before anything untrusted runs
        os.write(fd, b"0")
    os.setsid()  # own session and process group: nothing it signals by group reaches the supervisor
    _libc.prctl(PR_SET_NAME, b"mtp-sandbox", 0, 0, 0)
    _lock_down(features, uid, config)
    if not dumpable:  # the judge: not even its own uid may ptrace it or read its memory
        _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")
    os.chdir(workdir)
    # 3) fds: stdin /dev/null, stdout/stderr to the capture pipes, the kept fds at the top of the range
    moved = [os.dup2(fd, config.max_files - 1 - i) for i, fd in enumerate(keep)]
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.closerange(3, config.max_files - len(keep))
    os.closerange(config.max_files, 65536)
    os.environ.clear()  # unsetenv() each variable: the C environ is emptied too
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
    sys.argv = ["<program>"]
    if "random" in sys.modules:  # what os.fork's at-fork hook would have done (see _clone)
        sys.modules["random"].seed()
    return moved


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _exception_status(e: BaseException) -> bytes:
    if isinstance(e, SystemExit):
        return b"X" + repr(e.code).encode(errors="replace")[:200]
    msg = str(e).split("\n", 1)[0]
    return b"E" + f"{type(e).__name__}: {msg}".encode(errors="replace")[:300]


def _sandboxed(run, features: dict[str, bool], uid: int, config: SimpleNamespace, workdir: str,
               out_w: int, err_w: int, keep: list[int], dumpable: bool, cgroup_fds: list[int]) -> None:
    """Lock down, then `run(*kept_fds)`. Never returns. A setup failure is reported on keep[0]."""
    try:
        fds = _enter(features, uid, config, workdir, out_w, err_w, keep, dumpable, cgroup_fds)
    except BaseException as e:  # a setup failure is the harness's error, never the program's
        try:
            os.write(keep[0], b"S" + f"{type(e).__name__}: {e}".encode(errors="replace")[:300])
        finally:
            os._exit(111)
    try:
        run(*fds)
    finally:
        os._exit(0)


def _single(program: str, token: bytes):
    """S: the whole program (candidate and tests) in one interpreter; the verdict on fd `res`."""
    def run(res: int) -> None:
        try:
            exec(compile(program, "<program>", "exec"), {"__name__": "__main__", "__builtins__": builtins})
            status = b"P" + token  # 4) the test code ran to completion
        except BaseException as e:
            status = _exception_status(e)
        _flush_std()
        os.write(res, status)
    return run


# The judge-candidate protocol: length-prefixed `wire` messages. Judge -> candidate: ("call", name,
# args, kwargs). Candidate -> judge: once after loading ("ready",), then one reply per call:
# ("value", v) | ("raise", builtin exception names of its MRO, args or None, str) | ("exit", code) |
# ("unplain", description). The candidate's bytes are only ever decoded into plain values.
_LEN = struct.Struct("<I")


def _send_msg(fd: int, msg) -> None:
    data = wire.encode(msg)
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _recv_msg(fd: int):
    """The next message, or None at EOF (the other process is gone)."""
    head = _read_n(fd, 4)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > wire.MAX_BYTES:
        raise wire.WireError(f"message of {n} bytes exceeds {wire.MAX_BYTES}")
    body = _read_n(fd, n)
    if body is None:
        return None
    return wire.decode(body)


def _read_n(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _describe_exception(e: BaseException):
    names = [c.__name__ for c in type(e).__mro__ if c.__module__ == "builtins"]
    try:
        args = tuple(e.args)
        wire.encode(args)
    except BaseException:
        args = None
    try:
        text = str(e)[:10000]
    except BaseException:
        text = f"<{type(e).__name__}>"
    return ("raise", names, args, text)


def _candidate(program: str):
    """C: load the program (prompt + completion), then serve calls to its functions. It holds no
    nonce and no verdict channel: the worst it can do is answer wrongly."""
    def run(rep: int, req: int) -> None:
        ns = {"__name__": "__main__", "__builtins__": builtins}
        try:
            exec(compile(program, "<program>", "exec"), ns)
            first = ("ready",)
        except SystemExit as e:
            first = ("exit", repr(e.code)[:200])
        except BaseException as e:
            first = _describe_exception(e)
        _flush_std()
        _send_msg(rep, first)
        if first[0] != "ready":
            return
        while (msg := _recv_msg(req)) is not None:
            _, name, args, kwargs, refs = msg
            try:
                if name not in ns:
                    raise NameError(f"name {name!r} is not defined")
                if refs:  # arguments the tests' setup built here, passed by name (judge.py, MBPP 367)
                    args = list(args)
                    for i, ref in refs:
                        args[i] = ns[ref]
                value = ns[name](*args, **kwargs)
                try:
                    reply = ("value", value)
                    data = wire.encode(reply)
                except wire.WireError as e:
                    reply, data = ("unplain", str(e)), None
            except SystemExit as e:
                reply, data = ("exit", repr(e.code)[:200]), None
            except BaseException as e:
                reply, data = _describe_exception(e), None
            _flush_std()
            if data is None:
                _send_msg(rep, reply)
            else:
                view = memoryview(_LEN.pack(len(data)) + data)
                while view:
                    view = view[os.write(rep, view):]
    return run


class _Abort(BaseException):
    """Ends the judge's tests at once (not an Exception, so no `except Exception` in a test catches it);
    every one is also recorded, so a test that swallows it (`except BaseException`) still fails."""

    raised: list[str] = []

    def __init__(self, detail: str):
        super().__init__(detail)
        _Abort.raised.append(detail)


def _raise_from_candidate(reply) -> None:
    """Re-raise a candidate's exception in the judge as the nearest standard (builtin) type."""
    _, names, args, text = reply
    for name in names if isinstance(names, list) else []:
        cls = getattr(builtins, name, None) if isinstance(name, str) else None
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                exc = cls(*args) if isinstance(args, tuple) else cls(text)
            except Exception:
                continue  # e.g. UnicodeDecodeError needs 5 arguments: try its base class
            raise exc
    raise _Abort(f"program raised {str(names[0]) if names else 'an exception'}: {text}"[:300])


class _Ref:
    """In the judge: a value the tests' setup built in the candidate (an object of the program's class),
    known by its name there; a call that takes it as an argument passes the name."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


_COMPILED_TESTS: dict[str, object] = {}  # the judge's: tests text -> code (a task's n samples compile it once)


def _compiled_tests(tests: str):
    code = _COMPILED_TESTS.get(tests)
    if code is None:
        if len(_COMPILED_TESTS) >= 512:
            _COMPILED_TESTS.clear()
        code = _COMPILED_TESTS[tests] = compile(tests, "<tests>", "exec")
    return code


def _judge_one(tests: str, names: list[str], modules: list[str], refs: list[str], token: bytes, req: int,
               rep: int) -> bytes:
    """Run one program's tests, each call to a program function a request to its candidate process C
    (on `req`, answered on `rep`). Returns the verdict: b"P" + token only if the tests ran to completion."""
    def call(name: str, args: tuple, kwargs: dict):
        refs = [(i, a.name) for i, a in enumerate(args) if type(a) is _Ref]
        if refs:
            args = tuple(None if type(a) is _Ref else a for a in args)
        try:
            _send_msg(req, ("call", name, args, kwargs, refs))
        except wire.WireError as e:
            raise _Abort(f"the tests passed {name}() a value that is not plain data: {e}") from None
        except OSError:
            raise _Abort(f"the program's process exited before {name}() was called") from None
        try:
            reply = _recv_msg(rep)
        except wire.WireError as e:
            raise _Abort(f"{name}() answered with a malformed message: {e}") from None
        return _answer(name, reply)

    def proxy_for(name: str):
        def proxy(*args, **kwargs):
            return call(name, args, kwargs)
        proxy.__name__ = proxy.__qualname__ = name
        return proxy

    _Abort.raised.clear()
    if "random" in sys.modules:  # as a fresh process would: no test sees another's random state
        sys.modules["random"].seed()
    try:
        ns = {"__name__": "__main__", "__builtins__": builtins}
        for m in modules:
            ns[m] = __import__(m)
        for name in names:
            ns[name] = proxy_for(name)
        for name in refs:
            ns[name] = _Ref(name)
        _answer(None, _recv_msg(rep))  # the program loaded (or why not)
        exec(_compiled_tests(tests), ns)
        if _Abort.raised:  # swallowed by the tests: still a failure
            raise _Abort(_Abort.raised[0])
        status = b"P" + token  # 4) the tests ran to completion, in this process
    except _Abort as e:
        status = b"A" + str(e).encode(errors="replace")[:300]
    except BaseException as e:
        status = _exception_status(e)
    _flush_std()
    return status


def _judge_server():
    """J: one per worker, sandboxed like a program (own namespaces, its own uid, not dumpable), serving
    the worker's programs one after another. Each job arrives on the socket with the two pipe ends to
    that program's candidate (SCM_RIGHTS); the verdict goes back on the socket, prefixed by the nonce."""
    def run(sock_fd: int) -> None:
        import socket

        sock = socket.socket(fileno=sock_fd)
        while True:
            head, fds, _, _ = socket.recv_fds(sock, 4, 2)
            if len(head) < 4 or len(fds) != 2:
                return  # the worker is gone (or out of protocol)
            while len(head) < 4:
                head += sock.recv(4 - len(head))
            def frame(n: int) -> bytes | None:
                body = bytearray()
                while len(body) < n:
                    chunk = sock.recv(min(n - len(body), 1 << 20))
                    if not chunk:
                        return None
                    body += chunk
                return bytes(body)

            body = frame(_LEN.unpack(head)[0])
            size = frame(4) if body is not None else None
            raw = frame(_LEN.unpack(size)[0]) if size is not None else None
            if raw is None:
                return
            names, modules, refs, token = wire.decode(body)  # from the trusted worker
            tests = raw.decode("utf-8")
            try:
                status = _judge_one(tests, names, modules, refs, token, fds[0], fds[1])
            finally:
                for fd in fds:
                    os.close(fd)
            sock.sendall(_LEN.pack(len(token) + len(status)) + token + status)
    return run


def _answer(name: str | None, reply):
    """A candidate reply as the judge's result: the value, or the exception it stands for."""
    what = "loading the program" if name is None else f"{name}()"
    if reply is None:
        raise _Abort(f"the program's process exited while {what} ran")
    kind = reply[0] if isinstance(reply, tuple) and reply else None
    if kind == "ready" and name is None:
        return None
    if kind == "value" and len(reply) == 2 and name is not None:
        return reply[1]
    if kind == "raise" and len(reply) == 4:
        _raise_from_candidate(reply)
    if kind == "exit" and len(reply) == 2:
        raise _Abort(f"program called exit({reply[1]}) while {what} ran")
    if kind == "unplain" and len(reply) == 2:
        raise _Abort(f"{name}() returned a value that is not plain data: {reply[1]}")
    raise _Abort(f"malformed reply from the program's process while {what} ran")


# -----------------------------------------------------------------------------
# the supervisor (in the worker)

_SIGNAL_DETAIL = {signal.SIGXCPU: "CPU time limit exceeded", signal.SIGXFSZ: "file size limit exceeded",
                  signal.SIGKILL: "killed by SIGKILL", signal.SIGSEGV: "segmentation fault (SIGSEGV)"}


def _spawn(flags: int, run, features, uid, config, workdir, out_w, err_w, keep, dumpable, cgroup_fds) -> int:
    pid = _clone(flags)
    if pid == 0:
        _sandboxed(run, features, uid, config, workdir, out_w, err_w, keep, dumpable, cgroup_fds)
    return pid


JUDGE_GRACE_S = 1.0  # after a timeout, how long the judge may take to notice its candidate is gone


class _JudgeProc:
    """The worker's judge server J: started on the first split job, restarted if it dies or hangs."""

    def __init__(self):
        self.pid: int | None = None

    def ensure(self, features: dict[str, bool], config: SimpleNamespace, uid: int, cgroup_fds: list[int]) -> None:
        if self.pid is not None:
            return
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        null = os.open("/dev/null", os.O_WRONLY)  # its own prints are not kept (the candidate's are)
        workdir = "/tmp"
        if not features.get("private_tmp"):
            import tempfile
            workdir = tempfile.mkdtemp(prefix="mtp-judge-")
            if features.get("unprivileged_uid"):
                os.chown(workdir, uid, uid)
        # CPU time adds up over the programs it judges: the wall clock and the cgroup bound it instead
        lasting = SimpleNamespace(**{**vars(config), "cpu_s": resource.RLIM_INFINITY})
        flags = sum(_NS_FLAGS[name] for name in _PER_PROGRAM if features.get(name))
        try:
            self.pid = _spawn(flags, _judge_server(), features, uid, lasting, workdir, null, null,
                              [theirs.fileno()], False, cgroup_fds)
        finally:
            theirs.close()
            os.close(null)
        self.sock, self.pidfd, self.buf, self.uid = ours, os.pidfd_open(self.pid), bytearray(), uid
        self.sock.setblocking(False)

    def send(self, job: tuple, tests: bytearray, fds: list[int]) -> None:
        """job = (names, modules, refs, token) as plain data, then the tests as raw UTF-8 (never decoded here)."""
        import socket

        body = wire.encode(job)
        self.sock.setblocking(True)
        try:
            socket.send_fds(self.sock, [_LEN.pack(len(body))], fds)
            self.sock.sendall(body)
            self.sock.sendall(_LEN.pack(len(tests)))
            self.sock.sendall(tests)
        finally:
            self.sock.setblocking(False)

    def read_verdict(self, token: bytes) -> tuple[bool, bytes | None]:
        """(still alive, this token's verdict if complete). Verdicts of earlier tokens are dropped."""
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return True, None
        except OSError:
            chunk = b""
        if not chunk:
            return False, None
        self.buf += chunk
        while len(self.buf) >= 4:
            (n,) = _LEN.unpack(self.buf[:4])
            if len(self.buf) < 4 + n:
                break
            frame, self.buf = bytes(self.buf[4:4 + n]), self.buf[4 + n:]
            if frame[:len(token)] == token:
                return True, frame[len(token):]
        return True, None

    def kill(self, features: dict[str, bool]) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        if not features.get("pid_namespace"):
            _kill_leftovers(self.pid, self.uid, features)
        self.sock.close()
        os.close(self.pidfd)
        self.pid = None


def _run_one(job: dict, config: SimpleNamespace, features: dict[str, bool], uid: int, judge_uid: int,
             cgroup: SimpleNamespace | None = None, judge: _JudgeProc | None = None,
             read_tests=None) -> dict:
    """Run one job in a fresh sandbox under the deadline and decide the verdict (an ExecResult dict).

    job: {"program": source}, run by S in one process (its verdict on a pipe only S holds); or
    {"candidate", "names", "modules"}: the candidate C in a fresh sandbox, the tests in the worker's
    judge J, whose verdict (after the nonce) is the only one that counts. The tests are still in the
    pool's pipe when C is cloned: `read_tests()` reads them only afterwards, as raw bytes that go
    straight to J and are zeroed here, so neither C nor any later candidate cloned from this worker
    has them in its memory (a program that searches its own memory for the asserts finds nothing)."""
    workdir = "/tmp"
    if not features.get("private_tmp"):  # a fresh host directory instead, removed afterwards
        import tempfile
        workdir = tempfile.mkdtemp(prefix="mtp-sandbox-")
        if features.get("unprivileged_uid"):
            os.chown(workdir, uid, uid)
    split = "program" not in job
    pipes = [os.pipe() for _ in range(4 if split else 3)]  # stdout, stderr, then verdict | requests, replies
    flags = sum(_NS_FLAGS[name] for name in _PER_PROGRAM if features.get(name))
    (out_r, out_w), (err_r, err_w) = pipes[:2]
    cgroup_fds = cgroup.fds if cgroup is not None else []
    oom_before = _oom_kills(cgroup)
    t0 = time.monotonic()
    try:
        if split:  # the candidate first: the nonce does not exist yet, so no copy of it is in its memory
            (req_r, req_w), (rep_r, rep_w) = pipes[2:]
            pid = _spawn(flags, _candidate(job["candidate"]), features, uid, config, workdir,
                         out_w, err_w, [rep_w, req_r], True, cgroup_fds)
        else:
            token = os.urandom(16).hex().encode()
            pid = _spawn(flags, _single(job["program"], token), features, uid, config, workdir,
                         out_w, err_w, [pipes[2][1]], True, cgroup_fds)
    except OSError:
        for fd in (fd for pair in pipes for fd in pair):
            os.close(fd)
        raise
    verdict_fd = None
    if split:
        token = os.urandom(16).hex().encode()  # the run's nonce
        tests = read_tests() if read_tests is not None else bytearray(job["tests"].encode())
        try:
            for attempt in (0, 1):  # a judge that died since the last job is replaced once
                try:
                    judge.ensure(features, config, judge_uid, cgroup_fds)
                    judge.send((job["names"], job["modules"], job.get("refs", []), token), tests, [req_w, rep_r])
                    break
                except OSError:
                    judge.kill(features)
                    if attempt:
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                        for fd in (fd for pair in pipes for fd in pair):
                            os.close(fd)
                        raise
        finally:
            tests[:] = bytes(len(tests))  # in place: no copy of the tests stays in this worker's heap
        for fd in (out_w, err_w, req_r, req_w, rep_r, rep_w):
            os.close(fd)
    else:
        verdict_fd = pipes[2][0]
        for fd in (out_w, err_w, pipes[2][1]):
            os.close(fd)
    readers = {r: bytearray() for r in (out_r, err_r) + ((verdict_fd,) if verdict_fd is not None else ())}
    for r in readers:
        os.set_blocking(r, False)
    pidfd = os.pidfd_open(pid)

    # 5) wait for the verdict with the deadline, draining the pipes so no process blocks on a full one
    def drain(fd: int) -> bool:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        buf = readers[fd]
        cap = config.max_output_bytes if fd != verdict_fd else 4096
        if len(buf) < cap:
            buf += chunk[: cap - len(buf)]
        return True

    deadline = t0 + config.timeout_s
    open_fds, timed_out, running = set(readers), False, True
    judged, judge_alive = None, True  # J's verdict for this token, once it came
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        watch = [*open_fds] + ([pidfd] if running else []) + ([judge.sock, judge.pidfd] if split else [])
        ready, _, _ = select.select(watch, [], [], left)
        for fd in ready:
            if fd == pidfd:
                running = False
            elif split and fd == judge.pidfd:
                judge_alive = False
            elif split and fd == judge.sock:
                alive, got = judge.read_verdict(token)
                judge_alive &= alive
                judged = got if got is not None else judged
            elif not drain(fd):
                open_fds.discard(fd)
        if (split and (judged is not None or not judge_alive)) or (not split and not running):
            break
    try:
        os.kill(pid, signal.SIGKILL)  # pid 1 of its namespace: the kernel then kills all the rest
    except ProcessLookupError:
        pass
    _, wstatus, usage = os.wait4(pid, 0)
    duration = time.monotonic() - t0
    if not features.get("pid_namespace"):  # no namespace to die with: kill what we can reach
        _kill_leftovers(pid, uid, features)
    if split and judged is None and judge_alive:  # timed out: J sees its candidate gone and answers
        grace = time.monotonic() + JUDGE_GRACE_S
        while judged is None and judge_alive and (left := grace - time.monotonic()) > 0:
            if select.select([judge.sock], [], [], left)[0]:
                judge_alive, judged = judge.read_verdict(token)
        if judged is None:
            judge_alive = False  # hung in the tests themselves: a fresh one for the next job
    if split and not judge_alive:
        judge.kill(features)
    for fd in list(open_fds):  # whatever is still buffered (EOF once every writer is dead)
        while fd in open_fds and drain(fd):
            try:
                if not select.select([fd], [], [], 0)[0]:
                    break
            except OSError:
                break
    for r in readers:
        os.close(r)
    os.close(pidfd)
    if workdir != "/tmp":
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)

    out, err = bytes(readers[out_r]), bytes(readers[err_r])
    result = dict(duration_s=round(duration, 4), stdout=out.decode(errors="replace"),
                  stderr=err.decode(errors="replace"), isolation="judge" if split else "single-process")
    oom = _oom_kills(cgroup) > oom_before
    if not split:
        verdict = bytes(readers[verdict_fd])
    elif judged is None:
        verdict = b"" if timed_out or oom else b"Sthe judge process died"
    elif judged.startswith(b"P") and judged != b"P" + token:
        verdict = b"Sthe judge answered out of protocol"
    elif os.WIFEXITED(wstatus) and os.WEXITSTATUS(wstatus) == 111 and not judged.startswith(b"P"):
        verdict = b"Sthe candidate process could not be set up"  # its setup error went to the reply pipe
    elif judged.startswith(b"A") and b"process exited" in judged and os.WIFSIGNALED(wstatus) and not timed_out:
        verdict = b""  # the candidate died under a call: say how (a signal, a limit)
    else:
        verdict = judged
    cpu_limit_hit = usage.ru_utime + usage.ru_stime >= 0.8 * _cpu_limit(config)  # kernel CPU accounting is coarse
    decided = _verdict(verdict, token, timed_out, wstatus, cpu_limit_hit, config)
    if not decided["passed"] and decided["status"] in ("killed", "failed", "error") and oom:
        decided = dict(passed=False, status="killed",
                       detail=f"memory limit of {config.memory_mb} MiB exceeded (cgroup, OOM kill)")
    return {**result, **decided}


def _oom_kills(cgroup: SimpleNamespace | None) -> int:
    """OOM kills the kernel has counted in the slot's memory cgroup (v2 memory.events, v1 memory.oom_control)."""
    total = 0
    for fd in cgroup.oom_fds if cgroup is not None else []:
        try:
            for line in os.pread(fd, 65536, 0).decode().splitlines():  # a fresh read from offset 0
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    total += int(value)
        except (OSError, ValueError):
            pass
    return total


def _verdict(verdict: bytes, token: bytes, timed_out: bool, wstatus: int, cpu_limit_hit: bool,
             config: SimpleNamespace) -> dict:
    """The harness's decision. A pass needs exactly the nonce from S or J: nothing the program prints counts."""
    if verdict == b"P" + token:
        return dict(passed=True, status="passed", detail="")
    if timed_out:
        return dict(passed=False, status="timeout", detail=f"wall-clock limit of {config.timeout_s:g} s exceeded")
    kind, text = verdict[:1], verdict[1:].decode(errors="replace")
    if kind == b"S":
        return dict(passed=False, status="error", detail=f"sandbox setup failed: {text}")
    if kind == b"E":
        if text.startswith("MemoryError"):
            return dict(passed=False, status="killed", detail=f"memory limit of {config.memory_mb} MiB exceeded (MemoryError)")
        return dict(passed=False, status="failed", detail=text)
    if kind == b"A":
        return dict(passed=False, status="failed", detail=text)
    if kind == b"X":
        return dict(passed=False, status="failed", detail=f"program called exit({text}) before its tests finished")
    if os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        if cpu_limit_hit and sig in (signal.SIGKILL, signal.SIGXCPU):  # pid 1 ignores SIGXCPU; SIGKILL follows
            return dict(passed=False, status="killed", detail="CPU time limit exceeded")
        name = _SIGNAL_DETAIL.get(sig, f"killed by signal {signal.Signals(sig).name if sig in signal.valid_signals() else sig}")
        return dict(passed=False, status="killed", detail=name)
    if verdict:
        return dict(passed=False, status="failed", detail="verdict channel tampered with")
    code = os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else -1
    return dict(passed=False, status="failed", detail=f"program exited with status {code} before its tests finished")


def _kill_leftovers(pid: int, uid: int, features: dict[str, bool]) -> None:
    """Without a pid namespace: kill S's process group, and every process of the sandbox uid."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if features.get("unprivileged_uid"):
        child = os.fork()
        if child == 0:  # kill(-1) as the sandbox uid reaches exactly that uid's processes
            try:
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(child, 0)


# -----------------------------------------------------------------------------
# the worker: one per slot, one sandbox at a time


def probe() -> dict[str, bool]:
    """Try each isolation step once, in a throwaway process tree. Returns feature -> in force."""
    root = os.geteuid() == 0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        found = {name: False for name in FEATURES}
        try:
            if not root:
                uid, gid = os.getuid(), os.getgid()
                _unshare(CLONE_NEWUSER)
                _write_id_maps(uid, gid)
                found["user_namespace"] = True
            for name in ("mount_namespace", "network_namespace", "pid_namespace", "ipc_namespace", "uts_namespace"):
                try:
                    _unshare(_NS_FLAGS[name])
                    found[name] = True
                except OSError:
                    pass
            if found["mount_namespace"]:
                _mount(None, "/", None, MS_REC | MS_PRIVATE)
            child = os.fork()  # lands in the new pid namespace, if any
            if child == 0:
                exposed = True
                if found["mount_namespace"] and found["pid_namespace"]:
                    try:  # verify: "/" holds only the allowlist's top-level names, and Python is there
                        paths = allowlist()
                        _allowlisted_root(paths)
                        expected = {p.split("/")[1] for p in paths} | {"dev", "proc", "tmp"}
                        found["allowlisted_root"] = set(os.listdir("/")) <= expected and os.path.exists(sys.executable)
                    except OSError:
                        pass
                if found["mount_namespace"] and root and not found["allowlisted_root"]:
                    try:
                        _expose_python(python_exposures())
                    except OSError:
                        exposed = False  # another uid could not import the standard library
                steps = {"readonly_root": _readonly_everything,
                         "private_proc": lambda: _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC),
                         "private_tmp": lambda: _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0700")}
                for name, step in steps.items():
                    if not found["mount_namespace"] or (name == "private_proc" and not found["pid_namespace"]):
                        continue
                    try:
                        step()
                        found[name] = True
                    except OSError:
                        pass
                if found["readonly_root"]:  # verify: a write outside /tmp must now fail
                    try:
                        os.open("/.mtp-sandbox-probe", os.O_WRONLY | os.O_CREAT, 0o600)
                        found["readonly_root"] = False
                        os.unlink("/.mtp-sandbox-probe")
                    except OSError:
                        pass
                if root:
                    try:
                        os.setgroups([])
                        os.setresgid(2**31 - 2, 2**31 - 2, 2**31 - 2)
                        os.setresuid(2**31 - 2, 2**31 - 2, 2**31 - 2)
                        found["unprivileged_uid"] = os.getuid() != 0 and exposed
                    except OSError:
                        pass
                try:
                    _drop_capabilities()
                    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl")
                    found["no_capabilities"] = True
                except OSError:
                    pass
                if found["no_capabilities"]:  # verify: a denied call must now fail with EPERM
                    try:
                        _install_seccomp()
                        nr = _DENIED["keyctl"][0 if os.uname().machine == "x86_64" else 1]
                        found["seccomp"] = (_libc.syscall(ctypes.c_long(nr), 0, 0, 0, 0, 0) == -1
                                            and ctypes.get_errno() == 1)
                    except OSError:
                        pass
                found["readonly_root"] &= found["private_tmp"]  # else there would be no writable place
                found["allowlisted_root"] &= found["private_tmp"] and found["private_proc"]
                os.write(w, json.dumps(found).encode())
                os._exit(0)
            os.waitpid(child, 0)
        except BaseException:
            os.write(w, json.dumps(found).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data) if data else {name: False for name in FEATURES}


def _read_exact_into(fh, buf: bytearray) -> bool:
    """Fill buf from the unbuffered protocol stream (no read-ahead: what is not asked for stays in the pipe)."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = fh.readinto(view[got:])
        if not n:
            return False
        got += n
    return True


def _recv(fh) -> dict | None:
    head = bytearray(4)
    if not _read_exact_into(fh, head):
        return None
    body = bytearray(struct.unpack("<I", head)[0])
    if not _read_exact_into(fh, body):
        return None
    return json.loads(body)


def _send(fh, obj: dict) -> None:
    data = json.dumps(obj).encode()
    fh.write(struct.pack("<I", len(data)) + data)
    fh.flush()


# Standard modules that HumanEval/MBPP programs import (typing alone costs milliseconds): imported once
# in the worker, so each forked sandbox finds them in sys.modules instead of importing them again.
# Each sandbox gets its own copy-on-write copy, so nothing a program does to them reaches the next one
# (`random` reseeds itself in every forked child).
PRELOAD = ("typing", "math", "re", "collections", "itertools", "functools", "heapq", "string", "hashlib",
           "random", "bisect", "copy", "operator", "fractions", "decimal", "statistics")


def _warm_up() -> None:
    """Create, once in the worker, what each forked child would otherwise rebuild and throw away:
    ctypes function pointers and buffer types, the preloaded modules. Then freeze the heap so the
    children's garbage collections never touch (and copy) the worker's objects."""
    import gc
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)

    for name in ("unshare", "mount", "prctl", "syscall"):
        getattr(_libc, name)
    _pylibc.syscall  # noqa: B018 (resolve the symbol now, before the namespaces are entered)
    for size in (8, 24, 32):
        ctypes.create_string_buffer(size)
    signal.valid_signals()
    gc.collect()
    gc.freeze()


def worker_main(slot: int, features: dict[str, bool] | None, cgroup: dict | None = None) -> None:
    """Serve jobs from the pool over stdin/stdout (length-prefixed JSON) until stdin closes.

    `features` None: a probe worker (answers "probe" only); else the isolation in force, set up now.
    """
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)  # unbuffered: a job's tests are read only when asked for
    proto_out = os.fdopen(os.dup(1), "wb")
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # a stray print can never corrupt the protocol
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool shuts us down, not a Ctrl-C
    _libc.prctl(PR_SET_NAME, b"mtp-sandbox-wkr", 0, 0, 0)  # names in ps/top: worker, and each sandbox
    broken = None  # why this worker cannot run programs, if it cannot: every request then says so
    groups = None
    if features is not None:
        try:
            if cgroup is not None:  # opened now: the allowlisted root has no /sys
                groups = SimpleNamespace(fds=[os.open(p, os.O_WRONLY) for p in cgroup["procs"]],
                                         oom_fds=[os.open(p, os.O_RDONLY) for p in cgroup["oom_files"]])
            prepare_worker(features)
        except OSError as e:
            broken = f"sandbox worker setup failed: {e}"
    _warm_up()
    judge = _JudgeProc()
    while (msg := _recv(proto_in)) is not None:
        if msg["op"] == "probe" and features is None:
            _send(proto_out, probe())
        elif msg["op"] == "run" and features is not None:
            config = SimpleNamespace(**msg["config"])  # SandboxConfig's fields
            tests = bytearray(msg.get("tests_bytes", 0))  # raw tests follow the message (split jobs)
            pending = ["tests_bytes" in msg]

            def read_tests(tests=tests, pending=pending) -> bytearray:
                if pending[0]:
                    pending[0] = False
                    if not _read_exact_into(proto_in, tests):
                        raise SystemExit("sandbox worker: the pool closed the pipe mid-job")
                return tests

            try:
                if broken is not None:
                    reply = dict(passed=False, status="error", detail=broken, duration_s=0.0)
                else:
                    reply = _run_one(msg["job"], config, features, msg["uid"], msg["judge_uid"], groups, judge,
                                     read_tests if pending[0] else None)
            except OSError as e:  # e.g. clone() refused (out of pids or memory): this program's error
                reply = dict(passed=False, status="error", detail=f"could not start the sandbox: {e}", duration_s=0.0)
            finally:
                if pending[0]:  # not run: consume the tests anyway, so the next message starts in step
                    read_tests()
                    tests[:] = bytes(len(tests))  # (_run_one zeroes the ones it read)
            _send(proto_out, reply)
        else:
            raise SystemExit(f"sandbox worker: unexpected request {msg.get('op')!r}")


if __name__ == "__main__":
    if len(sys.argv) in (3, 4, 5) and sys.argv[1] == "--worker":
        worker_main(int(sys.argv[2]), json.loads(sys.argv[3]) if len(sys.argv) >= 4 else None,
                    json.loads(sys.argv[4]) if len(sys.argv) == 5 else None)
    else:
        print("usage: sandbox.py --worker SLOT [FEATURES_JSON [CGROUP_JSON]] (started by mtp_bench.execution)",
              file=sys.stderr)
        raise SystemExit(2)
