"""An executor worker: runs one program at a time, each from a clean slate.

Started by `CodeExecutor` as ``python -s -P _worker.py <settings json>`` with a clean
environment (no user site-packages, and this file's directory is not on ``sys.path``).
Standard library at the top only (the heavy packages are imported in `_setup`, once).

Protocol over the worker's inherited stdin/stdout pipes (moved to private descriptors; fds 0,
1 and 2 point at /dev/null while programs run): each message is a 4-byte big-endian length
then UTF-8 JSON.  Worker -> parent first ``{"ready": {...sandbox report...}}``, then per
request ``{"id", "nonce", "code"}`` one reply ``{"id", "nonce", "ok", "stdout", "error",
"recycle"}``.  ``recycle`` asks the parent to retire this worker (state it could not restore,
memory growth, program count).
"""

from __future__ import annotations

import builtins
import gc
import json
import os
import resource
import signal
import struct
import sys
import types

_MAX_ERROR_CHARS = 300
# Signals whose handlers are put back after each program: those a later program could receive
# (timers, termination, pipes, file-size and CPU limits).
_SIGNALS = (
    signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGINT, signal.SIGTERM,
    signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE, signal.SIGCHLD,
    signal.SIGXFSZ, signal.SIGXCPU,
)  # fmt: skip


class _CappedWriter:
    """A text stream that keeps the first `limit` characters and counts (then drops) the rest."""

    def __init__(self, limit: int):
        self.limit, self.parts, self.kept, self.dropped = limit, [], 0, 0

    def write(self, s) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        room = self.limit - self.kept
        if room > 0:
            self.parts.append(s[:room])
            self.kept += min(len(s), room)
        self.dropped += max(len(s) - max(room, 0), 0)
        return len(s)

    def getvalue(self) -> str:
        # Lone surrogates (print("\ud800")) would make the text unencodable downstream.
        return "".join(self.parts).encode("utf-8", "backslashreplace").decode("utf-8")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    encoding = "utf-8"
    errors = "strict"


def _one_line(exc: BaseException) -> str:
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001 - a hostile __str__
        message = "<unprintable>"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    text = " ".join(text.split())
    return text[:_MAX_ERROR_CHARS]


