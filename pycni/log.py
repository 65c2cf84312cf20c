"""Logging: to stderr (runtimes show it) or to a file; never to stdout, which is the result.

Credentials never reach a log: bearer tokens, `token` values and JWTs are replaced by
`<redacted>` in every line, tracebacks included. A log file is created 0600.
`logging` is imported on first use only: most plugin runs log nothing.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    import logging
    from typing import IO

_configured: tuple[str | None, object] | None = None  # (file, stream) of the current setup


def setup(level: str | None = None, file: str | None = None,
          stream: IO[str] | None = None) -> logging.Logger:
    """Configure the `pycni` logger: to `file` (default PYCNI_LOG_FILE) or else to `stream`
    (default stderr), at `level` (default PYCNI_LOG_LEVEL, else WARNING)."""
    import logging
    import sys

    global _configured
    logger = logging.getLogger("pycni")
    level = level or os.environ.get("PYCNI_LOG_LEVEL") or "WARNING"
    file = file or os.environ.get("PYCNI_LOG_FILE")
    stream = stream or sys.stderr
    if file:
        _create_private(file)
    handler: logging.Handler = (
        logging.FileHandler(file) if file else logging.StreamHandler(stream))
    handler.setFormatter(_redacting_formatter(
        f"%(asctime)s %(levelname)s {os.path.basename(sys.argv[0])}[%(process)d] %(message)s"))
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    _configured = (file, stream)
    return logger


def _create_private(file: str) -> None:
    """A new log file is root's only; an existing one keeps the mode its owner gave it."""
    from contextlib import suppress

    with suppress(OSError):  # the handler reports it when it opens the file
        os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))


# `Bearer <token>`, a `token` key's value (JSON, YAML, key=value), a JWT anywhere.
_SECRETS = (
    (r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]+=*", r"\1<redacted>"),
    (r"(?i)(\b[\w-]*token[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+", r"\1<redacted>"),
    (r"\beyJ[\w-]*\.[\w-]+\.[\w-]*", "<redacted>"),
)


def redact(text: str) -> str:
    """`text` without the credentials it may carry."""
    import re

    for pattern, replacement in _SECRETS:
        text = re.sub(pattern, replacement, text)
    return text


def _redacting_formatter(fmt: str) -> logging.Formatter:
    import logging

    class RedactingFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return redact(super().format(record))

    return RedactingFormatter(fmt)


def get(stream: IO[str] | None = None) -> logging.Logger:
    """The `pycni` logger; `stream` is where a run's logs go when no log file is set."""
    import logging

    if _configured is None or (_configured[0] is None and stream and _configured[1] is not stream):
        return setup(stream=stream)
    return logging.getLogger("pycni")


def reset() -> None:
    """Forget the setup (a forked child of `pycni daemon` logs to its caller's stderr)."""
    import logging

    global _configured
    _configured = None
    for old in list(logging.getLogger("pycni").handlers):
        logging.getLogger("pycni").removeHandler(old)
