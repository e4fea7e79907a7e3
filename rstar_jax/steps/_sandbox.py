"""Kernel sandboxing for executor workers: Landlock and a seccomp filter, via ctypes.

Standard library only: this module runs inside the worker process before any program does.
Both mechanisms are applied to the calling process and cannot be undone by it.

* Landlock (Linux >= 5.13): file reads only beneath an allowlist of directories (the Python
  installation, system libraries, loader and time zone files, the worker's own /proc entry),
  file writes only beneath the scratch directory (and to /dev/null), no execve of anything;
  from ABI 4 no TCP bind/connect; from ABI 6 no signals to processes outside the sandbox and no
  abstract unix sockets.
* seccomp (x86_64, aarch64): no new processes or threads, no exec, no sockets; no signals to
  another process (kill, tkill, tgkill, sigqueue, pidfd, fcntl F_SETOWN/F_SETSIG); no raising
  resource limits; no scheduling or priority changes to any process; no memfd (memory that
  RLIMIT_AS would not count); no namespaces, mounts, hostname, ptrace, cross-process memory
  access, kernel modules or kexec.  Denied calls fail with EPERM, so a program sees an
  ordinary ``PermissionError`` / ``RuntimeError`` rather than a killed worker.

Each function returns what it managed to apply; callers report it (``CodeExecutor.sandbox``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import struct

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def die_with_parent(signum: int) -> None:
    """Have the kernel send `signum` to this process when the thread that spawned it exits."""
    _libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def no_new_privs() -> bool:
    return _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0


# ---------------------------------------------------------------------------------- Landlock
_SYS_LANDLOCK_CREATE_RULESET = 444  # same numbers on x86_64 and aarch64
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_MAKE_AND_REMOVE = sum(1 << b for b in range(4, 13))  # remove dir/file, make char..sym
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1

_READ = _FS_READ_FILE | _FS_READ_DIR


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is unavailable or disabled."""
    abi = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    return max(int(abi), 0)


def apply_landlock(
    read_dirs: list[str], write_dir: str, write_files: tuple[str, ...] = ("/dev/null",)
) -> dict[str, object]:
    """Restrict this process's file system access (and, by ABI, TCP and signals) for good."""
    abi = landlock_abi()
    if abi == 0:
        return {"landlock": 0}
    write = _FS_WRITE_FILE | _FS_MAKE_AND_REMOVE
    write |= _FS_REFER if abi >= 2 else 0
    write |= _FS_TRUNCATE if abi >= 3 else 0
    handled_fs = _FS_EXECUTE | _READ | write
    attr = struct.pack("<Q", handled_fs)
    if abi >= 4:
        attr += struct.pack("<Q", _NET_BIND_TCP | _NET_CONNECT_TCP)
    if abi >= 6:
        attr += struct.pack("<Q", _SCOPE_SIGNAL | _SCOPE_ABSTRACT_UNIX_SOCKET)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, buf, len(attr), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        rules = [(d, _READ) for d in read_dirs] + [(write_dir, _READ | write)]
        truncate = _FS_TRUNCATE if abi >= 3 else 0
        rules += [(f, _FS_READ_FILE | _FS_WRITE_FILE | truncate) for f in write_files]
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # an allowlisted path that does not exist on this machine
            try:
                if not os.path.isdir(path):  # a rule on a file takes only file rights
                    access &= _FS_READ_FILE | _FS_WRITE_FILE | _FS_TRUNCATE
                rule = ctypes.create_string_buffer(struct.pack("<Qi", access, fd), 12)
                if _libc.syscall(
                    _SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, rule, 0
                ):
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)
        if not no_new_privs() or _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return {"landlock": abi}


# ----------------------------------------------------------------------------------- seccomp
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_SYSCALL_BIT = 0x40000000

# System calls by number on (x86_64, aarch64); "-" where the architecture lacks the call.
_SYSCALLS = """
fork 57 -  vfork 58 -  clone 56 220  clone3 435 435  execve 59 221  execveat 322 281
socket 41 198  socketpair 53 199  connect 42 203  bind 49 200  listen 50 201  accept 43 202
accept4 288 242  rt_sigqueueinfo 129 138  rt_tgsigqueueinfo 297 240  pidfd_open 434 434
pidfd_send_signal 424 424  pidfd_getfd 438 438  ptrace 101 117  process_vm_readv 310 270
process_vm_writev 311 271  setrlimit 160 164  unshare 272 97  setns 308 268  mount 165 40
umount2 166 39  chroot 161 51  pivot_root 155 41  setpgid 109 154  setsid 112 157
personality 135 92  io_uring_setup 425 425  bpf 321 280  perf_event_open 298 241
userfaultfd 323 282  keyctl 250 219  add_key 248 217  request_key 249 218  kexec_load 246 104
reboot 169 142  init_module 175 105  finit_module 313 273  delete_module 176 106
mknod 133 -  mknodat 259 33  memfd_create 319 279  setpriority 141 140
sched_setparam 142 118  sched_setscheduler 144 119  sched_setaffinity 203 122
sched_setattr 314 274  ioprio_set 251 30  sethostname 170 161  setdomainname 171 162
kexec_file_load 320 294  open_tree 428 428  move_mount 429 429  fsopen 430 430
fsconfig 431 431  fsmount 432 432  fspick 433 433  mount_setattr 442 442
kill 62 129  tkill 200 130  tgkill 234 131  prlimit64 302 261  fcntl 72 25
"""
_ARCH_COLUMN = {"x86_64": 1, "aarch64": 2}
# Allowed only when the first argument is this process (signalling itself is like exiting).
_SELF_ONLY = ("kill", "tkill", "tgkill")
# Allowed only as a read (new_limit == NULL): limits can be inspected, never raised.
_READ_ONLY = "prlimit64"
# fcntl is allowed except the commands that direct signals at another process.
_FCNTL = "fcntl"
_F_SETOWN, _F_SETSIG, _F_SETOWN_EX = 8, 10, 15


