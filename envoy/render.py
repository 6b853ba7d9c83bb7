"""Render Envoy's configuration from a few settings, and validate it with Envoy itself.

One Envoy process has:
- the front listener (TLS, limits, routing to the proxies) and the Triton egress listener on
  loopback for the proxies (listeners.py), over the proxy and Triton clusters (clusters.py);
- the local rate-limit tiers of the front listener and their runtime keys (ratelimits.py);
- the admin interface, on loopback only;
- the tags Envoy's stats carry as Prometheus labels (stats.stats_config);
- optionally (``--ops-port``) a plaintext operations listener for a pod or a host: Envoy's
  ``/stats/prometheus``, the proxy's ``/metrics`` and the proxies' gRPC health ``Check``,
  and nothing else of the admin interface, for scrapers and probes that cannot reach
  loopback.

The settings and their defaults are in settings.py (``--help`` lists them). This module puts
the parts together into a bootstrap, writes it as YAML and runs ``envoy --mode validate``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from detect_envoy import ratelimits
from detect_envoy.certs import SDS_FILE
from detect_envoy.clusters import ops_clusters, proxy_cluster, triton_clusters
from detect_envoy.listeners import egress_listener, front_listener, ops_listener
from detect_envoy.settings import StackConfig
from detect_envoy.stats import stats_config
from detect_envoy.typed import address, extension

__all__ = ["SDS_FILE", "StackConfig", "render", "to_yaml", "validate", "build_parser", "main"]


def render(config: StackConfig) -> dict[str, Any]:
    """The bootstrap of one Envoy, static resources only."""
    listeners = [front_listener(config), egress_listener(config)]
    clusters = [proxy_cluster(config), *triton_clusters(config)]
    if config.ops_port:
        listeners.append(ops_listener(config))
        clusters += ops_clusters(config)
    return {
        "node": {"id": "detect-edge", "cluster": "detect"},
        "admin": {
            "address": address(f"127.0.0.1:{config.admin_port}"),
            "access_log": [extension("envoy.access_loggers.file", "FileAccessLog",
                                     path="/dev/null")],
        },
        "static_resources": {"listeners": listeners, "clusters": clusters},
        "stats_config": stats_config(),
        "overload_manager": {"resource_monitors": [extension(
            "envoy.resource_monitors.global_downstream_max_connections",
            "DownstreamConnectionsConfig", max_active_downstream_connections=50000)]},
        "layered_runtime": {"layers": [
            {"name": "static", "static_layer": ratelimits.runtime_defaults()},
            {"name": "admin", "admin_layer": {}},
        ]},
    }


class _Dumper(yaml.SafeDumper):
    """Block YAML as a reviewer reads it: lists indented under their key, and no anchors
    for parts the renderer happens to share (each is written out where it applies)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def to_yaml(bootstrap: dict[str, Any]) -> str:
    """The bootstrap as YAML, keys in the renderer's order."""
    return yaml.dump(bootstrap, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=100)


def validate(path: Path, envoy: str = "envoy") -> None:
    """Envoy's own check: the same binary parses and instantiates the whole config."""
    result = subprocess.run([envoy, "--mode", "validate", "-c", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"envoy rejected {path}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


# ---------------------------------------------------------------- command line


def _flag(f: Field[Any]) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.metadata.get("cli_default", MISSING)


def _shown(default: Any) -> str:
    """How --help shows a setting's default (or that it has none and must be given)."""
    if default is MISSING:
        return " (required)"
    if isinstance(default, bool):
        text = "on" if default else "off"
    elif isinstance(default, list):
        text = ", ".join(default)
    else:
        text = str(default) or '""'
    return f" (default: {text})"


def _add_setting(parser: argparse.ArgumentParser, f: Field[Any], kind: Any) -> None:
    """One flag per StackConfig field, its help and default taken from the field."""
    help_text = f.metadata["help"].replace("%", "%%")
    default = _default(f)
    flag = _flag(f)
    if kind is bool:
        parser.add_argument(flag, dest=f.name, action="store_true",
                            help=help_text + _shown(default))
    elif kind == list[str]:
        # Given at least once, the flags replace the default list rather than extend it.
        parser.add_argument(flag, dest=f.name, action="append", required=default is MISSING,
                            metavar=flag.lstrip("-").replace("-", "_").upper(),
                            help=help_text + _shown(default))
    else:
        parser.add_argument(flag, dest=f.name, type=kind, default=default,
                            required=default is MISSING, help=help_text + _shown(default))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Render (and validate) Envoy's configuration.")
    p.add_argument("--out", type=Path, default=Path("build/envoy/envoy.yaml"),
                   help="where to write the configuration (YAML) (default: %(default)s)")
    p.add_argument("--envoy", default=str(Path(sys.executable).parent / "envoy"),
                   help="envoy binary used for validation (default: %(default)s)")
    p.add_argument("--no-validate", action="store_true", help="skip envoy --mode validate")
    hints = get_type_hints(StackConfig)
    for f in fields(StackConfig):
        _add_setting(p, f, hints[f.name])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A repeatable flag not given is None: the field's default applies.
    values = {f.name: getattr(args, f.name) for f in fields(StackConfig)
              if getattr(args, f.name) is not None}
    config = StackConfig(**values)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_yaml(render(config)))
    if not args.no_validate:
        validate(args.out, args.envoy)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
