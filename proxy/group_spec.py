"""``--triton-groups``: the Triton groups, each a name and its replicas' addresses."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# A group's name travels in a header and names Envoy's cluster: keep it to what both accept.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,38}[a-z0-9])?$")


@dataclass(frozen=True)
class GroupSpec:
    name: str
    replicas: tuple[str, ...]  # host:port each

    def direct_target(self) -> str:
        """The gRPC target that reaches every replica: one name resolved by DNS (all its
        addresses), or a list of IP addresses."""
        if len(self.replicas) == 1:
            host = _host(self.replicas[0])
            return self.replicas[0] if _is_ip(host) else f"dns:///{self.replicas[0]}"
        hosts = [_host(r) for r in self.replicas]
        family = "ipv6" if all(":" in h for h in hosts) else "ipv4"
        return f"{family}:" + ",".join(self.replicas)


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_groups(text: str) -> tuple[GroupSpec, ...]:
    """``gpu0=10.0.0.1:8001,10.0.0.2:8001;gpu1=triton-gpu1:8001`` → two groups; ValueError
    saying what is wrong otherwise."""
    groups: list[GroupSpec] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, sep, addresses = part.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise ValueError(f"{part!r}: expected NAME=HOST:PORT[,HOST:PORT...] with NAME of "
                             "lower-case letters, digits, '-' and '_'")
        replicas = tuple(a.strip() for a in addresses.split(",") if a.strip())
        for address in replicas:
            host, colon, port = address.rpartition(":")
            if not colon or not host or not port.isdigit():
                raise ValueError(f"group {name}: {address!r} is not HOST:PORT")
        if not replicas:
            raise ValueError(f"group {name} has no replica")
        if len(replicas) > 1 and not all(_is_ip(_host(r)) for r in replicas):
            raise ValueError(f"group {name}: several replicas must be IP addresses; name the "
                             "group's replicas with one DNS name instead (every address it "
                             "resolves to is a replica)")
        if any(g.name == name for g in groups):
            raise ValueError(f"group {name} is given twice")
        groups.append(GroupSpec(name, replicas))
    return tuple(groups)