class _State:
    """Interpreter state a program could change, captured once and put back after each run."""

    def __init__(self, watched: list[str], scratch: str):
        import decimal

        import mpmath
        import numpy as np
        import sympy.core.parameters as sympy_parameters

        self.scratch = scratch
        self.np, self.decimal, self.mpmath = np, decimal, mpmath
        self.sympy_parameters = sympy_parameters.global_parameters
        self.sympy_saved = {
            k: getattr(self.sympy_parameters, k) for k in ("evaluate", "distribute", "exp_is_pow")
        }
        self.builtins_dict, self.builtins_saved = vars(builtins), dict(vars(builtins))
        self.worker_main = sys.modules["__main__"]
        self.modules = {name: sys.modules[name] for name in watched if name in sys.modules}
        self.module_dicts = {name: dict(vars(m)) for name, m in self.modules.items()}
        self.module_names = set(sys.modules)
        self.sys_attrs = {
            k: getattr(sys, k)
            for k in (
                "stdin",
                "stdout",
                "stderr",
                "displayhook",
                "excepthook",
                "breakpointhook",
                "unraisablehook",
            )
        }
        self.sys_lists = {k: list(getattr(sys, k)) for k in ("path", "meta_path", "path_hooks")}
        self.recursion_limit = sys.getrecursionlimit()
        self.int_digits = sys.get_int_max_str_digits()
        self.environ = dict(os.environ._data)  # bytes -> bytes, compared in C
        self.signals = {s: signal.getsignal(s) for s in _SIGNALS}
        self.umask = os.umask(0o022)
        os.umask(self.umask)
        self.np_err = np.geterr()
        self.np_print = np.get_printoptions()
        self.decimal_context = decimal.getcontext().copy()
        self.mp_prec = mpmath.mp.prec
        self.gc_threshold = gc.get_threshold()
        import faulthandler
        import warnings

        self.faulthandler = faulthandler
        self.warnings = warnings
        self.warning_filters = list(warnings.filters)
        self.fds = set(os.listdir("/proc/self/fd"))

    def restore_builtins(self) -> None:
        """Put builtins back using dict methods alone (no builtin names are looked up)."""
        self.builtins_dict.clear()
        self.builtins_dict.update(self.builtins_saved)

    def restore(self) -> None:
        """Put everything back (an exception here means: retire the worker)."""
        self.restore_builtins()
        for name, module in self.modules.items():  # first: the rest uses builtins, os, sys
            if sys.modules.get(name) is not module:
                sys.modules[name] = module
            _restore_dict(vars(module), self.module_dicts[name])
        for k, v in self.sys_attrs.items():
            if getattr(sys, k) is not v:
                setattr(sys, k, v)
        for k, saved in self.sys_lists.items():
            current = getattr(sys, k)
            if current != saved:
                current[:] = saved
        sys.settrace(None)
        sys.setprofile(None)
        if sys.getrecursionlimit() != self.recursion_limit:
            sys.setrecursionlimit(self.recursion_limit)
        if sys.get_int_max_str_digits() != self.int_digits:
            sys.set_int_max_str_digits(self.int_digits)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.setitimer(signal.ITIMER_PROF, 0)
        for s, handler in self.signals.items():
            if signal.getsignal(s) is not handler:
                signal.signal(s, handler)
        if len(sys.modules) != len(self.module_names):
            for name in set(sys.modules) - self.module_names:
                if getattr(sys.modules[name], "__spec__", None) is None:  # not imported
                    del sys.modules[name]
            self.module_names = set(sys.modules)  # real imports stay: later programs reuse them
        if os.environ._data != self.environ:
            os.environ.clear()
            os.environ.update({os.fsdecode(k): os.fsdecode(v) for k, v in self.environ.items()})
        if os.getcwd() != self.scratch:
            os.chdir(self.scratch)
        os.umask(self.umask)
        with os.scandir(self.scratch) as entries:
            leftovers = list(entries)
        for entry in leftovers:
            _remove(entry)
        for fd in set(os.listdir("/proc/self/fd")) - self.fds:
            try:
                os.close(int(fd))
            except OSError:
                pass  # the descriptor of the listing itself
        np = self.np
        if np.geterr() != self.np_err:
            np.seterr(**self.np_err)
        if np.get_printoptions() != self.np_print:
            np.set_printoptions(**self.np_print)
        self.decimal.setcontext(self.decimal_context.copy())
        self.mpmath.mp.prec = self.mp_prec
        for k, v in self.sympy_saved.items():
            if getattr(self.sympy_parameters, k) != v:
                setattr(self.sympy_parameters, k, v)
        if self.warnings.filters != self.warning_filters:
            self.warnings.filters[:] = self.warning_filters
            self.warnings._filters_mutated()
        if not gc.isenabled():
            gc.enable()
        if gc.callbacks:
            gc.callbacks.clear()
        if gc.get_debug():
            gc.set_debug(0)
        if self.faulthandler.is_enabled():
            self.faulthandler.disable()
        if gc.get_threshold() != self.gc_threshold:
            gc.set_threshold(*self.gc_threshold)


def _restore_dict(current: dict, saved: dict) -> None:
    """Undo changes to a module's namespace; keep submodules a program imported.

    The check is dict equality, which compares identical values without calling ``__eq__``:
    exact and fast when nothing changed.  A replaced value that compares equal to the original
    is left in place (an object whose ``__eq__`` lies survives: see the executor's notes).
    """
    try:
        if current == saved:
            return
    except Exception:  # noqa: BLE001, S110 - a replaced value whose __eq__ raised: restore
        pass
    for k in [k for k in current if k not in saved]:
        if type(current[k]).__name__ != "module":
            del current[k]
    for k, v in saved.items():
        if current.get(k, current) is not v:
            current[k] = v


def _remove(entry: os.DirEntry) -> None:
    import shutil

    try:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)
    except OSError:
        pass


