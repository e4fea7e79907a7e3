"""A persistent pool of sandboxed worker processes that run the programs of candidate steps.

    with CodeExecutor(num_workers=2, timeout_s=5.0, memory_mb=1024) as ex:
        results = ex.run(["x = 3\\nprint(x * 7)"])   # [ExecResult(ok=True, stdout='21\\n', error='')]

Workers are started with ``subprocess`` (fork+exec of a fresh interpreter, never a fork of this
process, which may hold JAX's threads), import math, numpy, sympy and scipy once, then run one
program at a time, each in a fresh namespace with ``random`` and ``numpy.random`` seeded to 0.
Stdout is captured in memory up to `max_output_chars` (1024) characters; the rest is counted and
dropped, so a print loop cannot exhaust memory.  Stderr is discarded.  Results come back in
input order as `ExecResult(ok, stdout, error)`, `error` a one-line ``ExceptionType: message``.
A program that calls ``sys.exit(0)`` (or ``sys.exit()``) succeeded; any other exit code failed.

Limits, and who enforces them:

* wall clock: the parent kills a worker whose program overruns `timeout_s` and replaces it
  with a warm spare (started ahead of time), so the next program waits for no imports;
* memory: ``RLIMIT_AS`` = what the worker had mapped after its imports + `memory_mb`;
  allocations beyond it raise ``MemoryError`` in the program; a worker whose resident memory
  grew by more than `max_rss_growth_mb` is retired after its program;
* processes, threads, exec, sockets, signals to other processes, raising limits, changing
  any process's priority or scheduling, memfd, namespaces and mounts, ptrace: a seccomp filter
  (x86_64, aarch64) makes them fail with EPERM;
* files: Landlock lets a worker read only the Python installation, system libraries and the
  loader's and time zone files in /etc, and write only beneath its own scratch directory (its
  cwd, ``HOME`` and ``TMPDIR``) and to /dev/null; the scratch directory is emptied after every
  program; ``RLIMIT_FSIZE`` caps the size of each file (not their total);
* the next program: builtins and the namespaces of preloaded modules, ``sys`` hooks and paths,
  signal handlers and timers, the environment, cwd, umask, open descriptors, warning filters,
  gc callbacks and debug flags, faulthandler, numpy's error and print settings, the decimal
  context, mpmath's precision and sympy's global parameters are put back after every program;
  programs cannot add audit hooks; a worker is retired after `max_programs_per_worker`
  programs, or when putting things back fails.

Linux only.  What the sandbox does not stop, honestly:

* Reuse is what makes the pool fast (a fork per program costs 3-9 ms here, against about
  0.3 ms for a program in a warm worker), and it means a program shares its interpreter with
  the worker's own code.  A determined program (ctypes, frame introspection, the worker's
  globals) can take the worker over, and then forge or change the results of the programs
  that worker runs after it, until the worker is retired (`max_programs_per_worker`), killed
  by a timeout or crashes.  It cannot lift the kernel's limits, reach the parent or the other
  workers, or write outside its scratch directory.  Code written by a policy model does not
  do this by accident; lower `max_programs_per_worker` to bound the damage where programs
  are adversarial.
* State the list above does not cover (say, a class attribute deep inside sympy) stays
  changed for the worker's later programs, as above.
* Reads are allowed beneath the allowlisted directories: the Python installation (and the
  rest of /usr) can be read.
* Where the kernel lacks Landlock (or ABI < 6, for signal scoping) or the machine is another
  architecture, `sandbox` reports what is missing: process limits, timeouts and state resets
  still apply, but file access and process creation are then only as restricted as the user
  the parent runs as.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import secrets
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Self

from rstar_jax._checks import positive_int

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
_MAX_REPLY_BYTES = 1 << 20
_STARTUP_TIMEOUT_S = 120.0
_DEPTH = 2  # requests in flight per worker
# A second request is queued only if it fits in the pipe buffer with room to spare, so writing
# it can never block while the worker is busy with the first.
_MAX_QUEUED_BYTES = 16 * 1024

PRELOAD = (
    "math", "cmath", "fractions", "decimal", "itertools", "functools", "collections", "random",
    "statistics", "re", "numpy", "sympy", "scipy", "scipy.special", "scipy.optimize",
    "scipy.integrate", "scipy.linalg",
)  # fmt: skip
# Modules whose namespaces are put back after every program (when loaded).
WATCH = (
    "builtins", "os", "sys", "math", "cmath", "fractions", "decimal", "itertools", "functools",
    "operator", "collections", "random", "statistics", "re", "string", "numpy", "numpy.linalg",
    "numpy.random", "warnings", "gc", "sympy", "scipy", "scipy.special", "scipy.optimize",
    "scipy.integrate", "scipy.linalg",
)  # fmt: skip
# First-use costs (sympy's caches and assumptions, numpy's printing) paid before any timing.
WARMUP = """
import numpy, sympy
x = sympy.Symbol("x")
sympy.solve(sympy.Eq(x**2 - 3 * x, 4), x)
sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)
sympy.factorint(360); sympy.Rational(1, 3) + sympy.sqrt(8); sympy.N(sympy.pi, 20)
str(numpy.arange(6).reshape(2, 3) / 7); numpy.linalg.solve(numpy.eye(2), numpy.ones(2))
"""
# Read-only for programs; the worker adds its sys.path and prefixes. Of /etc, only what the
# dynamic loader and time zones need (not, say, /etc/shadow).
READ_DIRS = (
    "/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
    "/etc/localtime", "/etc/timezone", "/dev/zero", "/dev/urandom", "/sys/devices/system/cpu",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """The outcome of one program: `ok` when it ran to the end; `stdout` (truncated) and a
    one-line `error` (``""`` when ok)."""

    ok: bool
    stdout: str
    error: str


@dataclasses.dataclass(eq=False)
class _Worker:
    proc: subprocess.Popen
    scratch: str
    log: str
    buffer: bytearray = dataclasses.field(default_factory=bytearray)
    report: dict | None = None  # the sandbox report, once the worker is ready
    tasks: collections.deque = dataclasses.field(default_factory=collections.deque)  # (id, nonce)
    deadline: float = 0.0  # for the first of `tasks`, the one running
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def ready(self) -> bool:
        return self.report is not None


@dataclasses.dataclass
class _Batch:
    programs: list[str]
    results: list[ExecResult | None]
    queue: collections.deque  # indices not yet sent to a worker

    def __post_init__(self):
        self.remaining = len(self.programs)

    def finish(self, index: int, result: ExecResult) -> None:
        self.results[index] = result
        self.remaining -= 1


def host_workers(memory_mb: int, *, reserve: int = 2, cap: int = 64) -> int:
    """Workers this host can run side by side: its usable cores less `reserve` for the process
    driving the accelerators, at most `cap`, and no more than half the host's memory allows at
    `memory_mb` each (at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return max(1, min(cores - reserve, cap, memory // 2 // max(1, memory_mb)))


class CodeExecutor:
    """A pool of `num_workers` sandboxed Python workers (plus one warm spare)."""

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        memory_mb: int = 1024,
        *,
        max_output_chars: int = 1024,
        max_programs_per_worker: int = 20_000,
        max_rss_growth_mb: int = 512,
        max_file_mb: int = 64,
        sandbox: bool = True,
        preload: Sequence[str] = PRELOAD,
    ):
        # As Python ints: the settings go to the workers as JSON, which has no NumPy ints.
        num_workers = positive_int(num_workers, "CodeExecutor: num_workers")
        memory_mb = positive_int(memory_mb, "CodeExecutor: memory_mb")
        max_output_chars = positive_int(max_output_chars, "CodeExecutor: max_output_chars")
        max_programs_per_worker = positive_int(max_programs_per_worker,
                                               "CodeExecutor: max_programs_per_worker")
        if max_output_chars * 12 + 4096 > _MAX_REPLY_BYTES:  # JSON escapes up to 12 bytes/char
            raise ValueError(f"CodeExecutor: max_output_chars must be at most "
                             f"{(_MAX_REPLY_BYTES - 4096) // 12}, got {max_output_chars}")  # fmt: skip
        if not timeout_s > 0:
            raise ValueError(f"CodeExecutor: timeout_s must be > 0 seconds, got {timeout_s!r}")
        self.num_workers, self.timeout_s = num_workers, float(timeout_s)
        self._settings = {
            "parent": os.getpid(),
            "memory_mb": memory_mb,
            "max_output_chars": max_output_chars,
            "max_programs": max_programs_per_worker,
            "max_rss_growth_mb": max_rss_growth_mb,
            "max_file_mb": max_file_mb,
            "sandbox": sandbox,
            "preload": list(preload),
            "watch": list(WATCH),
            "warmup": WARMUP,
            "read_dirs": list(READ_DIRS),
        }
        _remove_stale_roots()
        self._root = tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{os.getpid()}-")
        self._count = 0
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        # Workers die with the thread that spawned them (PR_SET_PDEATHSIG): one long-lived
        # thread spawns them all, so they outlive whichever thread calls `run`.
        self._spawner = concurrent.futures.ThreadPoolExecutor(1, "rstar-executor-spawn")
        self._workers: list[_Worker] = []
        self._spares: list[_Worker] = []
        self._closed = False
        self._batch: _Batch | None = None
        self._start_failures = 0
        self._finalizer = weakref.finalize(
            self, _shutdown, self._workers, self._spares, self._spawner, self._root
        )
        self._workers.extend(self._start() for _ in range(num_workers))
        self._spares.append(self._start())

    # ------------------------------------------------------------------------------ public
    def run(self, programs: Sequence[str], *, progress: bool = False) -> list[ExecResult]:
        """Run each program from scratch; results in input order."""
        if isinstance(programs, str):
            raise TypeError("CodeExecutor.run takes a list of programs, got a single str")
        programs = list(programs)
        for i, p in enumerate(programs):
            if not isinstance(p, str):
                raise TypeError(f"CodeExecutor.run: program {i} is {type(p).__name__}, not str")
        if self._closed:
            raise RuntimeError("CodeExecutor.run called after close()")
        with self._lock:
            return self._run(programs, progress)

    @property
    def sandbox(self) -> dict:
        """What the workers could apply: rlimits, Landlock ABI, seccomp, and what failed."""
        with self._lock:
            self._wait_ready()
            return dict(self._workers[0].report)

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers and the spare."""
        return [w.proc.pid for w in self._workers + self._spares]

    def close(self) -> None:
        """Stop every worker (none left running or unreaped) and remove the scratch space."""
        self._closed = True
        with self._lock:  # after a `run` in another thread finishes
            self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------- workers
    def _start(self) -> _Worker:
        self._count += 1
        scratch = os.path.join(self._root, f"worker-{self._count}")
        os.mkdir(scratch, 0o700)
        log = os.path.join(self._root, f"worker-{self._count}.log")
        settings = json.dumps({**self._settings, "scratch": scratch})
        env = {
            "PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
        }  # fmt: skip

        def spawn() -> subprocess.Popen:
            with open(log, "wb") as err:
                return subprocess.Popen(
                    [sys.executable, "-s", "-P", _WORKER, settings],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
                    cwd=scratch, close_fds=True, start_new_session=True, bufsize=0,
                )  # fmt: skip

        proc = self._spawner.submit(spawn).result()
        os.set_blocking(proc.stdout.fileno(), False)
        worker = _Worker(proc, scratch, log)
        self._selector.register(proc.stdout, selectors.EVENT_READ, worker)
        return worker

    def _discard(self, worker: _Worker) -> None:
        self._selector.unregister(worker.proc.stdout)
        _kill(worker)
        shutil.rmtree(worker.scratch, ignore_errors=True)

    def _retire(self, worker: _Worker) -> None:
        """Kill a worker and put the spare in its place; start a new spare."""
        self._discard(worker)
        self._workers[self._workers.index(worker)] = self._spares.pop()
        self._spares.append(self._start())

    def _replace_unstarted(self, worker: _Worker) -> None:
        self._discard(worker)
        group = self._spares if worker in self._spares else self._workers
        group[group.index(worker)] = self._start()

    def _wait_ready(self) -> None:
        """Until the first worker is ready (it may be replaced while starting)."""
        while not self._workers[0].ready:
            self._poll(1.0)
            self._check_startup()

    def _check_startup(self) -> None:
        now = time.monotonic()
        for worker in self._workers + self._spares:
            if not worker.ready and now - worker.started > _STARTUP_TIMEOUT_S:
                raise RuntimeError(f"executor worker did not start in {_STARTUP_TIMEOUT_S:.0f} s"
                                   f"{_log_tail(worker)}")  # fmt: skip

    # ------------------------------------------------------------------------------- loop
    def _run(self, programs: list[str], progress: bool) -> list[ExecResult]:
        batch = _Batch(programs, [None] * len(programs), collections.deque(range(len(programs))))
        self._batch = batch
        bar = None
        if progress:
            import tqdm

            bar = tqdm.tqdm(total=len(programs), desc="executing", unit="prog")
        try:
            while batch.remaining:
                for worker in self._workers:
                    # Two requests in flight per worker: the next program is waiting in the
                    # pipe when one finishes, so a worker never idles on this loop.
                    while batch.queue and worker.ready and len(worker.tasks) < _DEPTH:
                        if not self._send(worker, batch.queue[0]):
                            break
                        batch.queue.popleft()
                deadlines = [w.deadline for w in self._workers if w.tasks]
                wait = max(min(deadlines) - time.monotonic(), 0.0) if deadlines else 1.0
                self._poll(wait)
                self._expire()
                if bar is not None:
                    bar.update(len(programs) - batch.remaining - bar.n)
        except BaseException:
            # Interrupted (Ctrl-C, a startup failure): replies still on their way would land
            # in the next batch, so the busy workers go.
            for worker in list(self._workers):
                if worker.tasks:
                    worker.tasks.clear()
                    self._retire(worker)
            raise
        finally:
            self._batch = None
            if bar is not None:
                bar.close()
        return batch.results  # type: ignore[return-value]

    def _send(self, worker: _Worker, index: int) -> bool:
        """Send program `index` to `worker`; False (nothing sent) if it must wait for idle."""
        nonce = secrets.token_hex(8)
        code = self._batch.programs[index]
        data = json.dumps({"id": index, "nonce": nonce, "code": code}).encode()
        if worker.tasks and len(data) > _MAX_QUEUED_BYTES:
            return False
        if not worker.tasks:
            worker.deadline = time.monotonic() + self.timeout_s
        worker.tasks.append((index, nonce))
        try:
            worker.proc.stdin.write(struct.pack(">I", len(data)) + data)
        except OSError:
            pass  # it died; the read side reports it
        return True

    def _poll(self, timeout: float) -> None:
        """Read and act on whatever workers sent."""
        for key, _ in self._selector.select(timeout):
            worker: _Worker = key.data
            try:
                chunk = os.read(worker.proc.stdout.fileno(), 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                self._died(worker)
                continue
            worker.buffer += chunk
            while len(worker.buffer) >= 4 and worker in self._workers + self._spares:
                (n,) = struct.unpack(">I", worker.buffer[:4])
                if n <= _MAX_REPLY_BYTES and len(worker.buffer) < 4 + n:
                    break  # the rest of the message is still in the pipe
                message = bytes(worker.buffer[4 : 4 + n]) if n <= _MAX_REPLY_BYTES else b""
                del worker.buffer[: 4 + n]
                self._handle(worker, message)

    def _handle(self, worker: _Worker, message: bytes) -> None:
        try:
            reply = json.loads(message)
        except Exception:  # noqa: BLE001 - anything unparsable (RecursionError included)
            reply = {}
        if not isinstance(reply, dict):
            reply = {}
        if not worker.ready and isinstance(reply.get("ready"), dict):
            worker.report = reply["ready"]
            self._start_failures = 0
            return
        head = worker.tasks[0] if worker.tasks else None
        valid = (
            head is not None and reply.get("id") == head[0] and reply.get("nonce") == head[1]
            and isinstance(reply.get("ok"), bool) and isinstance(reply.get("stdout"), str)
            and isinstance(reply.get("error"), str)
        )  # fmt: skip
        if not valid:
            self._fail(worker, "WorkerError: malformed reply from the worker")
            return
        worker.tasks.popleft()
        self._batch.finish(head[0], ExecResult(reply["ok"], reply["stdout"], reply["error"]))
        worker.deadline = time.monotonic() + self.timeout_s  # it starts the next one now
        if reply.get("recycle"):
            self._fail(worker, None)  # it exits after this reply; the rest go back in the queue

    def _died(self, worker: _Worker) -> None:
        code = worker.proc.wait()
        if not worker.ready:
            # Failed while starting. Once is chance (say the OOM killer during imports): start
            # another. Twice in a row is the setup: say why.
            self._start_failures += 1
            if self._start_failures >= 2:
                raise RuntimeError(f"executor worker failed to start (exit status {code})"
                                   f"{_log_tail(worker)}")  # fmt: skip
            self._replace_unstarted(worker)
            return
        how = (
            f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        )
        self._fail(worker, f"WorkerDied: the program's worker {how}")

    def _expire(self) -> None:
        self._check_startup()
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.tasks and worker.deadline <= now:
                self._fail(
                    worker, f"TimeoutError: the program ran longer than {self.timeout_s:g} s"
                )

    def _fail(self, worker: _Worker, error: str | None) -> None:
        """Replace a worker; its running program gets `error`, its queued ones run elsewhere."""
        if worker in self._spares:  # a spare failed before it was ever used: replace it
            self._replace_unstarted(worker)
            return
        tasks = list(worker.tasks)
        self._retire(worker)
        if not tasks:
            return
        if error is not None:
            self._batch.finish(tasks.pop(0)[0], ExecResult(False, "", error))
        self._batch.queue.extendleft(index for index, _ in reversed(tasks))


_ROOT_PREFIX = "rstar-executor-"


def _remove_stale_roots() -> None:
    """Remove scratch space left by pools whose process was killed (the name holds its pid)."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        if not name.startswith(_ROOT_PREFIX):
            continue
        pid = name[len(_ROOT_PREFIX) :].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _kill(worker: _Worker) -> None:
    proc = worker.proc
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its session: anything it managed to start
        except ProcessLookupError:
            pass
    proc.wait()
    for f in (proc.stdin, proc.stdout):
        try:
            f.close()
        except OSError:
            pass


def _log_tail(worker: _Worker) -> str:
    try:
        with open(worker.log, errors="replace") as f:
            tail = f.read()[-2000:]
    except OSError:
        return ""
    return f"; its stderr ends with:\n{tail}" if tail else ""


def _shutdown(workers: list, spares: list, spawner, root: str) -> None:
    for worker in workers + spares:
        try:
            worker.proc.stdin.close()  # an idle worker exits on end of input
        except OSError:
            pass
    deadline = time.monotonic() + 1.0
    for worker in workers + spares:
        try:
            worker.proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            pass
        _kill(worker)
    workers.clear()
    spares.clear()
    spawner.shutdown(wait=True)
    shutil.rmtree(root, ignore_errors=True)
