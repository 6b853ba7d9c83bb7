"""`python -m detect_envoy.render --help` documents every setting with its default, so that
an operator never has to read settings.py to know what Envoy will do."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import MISSING, fields

from detect_envoy import render
from detect_envoy.settings import StackConfig


def _help() -> str:
    # Wide enough that argparse never wraps a flag's help over several lines.
    env = {**os.environ, "COLUMNS": "1000"}
    out = subprocess.run([sys.executable, "-m", "detect_envoy.render", "--help"], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout


def _entries(text: str) -> dict[str, str]:
    """Each option of --help (its first flag) -> its help text on one line."""
    entries: dict[str, str] = {}
    flag = None
    for line in text.split("options:", 1)[1].splitlines():
        if line.strip().startswith("-"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line.strip()
        elif flag and line.strip():
            entries[flag] += " " + line.strip()
    return entries


def test_every_setting_is_in_help_with_its_default():
    entries = _entries(_help())
    for f in fields(StackConfig):
        flag = render._flag(f)
        line = entries.get(flag)
        assert line is not None, f"{flag} ({f.name}) missing from --help"
        default = render._default(f)
        if default is MISSING:
            assert "(required)" in line, line
        else:
            assert render._shown(default).strip() in line, line  # "(default: ...)"


def test_only_the_upstreams_are_required():
    required = {f.name for f in fields(StackConfig) if render._default(f) is MISSING}
    assert required == {"proxies", "tritons"}
