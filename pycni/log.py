"""Logging: to stderr (runtimes show it) or to a file; never to stdout, which is the result.

`logging` is imported on first use only: most plugin runs log nothing.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    import logging

_configured = False


def setup(level: str | None = None, file: str | None = None) -> logging.Logger:
    """Configure the `pycni` logger; environment PYCNI_LOG_LEVEL / PYCNI_LOG_FILE by default."""
    import logging
    import sys

    global _configured
    logger = logging.getLogger("pycni")
    level = level or os.environ.get("PYCNI_LOG_LEVEL") or "WARNING"
    file = file or os.environ.get("PYCNI_LOG_FILE")
    handler: logging.Handler = (
        logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s {os.path.basename(sys.argv[0])}[%(process)d] %(message)s"))
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    _configured = True
    return logger


def get() -> logging.Logger:
    import logging

    if not _configured:
        return setup()
    return logging.getLogger("pycni")
