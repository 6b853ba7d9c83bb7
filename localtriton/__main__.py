"""``python -m detect_localtriton --model-repository model_repository --grpc-port 8101``."""

from __future__ import annotations

import asyncio
import logging
import sys

from .errors import ModelConfigError
from .options import parse
from .server import run


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if options.log_verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        asyncio.run(run(options))
    except ModelConfigError as exc:
        logging.getLogger(__name__).error("cannot load model repository: %s", exc)
        return 1
    except OSError as exc:
        logging.getLogger(__name__).error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