def syscall_numbers(machine: str) -> dict[str, int]:
    words = _SYSCALLS.split()
    rows = [words[i : i + 3] for i in range(0, len(words), 3)]
    column = _ARCH_COLUMN[machine]
    return {row[0]: int(row[column]) for row in rows if row[column] != "-"}


_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000
_OFF_NR, _OFF_ARCH = 0, 4


def _arg_lo(i: int) -> int:
    return 16 + 8 * i  # little-endian low word of args[i] in struct seccomp_data


def _arg_hi(i: int) -> int:
    return 20 + 8 * i


def seccomp_filter(machine: str, pid: int) -> list[tuple[int, int, int, int]]:
    """The BPF program as (code, jt, jf, k) instructions (jumps relative and forward)."""
    numbers = syscall_numbers(machine)
    deny = {n for name, n in numbers.items() if name not in (*_SELF_ONLY, _READ_ONLY, _FCNTL)}
    # Written with labels; a jump field holds a label ("allow", "deny", ...) or 0.
    prog: list[tuple] = [
        (_LD_W_ABS, 0, 0, _OFF_ARCH),
        (_JEQ_K, 1, 0, _AUDIT_ARCH[machine]),
        (_RET_K, 0, 0, _RET_KILL_PROCESS),
        (_LD_W_ABS, 0, 0, _OFF_NR),
    ]
    if machine == "x86_64":
        prog.append((_JGE_K, "deny", 0, _X32_SYSCALL_BIT))
    prog += [(_JEQ_K, "deny", 0, nr) for nr in sorted(deny)]
    prog += [(_JEQ_K, "self", 0, nr) for nr in sorted(numbers[n] for n in _SELF_ONLY)]
    prog += [
        (_JEQ_K, "prlimit", 0, numbers[_READ_ONLY]),
        (_JEQ_K, "fcntl", 0, numbers[_FCNTL]),
        ("allow",),
        (_RET_K, 0, 0, _RET_ALLOW),
        ("self",),
        (_LD_W_ABS, 0, 0, _arg_lo(0)),
        (_JEQ_K, 0, "deny", pid),
        (_RET_K, 0, 0, _RET_ALLOW),
        ("prlimit",),
        (_LD_W_ABS, 0, 0, _arg_lo(2)),
        (_JEQ_K, 0, "deny", 0),
        (_LD_W_ABS, 0, 0, _arg_hi(2)),
        (_JEQ_K, 0, "deny", 0),
        (_RET_K, 0, 0, _RET_ALLOW),
        ("fcntl",),
        (_LD_W_ABS, 0, 0, _arg_lo(1)),
        (_JEQ_K, "deny", 0, _F_SETOWN),
        (_JEQ_K, "deny", 0, _F_SETSIG),
        (_JEQ_K, "deny", 0, _F_SETOWN_EX),
        (_RET_K, 0, 0, _RET_ALLOW),
        ("deny",),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
    ]
    labels, out = {}, []
    for ins in prog:
        if len(ins) == 1:
            labels[ins[0]] = len(out)
        else:
            out.append(ins)

    def offset(i: int, target) -> int:
        if target == 0:
            return 0
        if isinstance(target, int):
            return target
        jump = labels[target] - i - 1
        if not 0 <= jump < 256:
            raise ValueError(f"seccomp filter jump out of range: {jump}")
        return jump

    return [(c, offset(i, jt), offset(i, jf), k) for i, (c, jt, jf, k) in enumerate(out)]


def apply_seccomp() -> dict[str, object]:
    """Install the filter on this process (all threads created later inherit it)."""
    machine = platform.machine()
    if machine not in _AUDIT_ARCH:
        return {"seccomp": False}
    prog = seccomp_filter(machine, os.getpid())
    insns = b"".join(struct.pack("<HBBI", *ins) for ins in prog)
    filt = ctypes.create_string_buffer(insns, len(insns))

    class _SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _SockFprog(len(prog), ctypes.addressof(filt))
    if not no_new_privs() or _libc.prctl(
        _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0
    ):
        raise OSError(ctypes.get_errno(), "installing the seccomp filter failed")
    return {"seccomp": True}