def _peak_rss() -> int:
    """Peak resident memory of this process, in bytes (VmHWM).

    Not getrusage's ru_maxrss: on Linux exec records the high-water mark of the memory it
    replaces, which for a spawned worker is the parent's, so under a parent holding a large
    model every worker would look over its limit and be retired after each program.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return 0


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _send(fd: int, message: dict) -> None:
    data = json.dumps(message).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _receive(fd: int) -> dict:
    (n,) = struct.unpack(">I", _read_exact(fd, 4))
    return json.loads(_read_exact(fd, n))


def _audit(event: str, args: tuple) -> None:
    """Installed first: a program cannot add audit hooks, which nothing could remove."""
    if event == "sys.addaudithook":
        raise RuntimeError("audit hooks are reserved by the executor's worker")


def _load_sibling(name: str):
    """Import a module beside this file without putting this package's directory on sys.path."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _setup(settings: dict) -> tuple[dict, _State]:
    """Import the math stack, then lock the process down; returns the sandbox report."""
    import importlib

    _sandbox = _load_sibling("_sandbox")
    report: dict[str, object] = {}
    for name in settings["preload"]:
        importlib.import_module(name)
    # Pay first-use costs (sympy's caches, numpy's printing) before programs are timed.
    exec(settings["warmup"], {"__name__": "__warmup__"})  # noqa: S102 - our own code
    scratch = settings["scratch"]
    os.chdir(scratch)
    tempfile = importlib.import_module("tempfile")
    tempfile.tempdir = scratch
    # Address space: what is mapped now plus the program's allowance.
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limits = {
        resource.RLIMIT_AS: mapped + settings["memory_mb"] * 2**20,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_FSIZE: settings["max_file_mb"] * 2**20,
        resource.RLIMIT_NPROC: 0,  # not enforced for root; seccomp covers that case
        resource.RLIMIT_NOFILE: 256,
    }
    for res, value in limits.items():
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass
    report["rlimits"] = True
    if settings["sandbox"]:
        prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
        paths = [p for p in sys.path if p and os.path.exists(p)]
        read_dirs = [*settings["read_dirs"], *prefixes, *paths, f"/proc/{os.getpid()}"]
        for apply in (lambda: _sandbox.apply_landlock(read_dirs, scratch), _sandbox.apply_seccomp):
            try:
                report.update(apply())
            except OSError as e:
                report.setdefault("unavailable", []).append(_one_line(e))
    sys.addaudithook(_audit)
    state = _State(settings["watch"], scratch)
    gc.collect()
    gc.freeze()  # preloaded objects leave the collector's generations: later collections are cheap
    return report, state


def _run(code: str, state: _State, max_chars: int) -> tuple[bool, str, str]:
    import random

    out = _CappedWriter(max_chars)
    random.seed(0)
    state.np.random.seed(0)
    main = types.ModuleType("__main__")  # what `import __main__` gives the program
    sys.modules["__main__"] = main
    sys.stdout, sys.stderr = out, _CappedWriter(0)
    try:
        exec(compile(code, "<program>", "exec"), main.__dict__)  # noqa: S102 - the sandboxed run
        failure = None
    except:  # noqa: E722 - catches without looking up a name the program may have deleted
        failure = sys.exc_info()[1]
    # Builtins first, by dict methods only: the code below looks names up in them.
    state.restore_builtins()
    sys.modules["__main__"] = state.worker_main
    sys.stdout, sys.stderr = state.sys_attrs["stdout"], state.sys_attrs["stderr"]
    ok, error = True, ""
    if isinstance(failure, SystemExit):
        if failure.code not in (None, 0):
            ok, error = False, _one_line(failure)
    elif failure is not None:
        ok, error = False, _one_line(failure)
    del failure  # its traceback holds the program's frames
    main.__dict__.clear()
    gc.collect(0)
    return ok, out.getvalue(), error


def main() -> None:
    settings = json.loads(sys.argv[1])
    _load_sibling("_sandbox").die_with_parent(signal.SIGKILL)
    if os.getppid() != settings["parent"]:
        os._exit(1)  # the parent died before the line above
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and closes us
    report, state = _setup(settings)  # a failure here reaches the parent's log through fd 2
    os.dup2(devnull, 2)
    _send(proto_out, {"ready": report})
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    rss_limit = resident + settings["max_rss_growth_mb"] * 2**20
    max_programs = settings["max_programs"]
    for count in range(1, max_programs + 1):
        try:
            request = _receive(proto_in)
        except EOFError:
            return
        ok, stdout, error = _run(request["code"], state, settings["max_output_chars"])
        try:
            state.restore()
            clean = True
        except BaseException:  # noqa: BLE001 - state we cannot trust: finish and retire
            clean = False
        recycle = not clean or _peak_rss() > rss_limit or count == max_programs
        reply = {
            "id": request["id"],
            "nonce": request["nonce"],
            "ok": ok,
            "stdout": stdout,
            "error": error,
            "recycle": recycle,
        }
        _send(proto_out, reply)
        if recycle:
            return


if __name__ == "__main__":
    main()
