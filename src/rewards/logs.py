"""How every process of the service logs: one line per record, to stderr, INFO and up."""

from __future__ import annotations

import logging
import sys


def configure_logging() -> None:
    """The ``rewards`` command's logging, also used by each ``serve --workers`` process."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
