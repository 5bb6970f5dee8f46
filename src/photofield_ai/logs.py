"""Logging set-up shared by every process of the server."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # uvicorn's own start/stop lines repeat ours; its warnings and errors stay.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
