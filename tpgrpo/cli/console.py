"""What a failing command prints: the one-line message of a user mistake or a data fault, never
Prefect's tracebacks of it (they stay in the Prefect logs, and behind `tpgrpo --verbose`).

A flow whose task raises one of this package's errors makes Prefect log the failure up to four
times on the console, with tracebacks: the task's failure, its final state, the flow's "encountered
exception" and the flow's final state. The CLI then prints the same message once more as
`error: …`. `quiet_expected_failures` filters the console handlers (only those: the API handler
still sends everything to the Prefect server) so that for an *expected* failure — a `TpgrpoError`,
a storage I/O failure after its retries, a full disk — only the CLI's line is left. An unexpected
exception (a bug) keeps its traceback.
"""

from __future__ import annotations

import errno
import logging
import os

from tpgrpo.errors import TpgrpoError

VERBOSE_ENV = "TPGRPO_VERBOSE"


def verbose() -> bool:
    """Whether `tpgrpo --verbose` (or `TPGRPO_VERBOSE=1`) asked for tracebacks."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


def expected(exc: BaseException) -> bool:
    """A failure with a message meant for the user: this package's errors, storage I/O after retries,
    a full disk or quota."""
    from tpgrpo.storage.files import StorageIOError

    if isinstance(exc, TpgrpoError | StorageIOError):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _names() -> tuple[str, ...]:
    seen: list[type] = [TpgrpoError]
    out = []
    while seen:
        cls = seen.pop()
        out.append(cls.__name__)
        seen.extend(cls.__subclasses__())
    return (*out, "StorageIOError", "No space left on device", "Disk quota exceeded")


class QuietExpectedFailures(logging.Filter):
    """Drops Prefect's console records of an expected failure (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return not expected(exc)
        if not record.name.startswith("prefect."):
            return True
        message = record.getMessage()
        if "Finished in state Failed" in message or "encountered an exception" in message:
            return not any(name in message for name in _names())
        return True


def quiet_expected_failures() -> None:
    """Installs `QuietExpectedFailures` on every console handler Prefect configured (once; not with
    `--verbose`). Call it in a command before its flow runs."""
    if verbose():
        return
    import prefect  # noqa: F401  (importing Prefect configures its logging handlers)
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, QuietExpectedFailures) for f in handler.filters
            ):
                handler.addFilter(QuietExpectedFailures())
