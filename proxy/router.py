"""The Triton group each call goes to: one that serves its model, the least busy of them.

The router stands where one upstream stood: the catalogue, the batcher and health ask it as
they would ask Triton, and it answers from the group that serves the model. With one group
(no ``--triton-groups``) every call goes to ``--triton-url`` as before and nothing is polled.

A group that loses a model while a call is on its way (an unload under way) answers
NOT_FOUND: no work started, so the call is re-routed once to another group that serves the
model, after the group is asked again what it has. A model that no group has loaded at the
moment, though some group's repository holds it (a move between groups), or whose groups are
all unreachable, is UNAVAILABLE (retry later); a model no group knows is NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from tritonclient.grpc import InferResult
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from .channels import ChannelPool
from .config import ProxyConfig
from .errors import ProxyError
from .group_spec import GroupSpec
from .groups import READY, Group, Replica
from .models import DetectorModel, Image
from .telemetry import Telemetry
from .upstream import Upstream

log = logging.getLogger(__name__)

DEFAULT_GROUP = "default"
# What no work started on, so another group may be asked: the group lost the model, or none
# of its replicas could be reached.
REROUTED = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
# Model control waits for a load this long when the operator's call sets no deadline.
CONTROL_TIMEOUT_S = 120.0


def _names(groups: list[Group]) -> str:
    return ", ".join(g.name for g in groups)


class Router:
    def __init__(self, config: ProxyConfig, telemetry: Telemetry) -> None:
        self.single = not config.groups
        specs = config.groups or (GroupSpec(DEFAULT_GROUP, (config.triton_url,)),)
        self.groups = [Group(spec, self._upstream(config, telemetry, spec), config)
                       for spec in specs]
        self._by_name = {g.name: g for g in self.groups}
        self._telemetry = telemetry
        self._interval_s = config.group_refresh_ms / 1000
        # A replica that does not answer its index within this is unreachable for routing.
        self._poll_timeout_s = min(2.0, max(0.25, self._interval_s))
        self._next = 0
        self._seen: dict[str, tuple[bool, frozenset[str]]] = {}
        self._task: asyncio.Task[None] | None = None

    def _upstream(self, config: ProxyConfig, telemetry: Telemetry, spec: GroupSpec) -> Upstream:
        if self.single:
            return Upstream(config, telemetry)
        if config.groups_via_egress:
            return Upstream(config, telemetry, ChannelPool(config), group=spec.name)
        return Upstream(config, telemetry,
                        ChannelPool(config, spec.direct_target(), round_robin=True))

    # -- routing ----------------------------------------------------------------------------

    def route(self, model: str, exclude: frozenset[str] = frozenset()) -> Group:
        if self.single:
            return self.groups[0]
        serving = [g for g in self.groups if model in g.served and g.name not in exclude]
        live = [g for g in serving if g.up]
        if live:
            start, n = self._next, len(live)
            self._next += 1
            return min((live[(start + i) % n] for i in range(n)), key=lambda g: g.in_flight)
        if serving:
            raise ProxyError(grpc.StatusCode.UNAVAILABLE,
                             f"model '{model}' is served by group {_names(serving)}, which "
                             "does not answer; retry with backoff")
        holding = [g for g in self.groups if model in g.repository]
        if holding:
            states = "; ".join(f"{g.name}: {', '.join(g.states(model))}" for g in holding)
            raise ProxyError(grpc.StatusCode.UNAVAILABLE,
                             f"model '{model}' is not loaded on any group at the moment "
                             f"({states}); retry with backoff")
        down = [g for g in self.groups if not g.up]
        if down:
            raise ProxyError(grpc.StatusCode.UNAVAILABLE,
                             f"model '{model}' is on no group that answers (group "
                             f"{_names(down)} does not); retry with backoff")
        raise ProxyError(grpc.StatusCode.NOT_FOUND, f"model '{model}' is not served")

    async def infer(self, model: DetectorModel, images: list[Image], timeout_s: float,
                    request_ids: list[str]) -> InferResult:
        """Sent to a group serving the model; where that group no longer has it (NOT_FOUND)
        or cannot be reached (UNAVAILABLE after its own retries), to another one, or the
        answer ``route`` gives once no other group serves it."""
        deadline = time.monotonic() + timeout_s
        tried: frozenset[str] = frozenset()
        while True:
            group = self.route(model.name, tried)
            code = grpc.StatusCode.OK
            group.in_flight += 1
            group.calls += 1
            try:
                return await group.upstream.infer(model, images, deadline - time.monotonic(),
                                                  request_ids)
            except ProxyError as exc:
                code = exc.code
                if self.single or code not in REROUTED or (
                        code == grpc.StatusCode.UNAVAILABLE
                        and not self._elsewhere(model.name, tried | {group.name})):
                    raise
            finally:
                group.in_flight -= 1
                self._telemetry.group_calls.add(
                    1, {"group": group.name, "model": model.name, "code": code.name})
            log.info("group %s answered %s for model %s; routing it again", group.name,
                     code.name, model.name)
            tried |= {group.name}
            if code == grpc.StatusCode.NOT_FOUND:  # learn what the group has now
                await self._refresh(group)

    def _elsewhere(self, model: str, exclude: frozenset[str]) -> bool:
        return any(model in g.served and g.up and g.name not in exclude for g in self.groups)

    # -- what the catalogue and health ask ---------------------------------------------------

    async def model_config(self, name: str) -> mc.ModelConfig:
        return await self.route(name).upstream.model_config(name)

    async def model_metadata(self, name: str) -> pb.ModelMetadataResponse:
        return await self.route(name).upstream.model_metadata(name)

    async def repository_index(self) -> pb.RepositoryIndexResponse:
        """The models a call can use: with groups, every version ready where it is served."""
        if self.single:
            return await self.groups[0].upstream.repository_index()
        response = pb.RepositoryIndexResponse()
        seen: set[tuple[str, str]] = set()
        for group in self.groups:
            for replica in group.replicas.values():
                for m in replica.models if replica.reachable else ():
                    if m.name in group.served and m.state == READY and \
                            (m.name, m.version) not in seen:
                        seen.add((m.name, m.version))
                        response.models.add(name=m.name, version=m.version, state=READY)
        return response

    async def ready(self, model: str, timeout_s: float) -> tuple[bool, str]:
        """With one group: Triton and the default model ready. With several: some group
        ready where calls reach it (through Envoy's egress when they go that way), since a
        proxy that can serve one group's models must stay in rotation."""
        if self.single:
            return await self.groups[0].upstream.ready(model, timeout_s)
        up = [g for g in self.groups if g.up]
        answers = await asyncio.gather(*(g.upstream.ready("", timeout_s) for g in up))
        ready = [g for g, (ok, _) in zip(up, answers, strict=True) if ok]
        if ready:
            return True, f"group {_names(ready)} ready"
        why = "; ".join(f"{g.name}: {why}" for g, (_, why) in zip(up, answers, strict=True))
        return False, f"no Triton group is ready ({why or 'none answers'})"

    # -- the routing table -------------------------------------------------------------------

    async def refresh(self) -> None:
        await asyncio.gather(*(self._refresh(g) for g in self.groups))

    async def _refresh(self, group: Group) -> None:
        await group.refresh(self._poll_timeout_s)
        seen = (group.up, group.served)
        if self._seen.get(group.name) != seen:
            self._seen[group.name] = seen
            if group.up:
                answering = sum(r.reachable for r in group.replicas.values())
                log.info("group %s: serves %s (%d of %d replicas answer)", group.name,
                         ", ".join(sorted(group.served)) or "nothing", answering,
                         len(group.replicas))
            else:
                log.warning("group %s does not answer (%s); its models get UNAVAILABLE",
                            group.name, "; ".join(f"{r.address}: {r.error}"
                                                  for r in group.replicas.values()))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.refresh()
            except Exception:  # the table must keep being refreshed whatever one poll met
                log.exception("refreshing the Triton groups failed; trying again")

    async def start(self) -> None:
        """Learn what every group serves before the first call, then keep learning."""
        for group in self.groups:
            group.upstream.connect()
        if not self.single:
            await self.refresh()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for group in self.groups:
            await group.close()

    # -- model control -----------------------------------------------------------------------

    def group(self, name: str) -> Group:
        group = self._by_name.get(name)
        if group is None:
            raise ProxyError(grpc.StatusCode.NOT_FOUND,
                             f"no group '{name}'; groups: {_names(self.groups)}")
        return group

    async def load(self, model: str, group_name: str, timeout_s: float | None) -> list[str]:
        """Loads ``model`` on every replica of the group; the replicas acted on."""
        return await self._control(self.group(group_name), "RepositoryModelLoad",
                                   pb.RepositoryModelLoadRequest(model_name=model), model,
                                   timeout_s, "loaded")

    async def unload(self, model: str, group_name: str, timeout_s: float | None) -> list[str]:
        """Stops routing ``model`` to the group, then unloads it from every replica (calls
        already there finish)."""
        group = self.group(group_name)
        group.served -= {model}
        return await self._control(group, "RepositoryModelUnload",
                                   pb.RepositoryModelUnloadRequest(model_name=model), model,
                                   timeout_s, "unloaded")

    def served_by(self, model: str) -> list[str]:
        return [g.name for g in self.groups if model in g.served and g.up]

    async def _control(self, group: Group, method: str, request: object, model: str,
                       timeout_s: float | None, done: str) -> list[str]:
        """``method`` on every replica of the group, then the group's table read again; the
        replicas acted on, or the first failure's code with every replica's error."""
        await group.refresh(self._poll_timeout_s)  # the replicas as they are now
        replicas = list(group.replicas.values())
        errors = await asyncio.gather(*(self._ask(r, method, request, timeout_s)
                                        for r in replicas))
        failed = [(r, e) for r, e in zip(replicas, errors, strict=True) if e is not None]
        if failed:
            code = failed[0][1][0]
            raise ProxyError(code, f"{method} of model '{model}' on group {group.name} "
                             "failed on " + "; ".join(f"{r.address}: {e[1]}" for r, e in failed))
        addresses = [r.address for r in replicas]
        await self._refresh(group)
        log.info("operator %s model %s on group %s (%s)", done, model, group.name,
                 ", ".join(addresses))
        return addresses

    @staticmethod
    async def _ask(replica: Replica, method: str, request: object,
                   timeout_s: float | None) -> tuple[grpc.StatusCode, str] | None:
        """None when the replica did it; else the code the operator gets and why."""
        try:
            await getattr(replica.stub, method)(request, timeout=timeout_s or CONTROL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), (exc.details() or "")[:300]
            if "not allowed" in details:  # Triton's model control mode is not explicit
                return (grpc.StatusCode.FAILED_PRECONDITION,
                        f"{details} (start Triton with --model-control-mode=explicit)")
            if "failed to poll" in details:
                return grpc.StatusCode.NOT_FOUND, f"not in the model repository ({details})"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return grpc.StatusCode.UNAVAILABLE, f"{code.name}: {details}"
            return grpc.StatusCode.FAILED_PRECONDITION, f"{code.name}: {details}"
        return None

    def __len__(self) -> int:
        return sum(len(g.upstream) for g in self.groups)

    @property
    def url(self) -> str:
        if self.single:
            return self.groups[0].upstream.url
        return "; ".join(f"{g.name}={','.join(g.spec.replicas)}" for g in self.groups)
