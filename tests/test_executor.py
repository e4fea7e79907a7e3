"""CodeExecutor: results, isolation between programs, and hostile programs.

Every hostile program is followed, on the same one-worker pool, by a normal program that must
still run correctly: the pool survives and nothing the hostile program did leaks forward.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from rstar_jax.steps.executor import CodeExecutor, ExecResult

TIMEOUT_S = 1.0
SECRET = "RSTAR_TEST_SECRET"
MARK = f"/tmp/rstar-pwned-{uuid.uuid4().hex}"
HOME = os.path.expanduser("~")

# Uses builtins, math, sympy, numpy, printing, the cwd, signals, the environment and a file:
# each is something a hostile program below tries to break for its successor.
NORMAL = textwrap.dedent("""
    import math, os, signal, sympy, numpy as np, decimal, random, gc, warnings
    warnings.warn("goes to stderr, which is discarded")
    gc.collect()
    x = sympy.Symbol("x")
    with open("scratch.txt", "w") as f:
        f.write("ok")
    assert os.listdir(".") == ["scratch.txt"], os.listdir(".")
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    assert "INJECTED" not in os.environ
    print(abs(-3), len("abc"), math.sqrt(16), sympy.solve(x**2 - 9, x), np.arange(4).sum(),
          np.array([1 / 3]), x + x, sympy.sin(x)**2 + sympy.cos(x)**2 - 1 == 0,
          decimal.Decimal(1) / decimal.Decimal(3), sympy.N(sympy.pi, 20), random.random(),
          sep="|")
