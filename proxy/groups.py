"""What each Triton group serves, learned from its replicas and never kept by hand.

Every replica of a group is asked for its ``RepositoryIndex`` on its own connection (not
through Envoy, which would answer from any one replica). A group serves a model when every
replica that answers has it READY, so a call sent to the group finds the model on whichever
replica Envoy picks, also while a load or an unload is under way on some of them. A group
none of whose replicas answers is down; what it served is remembered, so calls for its
models are answered UNAVAILABLE at once rather than NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from .channels import replica_channel
from .config import ProxyConfig
from .group_spec import GroupSpec
from .upstream import Upstream

log = logging.getLogger(__name__)

READY = "READY"


@dataclass(frozen=True)
class ModelState:
    name: str
    version: str
    state: str  # READY, LOADING, UNLOADING, UNAVAILABLE; "" for a model never loaded
    reason: str


class Replica:
    """One replica's own connection, for its index and for model control."""

    def __init__(self, address: str, config: ProxyConfig) -> None:
        self.address = address
        self.channel = replica_channel(config, address, [
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_reconnect_backoff_ms", 1_000),
            ("grpc.use_local_subchannel_pool", 1)])
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.reachable = False
        self.error = "not asked yet"
        self.models: tuple[ModelState, ...] = ()

    @property
    def ready(self) -> frozenset[str]:
        return frozenset(m.name for m in self.models if m.state == READY)

    async def poll(self, timeout_s: float) -> None:
        try:
            index = await self.stub.RepositoryIndex(pb.RepositoryIndexRequest(),
                                                    timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            self.reachable = False
            self.error = f"{exc.code().name}: {(exc.details() or '')[:200]}"
            return
        self.reachable, self.error = True, ""
        self.models = tuple(ModelState(m.name, m.version, m.state, m.reason)
                            for m in index.models)

    async def close(self) -> None:
        await self.channel.close()


@dataclass(eq=False)
class Group:
    spec: GroupSpec
    upstream: Upstream  # where calls for this group go (Envoy's egress or its replicas)
    config: ProxyConfig
    replicas: dict[str, Replica] = field(default_factory=dict)
    served: frozenset[str] = frozenset()  # as last seen; kept while the group is down
    up: bool = False
    in_flight: int = 0
    calls: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def repository(self) -> frozenset[str]:
        """Every model any reachable replica has in its repository, loaded or not."""
        return frozenset(m.name for r in self.replicas.values() if r.reachable
                         for m in r.models)

    def states(self, model: str) -> list[str]:
        return sorted({m.state or "not loaded" for r in self.replicas.values() if r.reachable
                       for m in r.models if m.name == model})

    async def refresh(self, timeout_s: float) -> None:
        await self._resolve()
        replicas = list(self.replicas.values())
        await asyncio.gather(*(r.poll(timeout_s) for r in replicas))
        answering = [r for r in replicas if r.reachable]
        self.up = bool(answering)
        if answering:
            self.served = frozenset.intersection(*(r.ready for r in answering))

    async def _resolve(self) -> None:
        """One replica per address of each configured name (a headless Service's pods)."""
        wanted: list[str] = []
        loop = asyncio.get_running_loop()
        for address in self.spec.replicas:
            host, _, port = address.rpartition(":")
            try:
                infos = await loop.getaddrinfo(host.strip("[]"), int(port),
                                               type=socket.SOCK_STREAM)
            except OSError:
                infos = []
            ips = sorted({str(info[4][0]) for info in infos})
            if len(ips) <= 1:
                wanted.append(address)
            else:
                wanted += [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]
        for address in set(self.replicas) - set(wanted):
            await self.replicas.pop(address).close()
        for address in wanted:
            if address not in self.replicas:
                self.replicas[address] = Replica(address, self.config)

    async def close(self) -> None:
        for replica in self.replicas.values():
            await replica.close()
        await self.upstream.close()
