"""The first code a sandboxed process runs (``loops_runner.rl.sandbox``); stdlib only.

Started as ``python -I -S -B sandbox_child.py SETTINGS_JSON`` in a new session,
with the scratch directory as its working directory and ``HOME`` inside it. It
narrows what the process may do, then runs the program file:

1. namespaces, when the kernel lets it: a new user + network namespace (no
   network interface but a down loopback), else a network namespace alone;
2. resource limits: address space (memory), CPU seconds, file size, open
   files, no core dumps, and ``RLIMIT_NPROC`` (which the kernel does not
   enforce for root: the audit hook below counts processes as well);
3. an audit hook (PEP 578; code cannot remove it) that refuses: sockets,
   writes outside the scratch directory, loading ``ctypes`` (calling libc
   around the hook), running programs (``exec``, ``system``, ``posix_spawn``,
   ``subprocess``, which would leave the hooked interpreter), and forks
   beyond the process limit (counted across every process of the sandbox).

The first refusal is written to the violation file (``O_EXCL``: the first one
wins), so the parent reports the cause even when the program catches the
error and goes on (a fork bomb that ignores refused forks ends by timeout, and
is reported as ``processes``). The hook is a second fence, not a wall: code
running in CPython can in principle find ways around it; the namespaces, the
limits and the parent's timeout do not depend on it. For code that must not
escape, use a container runtime (``ContainerSandbox``).
"""

import errno
import json
import os
import resource
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.symlink", "os.link",
                "os.truncate", "os.chmod", "os.chown", "os.utime", "shutil.rmtree",
                "shutil.copyfile", "shutil.move"}
_PROGRAM_EVENTS = {"os.exec", "os.system", "os.posix_spawn", "os.spawn", "subprocess.Popen",
                   "os.startfile", "pty.spawn"}
_FORK_EVENTS = {"os.fork", "os.forkpty"}
_REFUSED_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess"}


def _isolate_network() -> str:
    """Enter new namespaces; say which isolation applies."""
    try:
        import ctypes  # before the hook refuses it; only to reach unshare(2)

        libc = ctypes.CDLL(None, use_errno=True)
        entered = libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0 \
            or libc.unshare(CLONE_NEWNET) == 0
    except (OSError, AttributeError):
        entered = False
    finally:
        # The program gets no ready-made ctypes: importing it again is refused.
        for name in [name for name in sys.modules if name.split(".")[0] in _REFUSED_IMPORTS]:
            del sys.modules[name]
    return "namespace" if entered else "interpreter"


def _limit(kind: int, value: int) -> None:
    soft, hard = value, value
    try:
        resource.setrlimit(kind, (soft, hard))
    except (ValueError, OSError):
        # An unprivileged process cannot raise a hard limit: keep the lower one.
        current = resource.getrlimit(kind)[1]
        if current != resource.RLIM_INFINITY:
            resource.setrlimit(kind, (min(value, current), current))


def _apply_limits(settings: dict) -> None:
    megabyte = 1024 * 1024
    _limit(resource.RLIMIT_AS, settings["memory_mb"] * megabyte)
    # Soft = the budget (SIGXCPU), hard one second later (SIGKILL).
    resource.setrlimit(resource.RLIMIT_CPU, (settings["cpu_s"], settings["cpu_s"] + 1))
    _limit(resource.RLIMIT_FSIZE, settings["file_size_mb"] * megabyte)
    _limit(resource.RLIMIT_NOFILE, settings["open_files"])
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_NPROC, settings["nproc_limit"])


class _Fence:
    """The audit hook's state: the scratch root, the counters, the violation file."""

    def __init__(self, settings: dict) -> None:
        self.root = os.path.realpath(settings["scratch"])
        self.violation_file = settings["violation_file"]
        self.fork_file = settings["fork_file"]
        self.max_processes = settings["max_processes"]
        self.network = settings["network"]
        self.inside = False  # the hook's own file work must not trigger it

    def record(self, kind: str, message: str) -> None:
        """Write the first violation (later ones keep the first)."""
        self.inside = True
        try:
            fd = os.open(self.violation_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, json.dumps({"kind": kind, "message": message}).encode())
            os.close(fd)
        except OSError:
            pass
        finally:
            self.inside = False

    def refuse(self, kind: str, message: str) -> None:
        self.record(kind, message)
        raise PermissionError(f"sandbox: {message}")

    def outside(self, path: object) -> bool:
        if isinstance(path, int):
            return False  # an already open descriptor
        try:
            name = os.fsdecode(path)  # type: ignore[arg-type]
        except TypeError:
            return False
        real = os.path.realpath(os.path.join(os.getcwd(), name))
        return real != self.root and not real.startswith(self.root + os.sep)

    def count_fork(self) -> None:
        self.inside = True
        try:
            fd = os.open(self.fork_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(fd, b".")
            size = os.fstat(fd).st_size
            os.close(fd)
        finally:
            self.inside = False
        if size > self.max_processes:
            self.refuse("processes", f"more than {self.max_processes} processes")

    def __call__(self, event: str, args: tuple) -> None:
        if self.inside:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and path is not None and self.outside(path):
                self.refuse("filesystem", f"writing {path!r} outside the scratch directory")
        elif event in _PATH_EVENTS:
            for path in args[:2]:
                if isinstance(path, (str, bytes, os.PathLike)) and self.outside(path):
                    self.refuse("filesystem",
                                f"{event} on {path!r} outside the scratch directory")
        elif event == "socket.__new__" and not self.network:
            self.refuse("network", "network access (socket creation)")
        elif event == "import" and args[0] == "_posixsubprocess":
            self.refuse("processes", "running programs (subprocess)")
        elif event == "import" and args[0] in _REFUSED_IMPORTS:
            self.refuse("forbidden", f"importing {args[0]}")
        elif event == "ctypes.dlopen":
            self.refuse("forbidden", "loading native libraries (ctypes)")
        elif event in _PROGRAM_EVENTS:
            self.refuse("processes", f"running programs ({event})")
        elif event in _FORK_EVENTS:
            self.count_fork()


def main() -> None:
    with open(sys.argv[1]) as handle:
        settings = json.load(handle)
    isolation = "none" if settings["network"] else _isolate_network()
    with open(settings["isolation_file"], "w") as handle:
        handle.write(isolation)
    _apply_limits(settings)
    fence = _Fence(settings)
    sys.addaudithook(fence)
    program = settings["program"]
    sys.argv = [program]
    sys.path.insert(0, os.path.dirname(program))
    with open(program) as handle:
        source = handle.read()
    try:
        exec(compile(source, program, "exec"), {"__name__": "__main__", "__file__": program})
    except MemoryError:
        fence.record("memory", "out of memory")
        os._exit(137)
    except SystemExit:
        raise
    except BaseException as error:
        # Python ignores SIGXFSZ: a write past RLIMIT_FSIZE raises EFBIG instead.
        if isinstance(error, OSError) and error.errno == errno.EFBIG:
            fence.record("output", "wrote past the file-size limit")
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
