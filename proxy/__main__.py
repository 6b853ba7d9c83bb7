"""``python -m detect_proxy`` (console script ``detect-proxy``)."""

from __future__ import annotations

import asyncio
import logging
import sys

from . import logs, memory, workers
from .config import parse
from .server import run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = parse(argv)
    logs.setup(config.log_level)
    if config.processes > 1:
        return workers.run(config, argv)
    memory.fix_malloc_mmap_threshold()
    try:
        asyncio.run(run(config))
    except OSError as exc:
        logging.getLogger(__name__).error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
