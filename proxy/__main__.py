"""``python -m proxy`` (console script ``detect-proxy``)."""

from __future__ import annotations

import asyncio
import logging
import sys

from . import logs, memory
from .config import parse
from .server import run


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    logs.setup(config.log_level)
    memory.fix_malloc_mmap_threshold()
    try:
        asyncio.run(run(config))
    except OSError as exc:
        logging.getLogger("proxy").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