""")


@pytest.fixture(scope="module")
def expected() -> str:
    code = NORMAL.replace('with open("scratch.txt", "w")', 'with open(os.devnull, "w")').replace(
        'assert os.listdir(".") == ["scratch.txt"], os.listdir(".")', ""
    )
    out = subprocess.run([sys.executable, "-c", "import random; random.seed(0)\n" + code],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout


@pytest.fixture(scope="module")
def pool():
    os.environ[SECRET] = "hunter2"
    try:
        with CodeExecutor(num_workers=1, timeout_s=TIMEOUT_S, memory_mb=512) as ex:
            yield ex
    finally:
        del os.environ[SECRET]


def _listener() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    return server, server.getsockname()[1]


def _timeout(r: ExecResult) -> bool:
    return not r.ok and r.error.startswith("TimeoutError")


def _denied(r: ExecResult) -> bool:
    return not r.ok and r.error.startswith(("PermissionError", "RuntimeError", "OSError"))


def _program(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def _ok(r: ExecResult) -> bool:
    return r.ok


HOSTILE = {
    "infinite_loop": ("while True:\n    pass", _timeout),
    "sleep": ("import time\ntime.sleep(100)", _timeout),
    "huge_power": ("x = 10**10**8", lambda r: not r.ok),
    "catastrophic_regex": ("import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')", _timeout),
    "huge_bytearray": ("x = bytearray(10**11)", lambda r: r.error.startswith("MemoryError")),
    "huge_list": ("x = [0] * 10**10", lambda r: r.error.startswith("MemoryError")),
    "huge_numpy": ("import numpy as np\nx = np.ones(10**10)",
                   lambda r: r.error.startswith("MemoryError") or "Unable to allocate" in r.error),
    "print_100mb_lines": ("for _ in range(10**6):\n    print('x' * 99)",
                          lambda r: _timeout(r)
                          or (r.ok and r.stdout == (("x" * 99 + "\n") * 11)[:1024])),
    "print_100mb_string": ("print('y' * 10**8)", lambda r: r.ok and r.stdout == "y" * 1024),
    "deep_recursion": ("def f(n):\n    return f(n + 1)\nf(0)",
                       lambda r: r.error.startswith("RecursionError")),
    "deep_recursion_unlimited": (_program("""
        import sys
        sys.setrecursionlimit(10**8)
        def f(n):
            return f(n + 1) + 1
        f(0)
    """), lambda r: not r.ok),
    "fork_bomb": ("import os\nwhile True:\n    os.fork()", _denied),
    "os_system": (f"import os\nprint(os.system('touch {MARK}'))",
                  lambda r: r.ok and r.stdout.strip() != "0" and not os.path.exists(MARK)),
    "subprocess": ("import subprocess\nsubprocess.run(['echo', 'hi'])", _denied),
    "thread_bomb": (_program("""
        import threading, time
        for _ in range(10**4):
            threading.Thread(target=time.sleep, args=(100,)).start()
    """), _denied),
    "write_home": (f"open({HOME + '/rstar-pwned'!r}, 'w').write('x')",
                   lambda r: _denied(r) and not os.path.exists(HOME + "/rstar-pwned")),
    "write_tmp": (f"open({MARK!r}, 'w').write('x')",
                  lambda r: _denied(r) and not os.path.exists(MARK)),
    "read_environment": (f"import os\nprint(os.environ.get({SECRET!r}))",
                         lambda r: r.ok and r.stdout == "None\n"),
    "read_parent_environment": ("import os\nprint(open(f'/proc/{os.getppid()}/environ').read())",
                                lambda r: _denied(r) and "hunter2" not in r.stdout),
    "sys_exit_error": ("import sys\nsys.exit(3)", lambda r: r.error == "SystemExit: 3"),
    "sys_exit_clean": ("print('bye')\nraise SystemExit", lambda r: r.ok and r.stdout == "bye\n"),
    "os_exit": ("import os\nos._exit(0)", lambda r: r.error.startswith("WorkerDied")),
    "kill_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", _denied),
    "kill_parent_group": ("import os, signal\nos.killpg(os.getpgid(os.getppid()), 9)", _denied),
    "ignore_sigalrm_and_loop": (_program("""
        import signal
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.alarm(1)
        while True:
            pass
    """), _timeout),
    "leave_sigalrm_handler": (_program("""
        import signal
        signal.signal(signal.SIGALRM, lambda *a: None)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
    """), _ok),
    "ctypes_segfault": ("import ctypes\nctypes.string_at(0)",
                        lambda r: r.error == "WorkerDied: the program's worker killed by SIGSEGV"),
    "tamper_builtins": (_program("""
        import builtins
        builtins.abs = lambda x: 42
        builtins.len = None
        del builtins.print
    """), _ok),
    "tamper_modules": (_program("""
        import math, sympy, numpy
        math.sqrt = lambda x: -1
        sympy.solve = None
        numpy.arange = list
        math.evil = 1
    """), _ok),
    "tamper_sys_modules": ("import sys\nsys.modules['sympy'] = None\nsys.modules['math'] = 0", _ok),
    "tamper_global_settings": (_program("""
        import numpy as np, decimal, mpmath, sys
        from sympy.core.parameters import global_parameters
        np.set_printoptions(precision=1)
        np.seterr(all='raise')
        decimal.getcontext().prec = 2
        mpmath.mp.dps = 3
        global_parameters.evaluate = False
        sys.settrace(lambda *a: None)
        sys.setrecursionlimit(50)
    """), _ok),
    "tamper_process_state": (_program("""
        import os
        os.chdir('/')
        os.environ['INJECTED'] = '1'
        os.umask(0o777)
        files = [open(os.devnull) for _ in range(100)]
    """), _ok),
    "leave_files_in_scratch": (_program("""
        import os
        os.mkdir('d')
        open('d/f', 'w').write('x')
        open('g', 'w').write('y')
    """), _ok),
    "huge_file": ("open('big', 'wb').write(b'0' * (200 * 2**20))",
                  lambda r: r.error.startswith(("OSError", "MemoryError"))),
    "raise_limits": ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
                     lambda r: r.error.startswith(("ValueError", "PermissionError"))),
    "hung_finaliser": (_program("""
        class A:
            def __del__(self):
                while True:
                    pass
        a = A()
    """), _timeout),
    "hostile_exception_str": (_program("""
        class E(Exception):
            def __str__(self):
                raise E()
        raise E()
    """), lambda r: r.error == "E: <unprintable>"),
    "garble_reply_pipe": (_program("""
        import os
        for fd in range(3, 64):
            try:
                os.write(fd, b'\\x00\\x00\\x00\\x05junk!' * 50)
            except OSError:
                pass
    """), lambda r: r.error.startswith("WorkerError")),
    "read_stdin": ("input()", lambda r: r.error.startswith("EOFError")),
    "deeply_nested_reply": (_program("""
        import os
        frame = b'[' * 200000
        for fd in range(3, 64):
            try:
                os.write(fd, len(frame).to_bytes(4, 'big') + frame)
            except OSError:
                pass
    """), lambda r: r.error.startswith("WorkerError")),
    "renice_parent": ("import os\nos.setpriority(os.PRIO_PROCESS, os.getppid(), 7)", _denied),
    "pin_parent": ("import os\nos.sched_setaffinity(os.getppid(), {0})", _denied),
    "renice_self": ("import os\nos.nice(19)", _denied),
    "sethostname": ("import socket\nsocket.sethostname('pwned')", _denied),
    "memfd": ("import os\nos.memfd_create('x')", _denied),
    "signal_parent_by_fcntl": (_program("""
        import fcntl, os
        r, w = os.pipe()
        fcntl.fcntl(r, fcntl.F_SETOWN, os.getppid())
    """), _denied),
    # Refused silently (Python suppresses the refusal): the next program shows it took no hold.
    "add_audit_hook": ("import sys\nsys.addaudithook(lambda *a: 1 / 0)", _ok),
    "tamper_gc_and_warnings": (_program("""
        import gc, warnings
        gc.callbacks.append(lambda *a: print('GC'))
        warnings.showwarning = lambda *a, **k: print('W')
        warnings.simplefilter('error')
        gc.set_debug(gc.DEBUG_SAVEALL)
    """), _ok),
    "write_devnull": (_program("""
        import os, contextlib
        with open(os.devnull, 'w') as f, contextlib.redirect_stdout(f):
            print('hidden')
        print('shown')
    """), lambda r: r.ok and r.stdout == "shown\n"),
    "lone_surrogate": ("print('a\\ud800b')", lambda r: r.ok and r.stdout == "a\\ud800b\n"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_then_normal(pool, expected, name):
    code, check = HOSTILE[name]
    start = time.monotonic()
    (result,) = pool.run([code])
    elapsed = time.monotonic() - start
    assert check(result), (name, result)
    assert elapsed < TIMEOUT_S + 5.0, (name, elapsed)
    assert pool.run([NORMAL]) == [ExecResult(True, expected, "")], name


def test_socket_connect_is_refused(pool, expected):
    server, port = _listener()
    with server:
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=0.5)"
        (result,) = pool.run([code])
        assert _denied(result), result
        with pytest.raises(TimeoutError):
            server.accept()  # nothing reached the listener
    assert pool.run([NORMAL]) == [ExecResult(True, expected, "")]


def test_sandbox_is_in_force_here(pool):
    report = pool.sandbox
    assert report["rlimits"]
    # This machine (and CI's) is x86_64 Linux with Landlock; elsewhere fewer layers apply.
    assert report.get("seccomp") is True, report
    assert report.get("landlock", 0) >= 1, report


def test_a_long_program_waits_its_turn_behind_a_hung_one():
    # Queued behind a busy worker only if small: writing it must never block the timeout.
    big = "x = '" + "a" * 70_000 + "'\nprint(len(x))"
    with CodeExecutor(num_workers=1, timeout_s=TIMEOUT_S) as ex:
        start = time.monotonic()
        hung, long = ex.run(["while True:\n    pass", big])
        assert time.monotonic() - start < TIMEOUT_S + 10
    assert _timeout(hung) and long == ExecResult(True, "70000\n", "")


def test_a_spare_killed_while_starting_is_replaced():
    with CodeExecutor(num_workers=1, timeout_s=TIMEOUT_S) as ex:
        os.kill(ex.pids[-1], signal.SIGKILL)  # the spare, still importing
        assert ex.run(["print(1)"]) == [ExecResult(True, "1\n", "")]
        assert _timeout(ex.run(["while True: pass"])[0])  # needs the (new) spare
        assert ex.run(["print(2)"]) == [ExecResult(True, "2\n", "")]


def test_results_in_input_order_and_programs_independent():
    programs = [f"v = {i}\nprint(v * v)" for i in range(200)]
    programs += ["secret = 5", "print(secret)", "open('f', 'w').write('x')",
                 "import os\nprint(os.listdir('.'))"]
    with CodeExecutor(num_workers=2, timeout_s=5.0) as ex:
        results = ex.run(programs)
        again = ex.run(["import random, numpy\nprint(random.random(), numpy.random.rand())"] * 4)
    assert [r.stdout for r in results[:200]] == [f"{i * i}\n" for i in range(200)]
    assert all(r.ok and r.error == "" for r in results[:200])
    assert results[201].error == "NameError: name 'secret' is not defined"
    assert results[203] == ExecResult(True, "[]\n", "")
    assert len({r.stdout for r in again}) == 1  # seeded per program, whichever worker ran it


def test_workers_are_not_recycled_because_the_parent_is_large():
    """A worker's peak memory is its own: a parent holding a big model (here 1 GiB of touched
    memory, more than a worker's 512 MB growth allowance) must not make every worker look over
    its limit and be replaced after each program (seconds per program instead of microseconds)."""
    ballast = b"x" * 2**30  # 1 GiB, written, so resident
    with CodeExecutor(num_workers=1, timeout_s=5.0) as ex:
        ex.run(["x = 1"])
        before = ex.pids
        ex.run([f"print({i})" for i in range(5)])
        assert ex.pids == before
    del ballast


def test_output_truncated_and_errors_on_one_line():
    with CodeExecutor(num_workers=1, timeout_s=5.0, max_output_chars=10) as ex:
        long, syntax, multi = ex.run(["print('a' * 5000)", "x = (1,\n",
                                      "raise ValueError('a\\nb')"])
    assert long == ExecResult(True, "a" * 10, "")
    assert syntax.error.startswith("SyntaxError: ") and "\n" not in syntax.error
    assert multi.error == "ValueError: a b"


def test_bad_arguments_say_what_was_wrong():
    with pytest.raises(ValueError, match="num_workers must be a positive int, got 0"):
        CodeExecutor(num_workers=0)
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        CodeExecutor(timeout_s=0)
    with CodeExecutor(num_workers=1) as ex:
        with pytest.raises(TypeError, match="single str"):
            ex.run("print(1)")
        with pytest.raises(TypeError, match="program 1 is int"):
            ex.run(["print(1)", 7])
        assert ex.run([]) == []
    with pytest.raises(RuntimeError, match="after close"):
        ex.run(["print(1)"])


def _gone(pid: int) -> bool:
    """True once the process has exited and been reaped (no zombie left)."""
    return not os.path.exists(f"/proc/{pid}")


def test_close_leaves_no_worker_or_zombie():
    ex = CodeExecutor(num_workers=2, timeout_s=0.5)
    ex.run(["while True: pass", "print(1)", "import os\nos._exit(1)"])
    pids = ex.pids
    assert len(pids) == 3 and all(not _gone(p) for p in pids)
    ex.close()
    assert all(_gone(p) for p in pids)
    assert not os.path.exists(ex._root)


def test_workers_outlive_the_thread_that_used_them():
    with CodeExecutor(num_workers=1, timeout_s=5.0) as ex:
        out = []
        t = threading.Thread(target=lambda: out.extend(ex.run(["print(2)"])))
        t.start()
        t.join()
        time.sleep(0.2)
        assert out == [ExecResult(True, "2\n", "")]
        assert ex.run(["print(3)"]) == [ExecResult(True, "3\n", "")]


def test_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from rstar_jax.steps.executor import CodeExecutor
        ex = CodeExecutor(num_workers=2, timeout_s=60)
        ex.run(["print(1)"])
        print(*ex.pids, flush=True)
        ex.run(["while True: pass"])  # killed while a program runs
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 3
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(p) for p in pids)


def test_a_worker_that_cannot_start_says_why():
    message = "(?s)failed to start.*No module named 'no_such_module_xyz'"
    with CodeExecutor(num_workers=1, preload=["no_such_module_xyz"]) as ex, pytest.raises(
        RuntimeError, match=message
    ):
        ex.run(["print(1)"])


def test_lazy_imports_and_system_files_still_work_in_the_sandbox():
    code = _program("""
        import scipy.stats, time, fractions, os
        print(round(scipy.stats.norm.cdf(0), 3), fractions.Fraction(3, 6), bool(time.strftime('%Z')))
        for path in ('/etc/shadow', '/etc/passwd', THIS_FILE):
            try:
                open(path).read()
                print('read', path)
            except (PermissionError, IsADirectoryError):
                pass
    """)
    code = code.replace("THIS_FILE", repr(os.path.abspath(__file__)))
    assert os.path.exists(os.path.abspath(__file__))
    with CodeExecutor(num_workers=1) as ex:
        assert ex.run([code]) == [ExecResult(True, "0.5 1/2 True\n", "")]


def test_a_host_runs_as_many_workers_as_its_cores_and_memory_allow(monkeypatch):
    from rstar_jax.steps.executor import host_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(208)))  # a v5p TPU VM host
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert host_workers(1024) == min(64, memory_mb // 2048)
    assert host_workers(1024, cap=300, reserve=8) <= 200
    assert host_workers(10**9) == 1  # memory for none: still one
    # two cores, both kept for the driver
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert host_workers(64) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert host_workers(64) == 6


def test_numpy_int_settings_reach_the_workers_as_ints():
    """The settings go to the workers as JSON: a NumPy int is taken as the int it holds."""
    import numpy as np

    with CodeExecutor(num_workers=np.int64(1), memory_mb=np.int64(1024),
                      max_output_chars=np.int32(100)) as ex:
        assert ex.run(["print(6 * 7)"])[0].stdout == "42\n"
