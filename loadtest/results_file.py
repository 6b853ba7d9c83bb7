"""What a benchmark leaves behind: its JSON (with the exact command and the machine it ran
on, so a figure can be traced and repeated) and a short markdown table, also printed."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo
                         if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def environment() -> dict[str, Any]:
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform()}


def write(out: Path, stem: str, data: dict[str, Any], markdown: str) -> None:
    """``out/stem.json`` and ``out/stem.md``; the markdown is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
