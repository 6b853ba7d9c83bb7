"""ARCHITECTURE.md stays true: every file it names exists, every proxy module is described,
and the import names it gives are the installed ones."""

from __future__ import annotations

import re
import tomllib

from detect_stack.servers import ROOT

TEXT = (ROOT / "ARCHITECTURE.md").read_text()


def test_every_file_named_exists():
    named = set(re.findall(r"`([a-z_]+/[a-z_/]+\.(?:py|md|pbtxt))`", TEXT))
    assert len(named) > 30
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, missing


def test_every_proxy_module_is_described():
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "proxy").glob("*.py")
                     if p.name != "__init__.py")
    undescribed = [m for m in modules if f"| `{m}` |" not in TEXT]
    assert not undescribed, undescribed


def test_import_names_are_the_installed_ones():
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    for package, folder in mapping.items():
        assert f"`{folder}/` (`{package}`)" in TEXT or folder == "proxy", (folder, package)
    assert mapping["detect_proxy"] == "proxy"


def test_the_proxy_depends_on_no_other_part_of_the_project():
    """The proxy ships alone in its image: only its own modules and the generated stubs."""
    for path in (ROOT / "proxy").glob("*.py"):
        imports = re.findall(r"^\s*(?:from|import) (detect_\w+)", path.read_text(), re.M)
        assert not imports, (path.name, imports)
