# mypy: ignore-errors
# (Runs under the sandbox's own python3, which may be older than the node's; kept free of annotations.)
"""The supervisor that runs inside a sandbox: spawns commands for the node, streams their output.

This file is executed by the sandbox's own ``python3`` (``python3 -I -S -c <this source>``),
so it uses the standard library only and never imports edgenode. It talks to the
node over its stdin and stdout, one JSON object per line, and is single-threaded
(a ``selectors`` loop), which keeps ``preexec_fn`` safe for setting rlimits.

Node to guest::

    {"op": "spawn", "id", "argv", "cwd", "env", "stdin" (base64 or null), "rlimits", "cap"}
    {"op": "spawn", "id", "code", ...}  Python source run in a fork of this interpreter
    {"op": "spawn", ..., "pty": [rows, cols]}  argv on a new terminal (output as fd 1)
    {"op": "input", "id", "data"}     bytes (base64) to a terminal command's keyboard
    {"op": "resize", "id", "rows", "cols"}
    {"op": "signal", "id", "sig", "foreground"?}  signal the command's process group (or its terminal's
                                      foreground one)
    {"op": "shutdown"}

Guest to node::

    {"ev": "ready", "pid"}
    {"ev": "started", "id", "pid"}
    {"ev": "out", "id", "fd", "data" (base64)}
    {"ev": "truncated", "id", "fd"}
    {"ev": "exit", "id", "code", "signal"}
    {"ev": "failed", "id", "message"}        the command could not be started

The supervisor is PID 1 of the sandbox (``bwrap --as-pid-1``): signals from inside
cannot kill it, it reaps orphans, and no bwrap process inside holds the pipes to the
node. It makes itself non-dumpable, so commands (same uid) cannot open those pipes
through ``/proc``.

When the node grants network access, the guest also listens on 127.0.0.1:3128 and
copies every connection to the egress proxy's Unix socket bind-mounted at
``/run/edgenode/proxy.sock``: the sandbox keeps no network interface but loopback.
"""

import base64
import builtins
import fcntl
import json
import os
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import termios

PROXY_SOCKET = "/run/edgenode/proxy.sock"
PROXY_PORT = 3128
READ_SIZE = 65536

_RLIMITS = {
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
    "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "core": resource.RLIMIT_CORE,
}

sel = selectors.DefaultSelector()
out_fd = sys.stdout.fileno()
procs = {}  # id -> Command


def emit(msg):
    """Write one protocol line to the node; blocking, so a slow node slows the sandbox, never loses data."""
    data = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
    view = memoryview(data)
    while view:
        n = os.write(out_fd, view)
        view = view[n:]


def set_limits(limits):
    """Apply rlimits named as in _RLIMITS (soft and hard alike)."""
    for name, value in limits.items():
        if name in _RLIMITS and value is not None:
            resource.setrlimit(_RLIMITS[name], (int(value), int(value)))


