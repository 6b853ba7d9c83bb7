"""The detection models callers may use, learned from the model server and cached.

Which models are exposed is configured: a list of names, or by default every ensemble the
server has and every model whose config asks to be (``contract.EXPOSE_PARAMETER``): the
detectors; their pipeline steps and single benchmark models stay hidden. A
hidden model is answered exactly like a missing one, NOT_FOUND listing what exists, so
callers never meet a pipeline step's internal tensors. Entries are dropped when the server
stops knowing a model, so newly deployed models are found without a restart.

For the result cache, each model in use is also ``Resolved``: the version that answers a call
naming none (the highest ready one, as Triton picks) and an epoch digest of the operator's
deployment epoch, the model's config (an ensemble's with its steps') and every model version
the server has. ``refresh`` re-reads them, so a new version or config changes the cache key
within one refresh interval.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

import grpc
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from . import contract
from .errors import ProxyError
from .models import DetectorModel, from_config, from_metadata

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"


class ModelServer(Protocol):
    """What the catalogue asks: Triton itself, or the router in front of Triton groups."""

    async def model_config(self, name: str) -> mc.ModelConfig: ...

    async def model_metadata(self, name: str) -> pb.ModelMetadataResponse: ...

    async def repository_index(self) -> pb.RepositoryIndexResponse: ...


@dataclass(frozen=True)
class Listed:
    model: DetectorModel
    versions: tuple[str, ...]


@dataclass(frozen=True)
class Resolved:
    version: str  # the version a call naming none runs; "" when the server does not say
    epoch: str  # changes whenever a config, a model version or the deployment epoch does


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


class Catalogue:
    def __init__(self, upstream: ModelServer, exposed: tuple[str, ...] = (),
                 deployment_epoch: str = "") -> None:
        """``exposed``: the model names callers may use; empty: the detectors (see above)."""
        self._upstream = upstream
        self._exposed = frozenset(exposed)
        self._epoch = deployment_epoch
        self._models: dict[str, DetectorModel] = {}
        self._resolved: dict[str, Resolved] = {}

    async def get(self, name: str) -> DetectorModel:
        model = self._models.get(name) or await self._describe(name)
        if model is None:
            raise await self.not_found(name)
        if name not in self._models:
            self._models[name] = model
            log.info("model %s: input %s, batching %s, %d labels", name, model.input_name,
                     model.batching, len(model.labels))
        return model

    def known(self, name: str) -> bool:
        return name in self._models

    def forget(self, name: str) -> None:
        self._models.pop(name, None)
        self._resolved.pop(name, None)

    async def resolved(self, name: str) -> Resolved:
        resolved = self._resolved.get(name)
        if resolved is None:
            resolved = self._resolved[name] = await self._resolve(name)
        return resolved

    async def refresh(self) -> None:
        """Re-resolve every model in use (a failure keeps what was known)."""
        for name in list(self._resolved):
            try:
                resolved = await self._resolve(name)
            except ProxyError as exc:
                log.debug("model %s not re-resolved: %s", name, exc.message)
                continue
            if resolved != self._resolved.get(name):
                log.info("model %s: version %s, cache epoch %s", name, resolved.version,
                         resolved.epoch)
            self._resolved[name] = resolved

    async def _resolve(self, name: str) -> Resolved:
        index = await self._upstream.repository_index()
        digest = hashlib.sha256(self._epoch.encode())
        ready = []
        for entry in sorted(index.models, key=lambda e: (e.name, e.version)):
            digest.update(f"{entry.name}/{entry.version}/{entry.state}\n".encode())
            if entry.name == name and entry.state in ("READY", "") and entry.version:
                ready.append(entry.version)
        pending, seen = [name], set()
        while pending:  # the model's config and, for an ensemble, its steps' configs
            step = pending.pop()
            if step in seen:
                continue
            seen.add(step)
            try:
                config = await self._upstream.model_config(step)
            except ProxyError as exc:
                if exc.code != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                metadata = await self._upstream.model_metadata(step)
                digest.update(metadata.SerializeToString(deterministic=True))
                continue
            digest.update(config.SerializeToString(deterministic=True))
            pending += [s.model_name for s in config.ensemble_scheduling.step]
        version = max(ready, key=_version_order) if ready else ""
        return Resolved(version, digest.hexdigest()[:16])

    async def version_not_found(self, name: str, version: str) -> ProxyError:
        """The server has no ``version`` of ``name`` ready: say which versions it has."""
        versions = next((entry.versions for entry in await self.listing()
                         if entry.model.name == name), ())
        if not versions:
            return await self.not_found(name)
        return ProxyError(grpc.StatusCode.NOT_FOUND,
                          f"model '{name}' has no version {version} ready; ready versions: "
                          f"{', '.join(versions)}")

    async def not_found(self, name: str) -> ProxyError:
        """The server does not have ``name`` (any more), or hides it: forget it and say
        which models there are."""
        self.forget(name)
        available = await self.available()
        listing = ", ".join(available) if available else "none"
        return ProxyError(grpc.StatusCode.NOT_FOUND,
                          f"model '{name}' is not served; available models: {listing}")

    def _exposes(self, name: str, platform: str, config: mc.ModelConfig | None = None) -> bool:
        if self._exposed:
            return name in self._exposed
        asks = config is not None and contract.EXPOSE_PARAMETER in config.parameters and \
            config.parameters[contract.EXPOSE_PARAMETER].string_value.lower() == "true"
        return platform == ENSEMBLE or asks

    async def _describe(self, name: str) -> DetectorModel | None:
        """The model, None when the server lacks it or it is not exposed; INVALID_ARGUMENT
        when an exposed model breaks the detector contract."""
        if self._exposed and name not in self._exposed:
            return None
        try:
            config = await self._upstream.model_config(name)
        except ProxyError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return None
            if exc.code != grpc.StatusCode.UNIMPLEMENTED:
                raise
        else:
            return from_config(config) if self._exposes(name, config.platform, config) else None
        try:
            metadata = await self._upstream.model_metadata(name)
        except ProxyError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return from_metadata(metadata) if self._exposes(name, metadata.platform) else None

    async def listing(self) -> list[Listed]:
        """The exposed detectors the server has ready, with their ready versions."""
        index = await self._upstream.repository_index()
        versions: dict[str, list[str]] = defaultdict(list)
        for entry in index.models:
            if entry.state in ("READY", ""):
                versions[entry.name].append(entry.version)
        listed = []
        for name in sorted(versions):
            if self._exposed and name not in self._exposed:
                continue
            try:
                model = self._models.get(name) or await self._describe(name)
            except ProxyError:
                continue  # not a detector, or the server failed to describe it
            if model is None:
                continue  # hidden
            self._models[name] = model
            listed.append(Listed(model, tuple(sorted(v for v in versions[name] if v))))
        return listed

    async def available(self) -> list[str]:
        """Names of the exposed detectors the server has ready."""
        try:
            return [entry.model.name for entry in await self.listing()]
        except ProxyError:
            return sorted(self._models)
