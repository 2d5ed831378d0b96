"""Schema validation in a worker process, under a time budget.

A schema is the user's program: nested `anyOf`/`$ref` can make one validation take
exponential time, and a thread cannot be stopped (and would share the GIL with the event
loop). So validation runs in a child process (`python -m fpcd.services.schema_worker`)
that fpcd talks to over a pipe: one request at a time, each answered within the budget or
the child is killed (which really stops the CPU work) and a new one started for the next
request. The event loop only waits on a pipe meanwhile.

Frames are a 4-byte big-endian length and a JSON body (integers of any size survive).
Request: `{key, schema?, documents, prefix}` (the schema is sent only when this child
has not compiled `key` yet) or `{key, check: true, schema}`; answer: `{errors: [[[path,
message], ...] per document]}`, `{problems: [...]}`, `{missing: true}` or `{failed:
reason}`; the child says `{ready: true}` once started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import time
from collections import OrderedDict
from typing import IO, Any, BinaryIO

import msgspec

from fpcd.domain.errors import FieldError, Invalid

log = logging.getLogger("fpcd.schemas")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])

#: Compiled schemas a worker keeps (least recently used dropped first).
CACHED_SCHEMAS = 64
#: Address space of a worker: a schema that makes validation allocate without end fails
#: the write instead of growing the host's memory.
MEMORY_LIMIT = 1 << 30
#: A new worker gets this long to start (not counted in any validation's budget).
START_TIMEOUT = 60.0


class ValidationFailed(Invalid):
    """A write whose validation could not finish: too slow, or the worker failed."""


def _frame(message: dict[str, Any]) -> bytes:
    body = _encoder.encode(message)
    return len(body).to_bytes(4, "big") + body


# -- the child ------------------------------------------------------------------------


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    from fpcd.domain.configs import SchemaValidator, schema_problems

    cache: OrderedDict[str, SchemaValidator] = OrderedDict()
    stdout.write(_frame({"ready": True}))
    stdout.flush()
    while (header := _read_exactly(stdin, 4)) is not None:
        body = _read_exactly(stdin, int.from_bytes(header, "big"))
        if body is None:
            return
        request = _decoder.decode(body)
        key = request["key"]
        try:
            if request.get("check"):
                problems = schema_problems(request["schema"])
                answer: dict[str, Any] = {"problems": [[e.path, e.message] for e in problems]}
                if not problems:
                    cache[key] = SchemaValidator(request["schema"])
                stdout.write(_frame(answer))
                stdout.flush()
                continue
            if request.get("schema") is not None:
                cache[key] = SchemaValidator(request["schema"])
            validator = cache.get(key)
            if validator is None:
                answer = {"missing": True}
            else:
                cache.move_to_end(key)
                while len(cache) > CACHED_SCHEMAS:
                    cache.popitem(last=False)
                answer = {
                    "errors": [
                        [[e.path, e.message] for e in validator.errors(doc, request["prefix"])]
                        for doc in request["documents"]
                    ]
                }
        except MemoryError:
            cache.clear()
            answer = {"failed": "validation ran out of memory"}
        except RecursionError:
            answer = {"failed": "validation nested too deeply"}
        except Exception as error:  # a schema the checks let through but jsonschema refuses
            answer = {"failed": f"validation failed: {type(error).__name__}: {error}"[:500]}
        stdout.write(_frame(answer))
        stdout.flush()


def main() -> None:
    import resource
    import signal

    # Ctrl-C in a terminal reaches the whole process group: the daemon decides when this
    # child ends (it closes the pipe), so no traceback here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    serve(sys.stdin.buffer, sys.stdout.buffer)


# -- the daemon's side ------------------------------------------------------------------


class SchemaRunner:
    """Validates documents against a schema in the worker, one request at a time.

    The child is started with `subprocess.Popen` (vfork: microseconds, where a fork of a
    large daemon from the event loop took tens of milliseconds) and spoken to with
    blocking pipe I/O in a thread, so the event loop never does more than wait."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._compiled: set[str] = set()
        self._lock = asyncio.Lock()
        self._closed = False
        #: For /metrics and tests: requests answered, budgets exceeded.
        self.validations = 0
        self.timeouts = 0

    async def _start(self) -> subprocess.Popen[bytes]:
        proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "fpcd.services.schema_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            ready = await asyncio.wait_for(asyncio.to_thread(self._receive, proc), START_TIMEOUT)
        except BaseException:
            await self._kill(proc)
            raise
        if not ready.get("ready"):
            await self._kill(proc)
            raise ValidationFailed("the schema validator did not start", errors=[])
        self._compiled.clear()
        return proc

    @staticmethod
    def _receive(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        """Blocking: one frame from the worker (EOFError when it is gone)."""
        assert proc.stdout is not None
        header = _read_exactly(proc.stdout, 4)
        body = _read_exactly(proc.stdout, int.from_bytes(header, "big")) if header else None
        if body is None:
            raise EOFError("the schema validator ended")
        return _decoder.decode(body)

    @staticmethod
    def _send(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(_frame(message))
        proc.stdin.flush()

    @staticmethod
    async def _kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.to_thread(proc.wait)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    async def errors(
        self,
        key: str,
        schema: dict[str, Any],
        documents: list[dict[str, Any]],
        *,
        prefix: str,
        budget: float,
    ) -> list[list[FieldError]]:
        """The errors of each document; ValidationFailed when the budget (seconds of
        validation, not counting a wait for an earlier request) runs out."""
        request: dict[str, Any] = {"key": key, "documents": documents, "prefix": prefix}
        answer = await self._ask(request, schema, prefix, budget, "validating against the schema")
        return [[FieldError(p, m) for p, m in found] for found in answer["errors"]]

    async def check(self, key: str, schema: dict[str, Any], *, budget: float) -> list[FieldError]:
        """`compile_schema`'s checks (the meta-schema check alone can take seconds for a
        large schema), in the worker; it keeps the compiled schema when it passes."""
        request: dict[str, Any] = {"key": key, "check": True, "schema": schema}
        answer = await self._ask(request, schema, "$.schema", budget, "checking the schema")
        return [FieldError(p, m) for p, m in answer["problems"]]

    async def _ask(
        self, request: dict[str, Any], schema: dict[str, Any], prefix: str, budget: float, what: str
    ) -> dict[str, Any]:
        key = request["key"]
        async with self._lock:
            if self._closed:
                raise ValidationFailed("the daemon is stopping", errors=[])
            if self._proc is None or self._proc.poll() is not None:
                self._proc = await self._start()
            proc = self._proc
            if key not in self._compiled:
                request["schema"] = schema
            started = time.monotonic()
            try:
                answer = await asyncio.wait_for(
                    asyncio.to_thread(self._exchange, proc, request, schema), budget
                )
            except TimeoutError:
                self.timeouts += 1
                self._proc = None
                await self._kill(proc)
                log.warning(
                    "schema validation exceeded its budget; the worker was stopped",
                    extra={"schema": key[:12], "budget_s": budget},
                )
                raise ValidationFailed(
                    f"{what} took longer than {budget:g} s"
                    " (limits.schema_validation_timeout): simplify the schema or the document",
                    errors=[FieldError(prefix, "validation exceeded its time budget")],
                ) from None
            except (EOFError, OSError):
                self._proc = None
                await self._kill(proc)
                raise ValidationFailed(
                    "the schema validator stopped while validating (out of memory?)",
                    errors=[FieldError(prefix, "validation could not finish")],
                ) from None
            self.validations += 1
            if "failed" in answer:
                raise ValidationFailed(
                    f"the document could not be validated: {answer['failed']}",
                    errors=[FieldError(prefix, str(answer["failed"]))],
                )
            if "errors" in answer or not answer.get("problems"):
                self._compiled.add(key)
            log.debug(
                "schema validation",
                extra={"what": what, "ms": round((time.monotonic() - started) * 1000, 1)},
            )
            return answer

    def _exchange(
        self, proc: subprocess.Popen[bytes], request: dict[str, Any], schema: dict[str, Any]
    ) -> dict[str, Any]:
        """Blocking, in a thread: a timeout kills the worker, which ends the read here."""
        self._send(proc, request)
        answer = self._receive(proc)
        if answer.get("missing"):  # the worker dropped it from its cache: send it again
            self._send(proc, {**request, "schema": schema})
            answer = self._receive(proc)
        return answer

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the worker ends at end of input
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(proc.wait), 5)
        await self._kill(proc)


if __name__ == "__main__":
    main()
