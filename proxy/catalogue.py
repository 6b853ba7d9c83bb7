"""The detection models callers may use, learned from the model server and cached.

Which models are exposed is configured: a list of names, or by default every ensemble the
server has (the detectors; their pipeline steps and single benchmark models stay hidden). A
hidden model is answered exactly like a missing one, NOT_FOUND listing what exists, so
callers never meet a pipeline step's internal tensors. Entries are dropped when the server
stops knowing a model, so newly deployed models are found without a restart.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import grpc

from .errors import ProxyError
from .models import DetectorModel, from_config, from_metadata
from .upstream import Upstream

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class Listed:
    model: DetectorModel
    versions: tuple[str, ...]


class Catalogue:
    def __init__(self, upstream: Upstream, exposed: tuple[str, ...] = ()) -> None:
        """``exposed``: the model names callers may use; empty: every ensemble."""
        self._upstream = upstream
        self._exposed = frozenset(exposed)
        self._models: dict[str, DetectorModel] = {}

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

    async def not_found(self, name: str) -> ProxyError:
        """The server does not have ``name`` (any more), or hides it: forget it and say
        which models there are."""
        self.forget(name)
        available = await self.available()
        listing = ", ".join(available) if available else "none"
        return ProxyError(grpc.StatusCode.NOT_FOUND,
                          f"model '{name}' is not served; available models: {listing}")

    def _exposes(self, name: str, platform: str) -> bool:
        return name in self._exposed if self._exposed else platform == ENSEMBLE

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
            return from_config(config) if self._exposes(name, config.platform) else None
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
