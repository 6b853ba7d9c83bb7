"""The README documents every setting the code has."""

from __future__ import annotations

from dataclasses import fields

from localtriton.options import _FLAGS
from proxy.config import ProxyConfig, env_name
from servers import ROOT

README = (ROOT / "README.md").read_text()


def test_every_proxy_setting_is_documented():
    for f in fields(ProxyConfig):
        assert f"`--{f.name.replace('_', '-')}` | `{env_name(f.name)}`" in README, f.name


def test_every_localtriton_flag_is_documented():
    for flag, *_ in _FLAGS:
        assert f"| `{flag}` |" in README, flag


def test_first_screen_has_exactly_the_two_setup_commands():
    first_screen = "\n".join(README.splitlines()[:25])
    assert first_screen.count("make run") == 1 and first_screen.count("make test") == 1