class Command:
    """One spawned command: its pipes, its output budget and its exit."""

    def __init__(self, cid, msg):
        self.id = cid
        self.cap = int(msg.get("cap") or 0)
        self.sent = {1: 0, 2: 0}
        self.truncated = {1: False, 2: False}
        self.open_pipes = 0
        self.exited = None
        self.reported = False
        limits = msg.get("rlimits") or {}
        stdin_data = msg.get("stdin")
        self.stdin_buf = base64.b64decode(stdin_data) if stdin_data is not None else None
        self.master = None
        if msg.get("pty"):
            self.start_on_terminal(msg, limits)
            return
        if msg.get("code") is not None:
            self.proc = ForkedPython(msg["code"], msg.get("cwd") or "/workspace", msg.get("env") or {},
                                     limits, self.stdin_buf is not None)
        else:
            self.proc = subprocess.Popen(
                msg["argv"],
                cwd=msg.get("cwd") or "/workspace",
                env=msg.get("env") or {},
                stdin=subprocess.PIPE if self.stdin_buf is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=lambda: set_limits(limits),
                close_fds=True,
            )
        for fd_no, pipe in ((1, self.proc.stdout), (2, self.proc.stderr)):
            os.set_blocking(pipe.fileno(), False)
            sel.register(pipe.fileno(), selectors.EVENT_READ, ("out", self, fd_no, pipe))
            self.open_pipes += 1
        if self.stdin_buf is not None:
            os.set_blocking(self.proc.stdin.fileno(), False)
            if self.stdin_buf:
                sel.register(self.proc.stdin.fileno(), selectors.EVENT_WRITE, ("in", self))
            else:
                self.proc.stdin.close()
        self.pidfd = os.pidfd_open(self.proc.pid)
        sel.register(self.pidfd, selectors.EVENT_READ, ("exit", self))

    def start_on_terminal(self, msg, limits):
        """Run argv as the session leader of a new terminal; its output arrives as fd 1."""
        master, slave = os.openpty()
        rows, cols = msg["pty"]
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", int(rows), int(cols), 0, 0))

        def child():
            set_limits(limits)
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            self.proc = subprocess.Popen(msg["argv"], cwd=msg.get("cwd") or "/workspace", env=msg.get("env") or {},
                                         stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                         preexec_fn=child, close_fds=True)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.master = os.fdopen(master, "r+b", buffering=0)
        os.set_blocking(master, False)
        sel.register(master, selectors.EVENT_READ, ("out", self, 1, self.master))
        self.open_pipes = 1
        self.pidfd = os.pidfd_open(self.proc.pid)
        sel.register(self.pidfd, selectors.EVENT_READ, ("exit", self))

    def on_input(self, data):
        """Keystrokes for a terminal command (a blocking write: a terminal's buffer drains as it reads)."""
        if self.master is None or self.master.closed:
            return
        view = memoryview(data)
        os.set_blocking(self.master.fileno(), True)
        try:
            while view:
                view = view[os.write(self.master.fileno(), view):]
        except OSError:
            pass
        finally:
            if not self.master.closed:
                os.set_blocking(self.master.fileno(), False)

    def resize(self, rows, cols):
        if self.master is not None and not self.master.closed:
            fcntl.ioctl(self.master.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def on_output(self, fd_no, pipe):
        try:
            data = os.read(pipe.fileno(), READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            sel.unregister(pipe.fileno())
            pipe.close()
            self.open_pipes -= 1
            self.maybe_finish()
            return
        if self.cap:
            room = self.cap - self.sent[fd_no]
            if room <= 0:
                # Keep draining so the command never blocks on a full pipe; drop what is past the cap.
                if not self.truncated[fd_no]:
                    self.truncated[fd_no] = True
                    emit({"ev": "truncated", "id": self.id, "fd": fd_no})
                return
            data = data[:room]
        self.sent[fd_no] += len(data)
        emit({"ev": "out", "id": self.id, "fd": fd_no, "data": base64.b64encode(data).decode()})

    def on_stdin(self):
        try:
            n = os.write(self.proc.stdin.fileno(), self.stdin_buf[:READ_SIZE])
        except BlockingIOError:
            return
        except OSError:
            n = len(self.stdin_buf)
        self.stdin_buf = self.stdin_buf[n:]
        if not self.stdin_buf:
            sel.unregister(self.proc.stdin.fileno())
            self.proc.stdin.close()

    def on_exit(self):
        sel.unregister(self.pidfd)
        os.close(self.pidfd)
        self.exited = self.proc.wait()
        # Background children may keep the pipes open after the leader exits: report the
        # exit once output is drained or the pipes close, whichever comes first.
        self.maybe_finish(force=True)

    def maybe_finish(self, force=False):
        # Draining at the exit closes pipes, which calls back here: report the exit once.
        if self.exited is None or self.reported:
            return
        if self.open_pipes and not force:
            return
        if self.open_pipes and force:
            # Drain whatever is already buffered, then stop watching pipes held by orphans.
            for key in list(sel.get_map().values()):
                if key.data[0] == "out" and key.data[1] is self:
                    _, _, fd_no, pipe = key.data
                    while True:
                        before = self.sent[fd_no]
                        self.on_output(fd_no, pipe)
                        if pipe.closed or self.sent[fd_no] == before:
                            break
                    if not pipe.closed:
                        sel.unregister(pipe.fileno())
                        pipe.close()
        if self.stdin_buf:
            try:
                sel.unregister(self.proc.stdin.fileno())
            except (KeyError, ValueError):
                pass
        if self.reported:
            return
        self.reported = True
        code = self.exited
        sig = -code if code < 0 else None
        emit({"ev": "exit", "id": self.id, "code": 128 + sig if sig else code, "signal": sig})
        procs.pop(self.id, None)

    def signal(self, sig, foreground=False):
        pgid = self.proc.pid
        if foreground and self.master is not None and not self.master.closed:
            try:
                pgid = os.tcgetpgrp(self.master.fileno())  # the job in front, as Ctrl-C would reach it
            except OSError:
                pass
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class ForkedPython:
    """Python source run as ``python3 -c`` would, in a fork of this already-started interpreter.

    Starting python3 costs tens of milliseconds; a fork costs well under one. The child
    keeps nothing of the supervisor: its descriptors are closed but for new stdio pipes,
    it gets a session, rlimits, cwd and environment of its own and a fresh ``__main__``.
    It stays non-dumpable, as the supervisor is (fork keeps the flag, only exec resets it).
    """

    def __init__(self, code, cwd, env, limits, with_stdin):
        in_r, in_w = os.pipe() if with_stdin else (os.open(os.devnull, os.O_RDONLY), None)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        # A start error (a missing cwd) is found before the fork, as Popen reports it.
        if not os.path.isdir(cwd):
            for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
                if fd is not None:
                    os.close(fd)
            raise FileNotFoundError(2, "No such file or directory", cwd)
        self.pid = os.fork()
        if self.pid == 0:
            _run_forked(code, cwd, env, limits, in_r, out_w, err_w)
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        self.stdin = os.fdopen(in_w, "wb", buffering=0) if in_w is not None else None
        self.stdout = os.fdopen(out_r, "rb", buffering=0)
        self.stderr = os.fdopen(err_r, "rb", buffering=0)
        self.returncode = None

    def wait(self):
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _run_forked(code, cwd, env, limits, in_r, out_w, err_w):
    """The child of :class:`ForkedPython`: never returns."""
    status = 1
    try:
        os.setsid()
        os.dup2(in_r, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        set_limits(limits)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")
        sys.argv = ["-c"]
        sys.path.insert(0, "")
        import types

        main = types.ModuleType("__main__")
        main.__builtins__ = builtins
        sys.modules["__main__"] = main
        exec(compile(code, "<string>", "exec"), main.__dict__)
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except BaseException:
        import traceback

        kind, value, tb = sys.exc_info()
        # From the code's own frames, as python3 -c shows it: not this function's.
        traceback.print_exception(kind, value, tb.tb_next if tb is not None else None)
    try:
        import atexit

        atexit._run_exitfuncs()
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(status)


def _exit_status(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:
        pass
    return 1


class Relay:
    """One forwarded proxy connection: bytes both ways between a loopback client and the proxy socket."""

    def __init__(self, client):
        self.client = client
        self.upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.upstream.connect(PROXY_SOCKET)
        for s in (self.client, self.upstream):
            s.setblocking(False)
        self.pending = {self.client: b"", self.upstream: b""}  # bytes waiting to be written to the key
        self.peer = {self.client: self.upstream, self.upstream: self.client}
        self.eof = set()
        for s in (self.client, self.upstream):
            sel.register(s, selectors.EVENT_READ, ("relay", self))

    def on_event(self, sock, mask):
        if mask & selectors.EVENT_WRITE:
            self.flush(sock)
        if mask & selectors.EVENT_READ:
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.eof.add(sock)
                self.flush(self.peer[sock])
                return
            peer = self.peer[sock]
            self.pending[peer] += data
            self.flush(peer)

    def flush(self, sock):
        """Write what is pending for ``sock``; pass an EOF on once its backlog is gone."""
        if sock.fileno() < 0:
            return
        data = self.pending[sock]
        if data:
            try:
                n = sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                self.close()
                return
            self.pending[sock] = data[n:]
        if not self.pending[sock] and self.peer[sock] in self.eof:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if len(self.eof) == 2 and not any(self.pending.values()):
                self.close()
                return
        self.watch(sock)
        self.watch(self.peer[sock])

    def watch(self, sock):
        if sock.fileno() < 0:
            return
        mask = 0
        # Stop reading from a side while its peer still has a backlog: bounded buffers.
        if sock not in self.eof and len(self.pending[self.peer[sock]]) < 4 * READ_SIZE:
            mask |= selectors.EVENT_READ
        if self.pending[sock]:
            mask |= selectors.EVENT_WRITE
        try:
            if mask:
                sel.modify(sock, mask, ("relay", self))
            else:
                sel.unregister(sock)
        except KeyError:
            if mask:
                sel.register(sock, mask, ("relay", self))

    def close(self):
        for s in (self.client, self.upstream):
            try:
                sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()


def reap_orphans():
    """As PID 1 of the sandbox, reap exited processes that are not our own commands.

    Commands are reaped through their pidfds; anything else (a daemon whose parent died)
    is re-parented to us and would otherwise stay a zombie, holding a pid of the limit.
    """
    ours = {cmd.proc.pid for cmd in procs.values()}
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid in ours:
            # Our own command is next in line: its pidfd will report it, then we look again.
            return
        try:
            os.waitpid(info.si_pid, os.WNOHANG)
        except ChildProcessError:
            return


def start_forwarder():
    """Listen on loopback for the proxy bridge."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", PROXY_PORT))
    listener.listen(64)
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, ("accept", listener))


def on_control(buf):
    """Read control lines from the node; False once it has gone."""
    try:
        data = os.read(0, READ_SIZE * 4)
    except BlockingIOError:
        return buf, True
    if not data:
        return buf, False
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        if line.strip():
            handle(json.loads(line))
    return buf, True


def handle(msg):
    """Carry out one control message."""
    op = msg.get("op")
    if op == "spawn":
        cid = msg["id"]
        try:
            procs[cid] = Command(cid, msg)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            emit({"ev": "failed", "id": cid, "message": str(exc)})
            return
        emit({"ev": "started", "id": cid, "pid": procs[cid].proc.pid})
    elif op == "signal":
        cmd = procs.get(msg["id"])
        if cmd is not None:
            cmd.signal(int(msg.get("sig") or signal.SIGKILL), bool(msg.get("foreground")))
    elif op == "input":
        cmd = procs.get(msg["id"])
        if cmd is not None:
            cmd.on_input(base64.b64decode(msg.get("data") or ""))
    elif op == "resize":
        cmd = procs.get(msg["id"])
        if cmd is not None:
            cmd.resize(max(1, min(int(msg["rows"]), 1000)), max(1, min(int(msg["cols"]), 1000)))
    elif op == "shutdown":
        for cmd in list(procs.values()):
            cmd.signal(signal.SIGKILL)
        sys.exit(0)


def main():
    """Run the supervisor until the node closes its stdin."""
    config = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    # Not dumpable: commands run as the same uid, and must not reach this process's pipes to the
    # node through /proc/<pid>/fd (to forge events) or inspect it.
    try:
        import ctypes
    except ImportError as exc:  # an image whose python3 lacks ctypes (libffi): refuse rather than run exposed
        sys.exit(f"edgenode supervisor: this python3 has no working ctypes ({exc}), needed to protect the "
                 "supervisor from the sandbox's commands")
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass
    set_limits(config.get("rlimits") or {})
    os.set_blocking(0, False)
    sel.register(0, selectors.EVENT_READ, ("control",))
    if config.get("proxy"):
        start_forwarder()
    if config.get("preload"):
        preload()
    emit({"ev": "ready", "pid": os.getpid()})
    if not config.get("preload"):
        preload()  # once ready, so only a command that comes at once waits for it
    buf = b""
    while True:
        reap_orphans()
        buf, alive = dispatch(sel.select(timeout=1.0), buf)
        if not alive:
            return


def preload():
    """The site-packages paths python3 -c would have, inherited by every fork that runs Python source."""
    try:
        import site

        site.main()
    except Exception:
        pass


def dispatch(ready, buf):
    """Handle one ``select()`` batch; returns the control buffer and whether the node is still there.

    An event earlier in the batch may unregister or close what a later one is about (a
    command's exit drains and closes its pipes, whose own events are in the same batch):
    such stale events are skipped. The selector is level-triggered, so anything still
    pending is reported again by the next ``select()``.
    """
    for key, mask in ready:
        if sel.get_map().get(key.fd) is not key:
            continue
        kind = key.data[0]
        if kind == "control":
            buf, alive = on_control(buf)
            if not alive:
                # The node went away: take every command down with us.
                for cmd in list(procs.values()):
                    cmd.signal(signal.SIGKILL)
                return buf, False
        elif kind == "out":
            _, cmd, fd_no, pipe = key.data
            cmd.on_output(fd_no, pipe)
        elif kind == "in":
            key.data[1].on_stdin()
        elif kind == "exit":
            key.data[1].on_exit()
        elif kind == "accept":
            try:
                client, _ = key.data[1].accept()
            except OSError:
                continue
            try:
                Relay(client)
            except OSError:
                client.close()
        elif kind == "relay":
            key.data[1].on_event(key.fileobj, mask)
    return buf, True


if __name__ == "__main__":
    main()
