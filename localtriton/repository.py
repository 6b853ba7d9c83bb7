"""The model repository: what each model directory holds, what is loaded, and in what state.

Models load at start (every one; with explicit model control only those ``--load-model``
names), and with explicit model control later through RepositoryModelLoad and
RepositoryModelUnload, with tritonserver's semantics (probed against tritonserver 2.51):

- A model is read from its directory each time it is loaded, so loading a loaded model
  again picks up a changed config.pbtxt or version directory; if none of its files changed
  it does nothing. A reload that fails leaves the loaded versions serving.
- Loading an ensemble loads its composing models first. Unloading a model also unloads every
  loaded ensemble that uses it (an ensemble cannot run without its steps); with
  ``unload_dependents`` an ensemble's composing models go with it.
- Unloading refuses new requests at once; requests in flight finish (an ensemble request
  holds its steps' models until it ends), then the model's schedulers and backends close.
- Every version that was loaded, or failed to load, keeps a state for RepositoryIndex:
  READY, LOADING, UNLOADING, or UNAVAILABLE with its reason ("unloaded", or the error).

Loads and unloads are serialised by one lock, and backends are created in the default
executor, so the event loop goes on serving other models while one loads. Everything runs
on the event loop except the metrics thread's reads, which is why the table of loaded
models is replaced on every change, never mutated in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from . import model_config
from .backends import create_backend
from .bls import RequestExecutor
from .datatypes import CONFIG_TO_NUMPY, numpy_to_wire, wire_name
from .ensemble import EnsembleScheduler
from .errors import InferenceError, ModelConfigError
from .request import InferRequest
from .scheduler import Scheduler
from .statistics import FAILURE_BACKEND, FAILURE_CANCELED, FAILURE_OTHER, ModelStats

log = logging.getLogger(__name__)

# Triton's model version states (RepositoryIndex) and the reason an unloaded version gives.
READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"
UNLOADED = "unloaded"


def _shape_text(dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _type_name(dtype: np.dtype) -> str:
    """A tensor's type in Triton's words ("FP32"), as a BLS caller's numpy array has it."""
    try:
        return numpy_to_wire(dtype)
    except ValueError:
        return str(dtype)


