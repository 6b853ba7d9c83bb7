"""``python -m proxy`` (console script ``detect-proxy``)."""

from __future__ import annotations

import asyncio
import logging
import sys

from .config import parse
from .server import run


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        asyncio.run(run(config))
    except OSError as exc:
        logging.getLogger("proxy").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
