"""Logging: to stderr (runtimes show it) or to a file; never to stdout, which is the result.

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
    handler: logging.Handler = (
        logging.FileHandler(file) if file else logging.StreamHandler(stream))
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s {os.path.basename(sys.argv[0])}[%(process)d] %(message)s"))
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    _configured = (file, stream)
    return logger


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
