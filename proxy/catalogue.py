"""The detection models the model server has, learned from it and cached.

Entries are dropped when the server stops knowing a model, so newly deployed models are
found without a restart, and a caller naming an unknown model is told which ones exist.
"""

from __future__ import annotations

import logging

import grpc

from .errors import ProxyError
from .models import DetectorModel, from_config, from_metadata
from .upstream import Upstream

log = logging.getLogger(__name__)


class Catalogue:
    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self._models: dict[str, DetectorModel] = {}

    async def get(self, name: str) -> DetectorModel:
        model = self._models.get(name)
        if model is None:
            model = await self._load(name)
            self._models[name] = model
            log.info("model %s: input %s, batching %s, %d labels", name, model.input_name,
                     model.batching, len(model.labels))
        return model

    def known(self, name: str) -> bool:
        return name in self._models

    def forget(self, name: str) -> None:
        self._models.pop(name, None)

    async def not_found(self, name: str) -> ProxyError:
        """The server does not have ``name`` (any more): forget it and say which models
        there are."""
        self.forget(name)
        available = await self.available()
        listing = ", ".join(available) if available else "none"
        return ProxyError(grpc.StatusCode.NOT_FOUND,
                          f"model '{name}' is not served; available models: {listing}")

    async def _load(self, name: str) -> DetectorModel:
        try:
            try:
                return from_config(await self._upstream.model_config(name))
            except ProxyError as exc:
                if exc.code != grpc.StatusCode.UNIMPLEMENTED:
                    raise
            return from_metadata(await self._upstream.model_metadata(name))
        except ProxyError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                raise await self.not_found(name) from None
            raise

    async def available(self) -> list[str]:
        """Models the server has ready that follow the detector contract."""
        try:
            index = await self._upstream.repository_index()
        except ProxyError:
            return sorted(self._models)
        names = sorted({m.name for m in index.models if m.state in ("READY", "")})
        found = []
        for name in names:
            if name not in self._models:
                try:
                    self._models[name] = from_config(await self._upstream.model_config(name))
                except ProxyError:
                    continue
            found.append(name)
        return found
