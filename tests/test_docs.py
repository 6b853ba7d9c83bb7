"""The README documents every setting the code has."""

from __future__ import annotations

from dataclasses import fields

from detect_localtriton.options import _FLAGS
from detect_localtriton.tritonserver import build_parser as tritonserver_parser
from detect_proxy.config import ProxyConfig, env_name
from detect_stack.servers import ROOT

README = (ROOT / "README.md").read_text()


def test_every_proxy_setting_is_documented():
    for f in fields(ProxyConfig):
        assert f"`--{f.name.replace('_', '-')}` | `{env_name(f.name)}`" in README, f.name


def test_every_localtriton_flag_is_documented():
    for flag, *_ in _FLAGS:
        assert f"| `{flag}` |" in README, flag


def test_every_tritonserver_launcher_flag_is_documented():
    flags = [a.option_strings[0] for a in tritonserver_parser()._actions if a.dest != "help"]
    assert flags
    for flag in flags:
        assert f"| `{flag}` |" in README, flag


def test_first_screen_has_exactly_the_two_setup_commands():
    first_screen = "\n".join(README.splitlines()[:25])
    block = first_screen.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