class Model:
    """One loaded version of one model: validates requests and keeps statistics."""

    def __init__(self, config: mc.ModelConfig, version: int,
                 scheduler: Scheduler | EnsembleScheduler, stats: ModelStats) -> None:
        self.config = config
        self.name = config.name
        self.version = version
        self.scheduler = scheduler
        self.stats = stats
        self.stopping = False
        self.inputs = {t.name: t for t in config.input}
        self.outputs = {t.name: t for t in config.output}
        self.batching = config.max_batch_size > 0
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Requests using this model now (ensemble requests holding it as a step included)."""
        return self._in_flight

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Count a request that uses this model for as long as the block runs: an unloaded
        model is closed only once no request holds it."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def drained(self) -> None:
        """Return once no request holds this model."""
        await self._idle.wait()

    def full_shape(self, tensor: mc.ModelInput | mc.ModelOutput) -> list[int]:
        return ([-1] if self.batching else []) + list(tensor.dims)

    def validate(self, request: InferRequest) -> None:
        """Check names, shapes and batch size as Triton does before scheduling."""
        name = self.name
        unknown = [n for n in request.inputs if n not in self.inputs]
        if unknown:
            raise InferenceError.invalid(
                f"unexpected inference input '{unknown[0]}' for model '{name}'")
        missing = [n for n, t in self.inputs.items() if n not in request.inputs and not t.optional]
        if missing:
            raise InferenceError.invalid(
                f"expected {len(self.inputs)} inputs but got {len(request.inputs)} inputs for "
                f"model '{name}'. Got input(s) {sorted(request.inputs)}, but missing required "
                f"input(s) {missing}. Please provide all required input(s).")
        batch = None
        for input_name, array in request.inputs.items():
            declared = self.inputs[input_name]
            want = CONFIG_TO_NUMPY[declared.data_type]
            if array.dtype != want and not (want == np.object_ and array.dtype.kind in "OSU"):
                raise InferenceError.invalid(
                    f"inference input '{input_name}' data-type is '{_type_name(array.dtype)}', "
                    f"but model '{name}' expects '{wire_name(declared.data_type)}'")
            shape = list(array.shape)
            dims = shape
            if self.batching:
                if not shape:
                    raise InferenceError.invalid(
                        f"input '{input_name}' for model '{name}' must have a batch dimension")
                if batch is None:
                    batch = shape[0]
                elif shape[0] != batch:
                    raise InferenceError.invalid(
                        f"input '{input_name}' batch size does not match other inputs for "
                        f"'{name}'")
                dims = shape[1:]
            if len(dims) != len(declared.dims) or any(
                    d != -1 and d != s for d, s in zip(declared.dims, dims, strict=True)):
                raise InferenceError.invalid(
                    f"unexpected shape for input '{input_name}' for model '{name}'. Expected "
                    f"{_shape_text(self.full_shape(declared))}, got {_shape_text(shape)}")
        if self.batching:
            if batch is None or batch < 1 or batch > self.config.max_batch_size:
                raise InferenceError.invalid(
                    f"inference request batch-size must be <= {self.config.max_batch_size} "
                    f"for '{name}'" if batch else
                    f"inference request batch-size must be >= 1 for '{name}'")
            request.batch_size = batch
        else:
            request.batch_size = 1
        for output in request.requested_outputs:
            if output not in self.outputs:
                raise InferenceError.invalid(
                    f"unexpected inference output '{output}' for model '{name}'")

    @property
    def pending(self) -> int:
        """Requests waiting for an execution (Triton's nv_inference_pending_request_count)."""
        return self.scheduler.pending if isinstance(self.scheduler, Scheduler) else 0

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        self.admit(request)
        return await self.run(request)

    def admit(self, request: InferRequest) -> None:
        """What Triton checks before a request reaches the model's scheduler. A request
        refused here never reached the model: Triton does not count it in the statistics,
        and a BLS call reports the refusal apart from the model's own failures."""
        if self.stopping:
            # As in Triton: once shutdown begins, schedulers take no new requests, and that
            # includes the next step of an ensemble already in flight (retryable elsewhere).
            raise InferenceError.unavailable(
                f"[request id: {request.request_id or '<id_unknown>'}] Server is stopping, "
                "scheduler for model has stopped accepting new inference requests")
        self.validate(request)

    async def run(self, request: InferRequest) -> dict[str, np.ndarray]:
        """Schedule a request that ``admit`` accepted, and count it."""
        with self.hold():
            return await self._run(request)

    async def _run(self, request: InferRequest) -> dict[str, np.ndarray]:
        start = time.perf_counter_ns()
        ok = False
        reason = FAILURE_OTHER if isinstance(self.scheduler, EnsembleScheduler) else FAILURE_BACKEND
        try:
            outputs = await self.scheduler.infer(request)
            if request.requested_outputs:
                outputs = {n: outputs[n] for n in request.requested_outputs}
            ok = True
            if isinstance(self.scheduler, EnsembleScheduler):
                self.stats.inference_count += request.batch_size
                self.stats.execution_count += 1
            return outputs
        except asyncio.CancelledError:
            reason = FAILURE_CANCELED
            raise
        finally:
            self.stats.record_request(ok, time.perf_counter_ns() - start, reason)


@dataclass(frozen=True, eq=False)
class VersionState:
    """One model version's state as RepositoryIndex reports it. Compared by identity: an
    unload marks the version UNAVAILABLE at the end of its drain only if nothing (a load in
    the meantime) has replaced the UNLOADING state it set."""

    state: str
    reason: str = ""


class LoadError(ModelConfigError):
    """A model that could not be loaded. Without ``version`` its directory or config.pbtxt
    could not be read (Triton's "failed to poll"); with it, the config was read but that
    version failed to load, and is UNAVAILABLE with ``reason``. At start-up it stops the
    server like any ModelConfigError; to an RPC it is Triton's error (``rpc_error``)."""

    def __init__(self, name: str, reason: str, version: int | None = None) -> None:
        super().__init__(f"failed to load '{name}': {reason}")
        self.name = name
        self.reason = reason
        self.version = version

    def rpc_error(self) -> InferenceError:
        """tritonserver's status and message for the same failure (the details stay in the
        server's log, as Triton keeps a poll failure's)."""
        if self.version is None:
            return InferenceError.internal(
                f"failed to load '{self.name}', failed to poll from model repository")
        return InferenceError.invalid(
            f"load failed for model '{self.name}': version {self.version} is at UNAVAILABLE "
            f"state: {self.reason};\n")


@dataclass(frozen=True)
class _Polled:
    """A model directory as read for one load."""

    config: mc.ModelConfig
    directory: Path
    fingerprint: frozenset[tuple[str, int, int]]

    @property
    def ensemble(self) -> bool:
        return model_config.backend_of(self.config) == model_config.ENSEMBLE_PLATFORM


def _fingerprint(directory: Path) -> frozenset[tuple[str, int, int]]:
    """Every file of a model directory with its modification time and size: what decides,
    as in Triton, whether loading a loaded model reloads it. Python's bytecode caches are
    left out: loading a python model writes them."""
    files = set()
    for path in directory.rglob("*"):
        relative = path.relative_to(directory)
        if "__pycache__" in relative.parts:
            continue
        try:
            if path.is_file():
                stat = path.stat()
                files.add((str(relative), stat.st_mtime_ns, stat.st_size))
        except OSError:  # removed while we looked: the next load sees the change
            continue
    return frozenset(files)


def _composing(versions: dict[int, Model]) -> set[str]:
    """The models an ensemble's steps use (none for other models)."""
    return {step.model_name for model in versions.values()
            if isinstance(model.scheduler, EnsembleScheduler)
            for step in model.config.ensemble_scheduling.step}


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = root
        # Loaded (READY) versions by model name. Replaced on every change, never mutated:
        # the metrics thread iterates whichever table it picked up.
        self._models: dict[str, dict[int, Model]] = {}
        # The state of every version that was loaded or tried, READY ones included.
        self._states: dict[str, dict[int, VersionState]] = {}
        # The files of each loaded model as they were when it loaded.
        self._sources: dict[str, frozenset[tuple[str, int, int]]] = {}
        self._lock = asyncio.Lock()
        # Loads and drains under way (the event loop keeps only weak references to tasks).
        self._loading: set[asyncio.Task[None]] = set()
        self._draining: set[asyncio.Task[None]] = set()
        # Where Python models' BLS calls go; bound to the event loop that serves requests.
        self._bls: RequestExecutor | None = None

    def _executor(self, loop: asyncio.AbstractEventLoop) -> RequestExecutor:
        if self._bls is None:
            self._bls = RequestExecutor(self, loop)
        return self._bls

    # ------------------------------------------------------------------ loading

    async def load(self, names: Sequence[str] | None = None) -> None:
        """Start-up: load ``names`` (every model of the repository when None) and the
        composing models of the ensembles among them. Any error stops start-up, as
        tritonserver's --exit-on-error; every config is read before any model loads."""
        if not self.root.is_dir():
            raise ModelConfigError(f"model repository {self.root} does not exist")
        wanted = self.model_names() if names is None else list(dict.fromkeys(names))
        for name in wanted:
            self._poll(name)
        async with self._lock:
            for name in wanted:
                await self._load(name)

    async def load_model(self, name: str) -> None:
        """RepositoryModelLoad: return once ``name`` (and an ensemble's steps) is READY.
        A caller that goes away does not stop the load half-way (a backend created but
        never served, a state left LOADING): it runs to its end regardless."""
        task = asyncio.get_running_loop().create_task(self._load_locked(name))
        self._loading.add(task)
        task.add_done_callback(self._loading.discard)
        # Read the outcome even when nobody awaits it any more, so it is not logged as lost.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            await asyncio.shield(task)
        except LoadError as exc:
            raise exc.rpc_error() from None

    async def _load_locked(self, name: str) -> None:
        async with self._lock:
            try:
                await self._load(name)
            except LoadError as exc:
                log.error("failed to load '%s': %s", name, exc.reason)
                raise

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        """RepositoryModelUnload: refuse new requests for ``name`` at once and return; its
        requests in flight finish before it closes. An unknown or unloaded name is no error."""
        async with self._lock:
            models = self._models
            doomed = {name} & models.keys()
            if unload_dependents and doomed:
                doomed |= _composing(models[name]) & models.keys()
            while True:  # an ensemble cannot run without its steps: it goes with them
                users = {n for n, versions in models.items()
                         if n not in doomed and _composing(versions) & doomed}
                if not users:
                    break
                doomed |= users
            for doomed_name in sorted(doomed):
                self._unload(doomed_name)

    def _poll(self, name: str) -> _Polled:
        """Read model ``name`` from its directory (a name is a directory, never a path)."""
        directory = self.root / name
        if (not name or name != Path(name).name or name.startswith((".", "_"))
                or not directory.is_dir()):
            raise LoadError(name, f"no model directory '{name}' in {self.root}")
        try:
            config = model_config.load(directory)
        except ModelConfigError as exc:
            raise LoadError(name, str(exc)) from exc
        return _Polled(config, directory, _fingerprint(directory))

    def _unchanged(self, polled: _Polled) -> bool:
        name = polled.config.name
        return name in self._models and self._sources.get(name) == polled.fingerprint

    async def _load(self, name: str) -> None:
        polled = self._poll(name)
        if polled.ensemble:
            await self._load_ensemble(polled)
        else:
            await self._load_model(polled)

    async def _load_model(self, polled: _Polled) -> None:
        if self._unchanged(polled):
            return
        config, name = polled.config, polled.config.name
        served = self._models.get(name, {})
        states = self._states.setdefault(name, {})
        versions = model_config.versions(config, polled.directory)
        for version in versions:
            if version not in served:
                states[version] = VersionState(LOADING)
        loop = asyncio.get_running_loop()
        loaded: dict[int, Model] = {}
        try:
            for version in versions:
                try:
                    backend = await loop.run_in_executor(
                        None, create_backend, config, polled.directory, version,
                        self._executor(loop))
                except Exception as exc:  # a model's own code may raise anything
                    reason = (str(exc) if isinstance(exc, ModelConfigError)
                              else f"{type(exc).__name__}: {exc}")
                    raise LoadError(name, reason, version) from exc
                stats = ModelStats(name, str(version))
                loaded[version] = Model(config, version, Scheduler(config, backend, stats),
                                        stats)
                log.info("loaded model '%s' version %d (%s, %d instance(s))", name, version,
                         model_config.backend_of(config), backend.instance_count)
        except LoadError as exc:
            # A load is all or nothing: the versions it loaded close again.
            for model in loaded.values():
                await self._close(model)
            raise self._failed(name, versions, exc.reason, exc.version) from exc
        self._install(name, loaded, polled.fingerprint)

    async def _load_ensemble(self, polled: _Polled) -> None:
        config, name = polled.config, polled.config.name
        versions = model_config.versions(config, polled.directory)
        steps = list(dict.fromkeys(step.model_name for step in config.ensemble_scheduling.step))
        configs: dict[str, mc.ModelConfig] = {}
        for step in steps:
            try:
                configs[step] = self._poll(step).config
            except LoadError as exc:  # validation names it as an unknown model
                log.error("ensemble '%s': cannot read step '%s': %s", name, step, exc.reason)
        try:
            model_config.validate_ensemble(config, configs)
        except ModelConfigError as exc:
            raise self._failed(name, versions, str(exc)) from exc
        for step in steps:
            try:
                await self._load(step)
            except LoadError as exc:
                raise self._failed(
                    name, versions, f"composing model '{step}' failed to load: {exc.reason}"
                ) from exc
        if self._unchanged(polled):
            return
        loaded = {version: Model(config, version, EnsembleScheduler(config, self),
                                 ModelStats(name, str(version))) for version in versions}
        for version in versions:
            log.info("loaded ensemble '%s' version %d", name, version)
        self._install(name, loaded, polled.fingerprint)

    def _failed(self, name: str, versions: list[int], reason: str,
                version: int | None = None) -> LoadError:
        """Record a failed load of ``versions``: UNAVAILABLE with the reason, except those
        still serving an earlier load of the model, which go on serving."""
        served = self._models.get(name, {})
        states = self._states.setdefault(name, {})
        for number in versions:
            if number not in served:
                states[number] = VersionState(UNAVAILABLE, reason)
        return LoadError(name, reason, versions[0] if version is None else version)

    def _install(self, name: str, loaded: dict[int, Model],
                 fingerprint: frozenset[tuple[str, int, int]]) -> None:
        """Serve ``loaded`` as model ``name``; versions it replaces drain and close."""
        old = self._models.get(name, {})
        self._models = {**self._models, name: loaded}
        self._sources[name] = fingerprint
        states = self._states.setdefault(name, {})
        for version in loaded:
            states[version] = VersionState(READY)
        for version, model in old.items():
            self._retire(model, replaced=version in loaded)

    # ------------------------------------------------------------------ unloading

    def _unload(self, name: str) -> None:
        versions = self._models.get(name)
        if not versions:
            return
        self._models = {n: v for n, v in self._models.items() if n != name}
        self._sources.pop(name, None)
        for model in versions.values():
            log.info("unloading model '%s' version %d (%d request(s) in flight)",
                     name, model.version, model.in_flight)
            self._retire(model, replaced=False)

    def _retire(self, model: Model, replaced: bool) -> None:
        """Close ``model`` once its requests in flight are done. A version that is not
        ``replaced`` by a newer load of itself is UNLOADING until then, UNAVAILABLE after."""
        state = None
        if not replaced:
            state = VersionState(UNLOADING)
            self._states.setdefault(model.name, {})[model.version] = state
        task = asyncio.get_running_loop().create_task(self._drain(model, state))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain(self, model: Model, state: VersionState | None) -> None:
        try:
            await model.drained()
        finally:  # at shutdown (cancelled) too: its backend must be released
            await self._close(model)
        states = self._states.get(model.name, {})
        if state is not None and states.get(model.version) is state:
            states[model.version] = VersionState(UNAVAILABLE, UNLOADED)
        log.info("unloaded model '%s' version %d", model.name, model.version)

    async def _close(self, model: Model) -> None:
        if isinstance(model.scheduler, Scheduler):
            try:
                await model.scheduler.close()
            except Exception:  # a model's finalize() failing must not stop the others
                log.exception("closing model '%s' version %d failed", model.name,
                              model.version)

    # ------------------------------------------------------------------ lookups

    def get(self, name: str, version: str = "") -> Model:
        """The loaded model a request names, or Triton's error for why there is none."""
        versions = self._models.get(name, {})
        if not self._states.get(name):  # never loaded (or not in the repository at all)
            raise InferenceError.not_found(f"Request for unknown model: '{name}' is not found")
        if not version:
            if not versions:
                raise InferenceError.not_found(
                    f"Request for unknown model: '{name}' has no available versions")
            return versions[max(versions)]
        number = int(version) if version.isdigit() else None
        if number is not None and number in versions:
            return versions[number]
        if number is not None and number in self._states[name]:
            raise InferenceError.unavailable(
                f"Request for unknown model: '{name}' version {version} is not at ready state")
        raise InferenceError.not_found(
            f"Request for unknown model: '{name}' version {version} is not found")

    def served(self, name: str) -> dict[int, Model]:
        """The loaded versions of ``name`` (empty when it is not loaded)."""
        return dict(self._models.get(name, {}))

    def all(self) -> list[Model]:
        """Every loaded version of every model; safe to call from another thread."""
        models = self._models
        return [m for name in sorted(models) for _, m in sorted(models[name].items())]

    def names(self) -> list[str]:
        return sorted(self._models)

    def model_names(self) -> list[str]:
        """Every model directory of the repository (hidden and ``_`` ones aside)."""
        try:
            return sorted(p.name for p in self.root.iterdir()
                          if p.is_dir() and not p.name.startswith((".", "_")))
        except OSError:
            return []

    def index(self, ready: bool = False) -> list[tuple[str, str, VersionState | None]]:
        """RepositoryIndex: every model of the repository, a never-loaded one by its name
        only (no version, no state), the others once per version with its state; with
        ``ready``, the READY versions only."""
        entries: list[tuple[str, str, VersionState | None]] = []
        for name in sorted(set(self.model_names()) | self._states.keys()):
            states = self._states.get(name)
            if not states:
                if not ready:
                    entries.append((name, "", None))
                continue
            for version in sorted(states):
                if not ready or states[version].state == READY:
                    entries.append((name, str(version), states[version]))
        return entries

    def ready(self) -> bool:
        """tritonserver's strict readiness: every version that was loaded or tried is READY,
        or was unloaded (loading, unloading or failed: not ready)."""
        return all(s.state == READY or (s.state == UNAVAILABLE and s.reason == UNLOADED)
                   for states in self._states.values() for s in states.values())

    # ------------------------------------------------------------------ shutdown

    def stop_accepting(self) -> None:
        for model in self.all():
            model.stopping = True

    async def close(self) -> None:
        """Close every model: the loaded ones and those still draining after an unload. A
        load under way finishes first (the lock), so that its backends are closed too."""
        async with self._lock:
            draining = list(self._draining)
            for task in draining:
                task.cancel()
            await asyncio.gather(*draining, return_exceptions=True)
            for model in self.all():
                await self._close(model)
