"""Experiments: which version of a model answers a call, and the guard that stops a bad one.

An experiment splits one model's calls between weighted variants, each a Triton version of
the model. Assignment is sticky and needs no state: a caller's key (its routing key header,
else the client identity Envoy sets) hashed with the experiment's salt gives a point in
[0, 1), and the variants own consecutive ranges of it in the file's order. Moving weight
from one variant to the next therefore moves only the keys in the range that changed hands;
changing the salt reshuffles everyone. A call without a key gets a random point.

The guard watches each variant's upstream outcomes over a sliding window; a variant whose
error rate or p99 latency breaks the experiment's bounds (with enough calls to judge) is
taken out of the split: its keys spread over the remaining variants until an operator puts
it back. A breach is the variant's own only when another variant in the split keeps within
the bounds on calls served since the breach's first bad call: a fault every variant shares
(a backend outage, overload) takes nobody out, and nobody is judged until some variant keeps
within the bounds again. Each proxy judges its own traffic.

The file (TOML, one table per model) is re-read when it changes; a file that does not parse
or validate is logged and counted, and the previous experiments stay in force.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import logging
import math
import random
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import grpc

from .errors import ProxyError, invalid

log = logging.getLogger(__name__)

# Codes that say nothing about the variant: the caller's own mistakes, and calls it left.
NOT_THE_VARIANTS_FAULT = frozenset({grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT,
                                    grpc.StatusCode.CANCELLED})


class ExperimentError(ValueError):
    """The experiments file is not valid; the message says where."""


@dataclass(frozen=True)
class Variant:
    name: str
    version: str
    weight: float


@dataclass(frozen=True)
class Shadow:
    version: str  # the candidate version every sampled call is also sent to
    fraction: float  # share of the model's calls that are shadowed, in [0, 1]
    max_concurrency: int  # shadow calls in flight at most; more are skipped


@dataclass(frozen=True)
class Guard:
    window_s: float
    min_calls: int  # calls in the window before the guard judges a variant
    max_error_rate: float  # in [0, 1]; 1 disables the error bound
    max_p99_ms: float  # 0 disables the latency bound


@dataclass(frozen=True)
class Experiment:
    model: str
    salt: str
    variants: tuple[Variant, ...]
    force_clients: frozenset[str] = frozenset()
    shadow: Shadow | None = None
    guard: Guard | None = None

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


@dataclass(frozen=True)
class Choice:
    version: str  # "" lets the model server pick
    variant: str  # "" when no experiment chose


def bucket(salt: str, key: str) -> float:
    """The caller's point in [0, 1): stable across processes and restarts."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(variants: tuple[Variant, ...], point: float) -> Variant | None:
    """The variant owning ``point``: variants own consecutive ranges, in order, sized by
    weight (variants of weight 0 own none). None when every weight is 0."""
    total = sum(v.weight for v in variants)
    if total <= 0:
        return None
    edge = 0.0
    for variant in variants:
        edge += variant.weight / total
        if variant.weight > 0 and point < edge:
            return variant
    return next(v for v in reversed(variants) if v.weight > 0)  # rounding at the top end


# --- the file -------------------------------------------------------------------------------

def _get(table: dict[str, Any], where: str, key: str, kind: type, default: Any = None) -> Any:
    value = table.get(key, default)
    if value is None:
        raise ExperimentError(f"{where}: '{key}' is required")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ExperimentError(f"{where}: '{key}' must be a {kind.__name__}, got {value!r}")
    return value


def _known(where: str, table: dict[str, Any], keys: set[str]) -> None:
    """A misspelt key would silently do nothing: refuse it."""
    if unknown := sorted(set(table) - keys):
        raise ExperimentError(f"{where}: unknown keys {unknown}; expected {sorted(keys)}")


def _version(where: str, value: str) -> str:
    if not value.isdigit():
        raise ExperimentError(f"{where}: version must be digits (a Triton version), "
                              f"got {value!r}")
    return value


def _experiment(model: str, table: dict[str, Any]) -> Experiment:
    where = f"[{model}]"
    _known(where, table, {"salt", "variants", "force_clients", "shadow", "guard"})
    salt = _get(table, where, "salt", str)
    rows = _get(table, where, "variants", list)
    if not rows:
        raise ExperimentError(f"{where}: 'variants' is empty")
    variants = []
    for i, row in enumerate(rows):
        at = f"{where} variants[{i}]"
        if not isinstance(row, dict):
            raise ExperimentError(f"{at}: must be a table with name, version, weight")
        _known(at, row, {"name", "version", "weight"})
        weight = _get(row, at, "weight", float)
        if not math.isfinite(weight) or weight < 0:
            raise ExperimentError(f"{at}: weight must be >= 0, got {weight}")
        variants.append(Variant(_get(row, at, "name", str),
                                _version(at, _get(row, at, "version", str)), weight))
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or "" in names:
        raise ExperimentError(f"{where}: variant names must be distinct and non-empty: {names}")
    if sum(v.weight for v in variants) <= 0:
        raise ExperimentError(f"{where}: at least one variant needs a weight above 0")
    clients = _get(table, where, "force_clients", list, [])
    if not all(isinstance(c, str) and c for c in clients):
        raise ExperimentError(f"{where}: force_clients must be a list of client ids")
    shadow = guard = None
    if "shadow" in table:
        s, at = _get(table, where, "shadow", dict), f"{where} shadow"
        _known(at, s, {"version", "fraction", "max_concurrency"})
        fraction = _get(s, at, "fraction", float)
        if not 0 <= fraction <= 1:
            raise ExperimentError(f"{at}: fraction must be in [0, 1], got {fraction}")
        concurrency = _get(s, at, "max_concurrency", int, 8)
        if concurrency < 1:
            raise ExperimentError(f"{at}: max_concurrency must be >= 1, got {concurrency}")
        shadow = Shadow(_version(at, _get(s, at, "version", str)), fraction, concurrency)
    if "guard" in table:
        g, at = _get(table, where, "guard", dict), f"{where} guard"
        _known(at, g, {"window_s", "min_calls", "max_error_rate", "max_p99_ms"})
        guard = Guard(_get(g, at, "window_s", float, 60.0), _get(g, at, "min_calls", int, 20),
                      _get(g, at, "max_error_rate", float, 1.0),
                      _get(g, at, "max_p99_ms", float, 0.0))
        if guard.window_s <= 0 or guard.min_calls < 1 or not 0 <= guard.max_error_rate <= 1 \
                or guard.max_p99_ms < 0:
            raise ExperimentError(f"{at}: need window_s > 0, min_calls >= 1, max_error_rate "
                                  f"in [0, 1], max_p99_ms >= 0; got {guard}")
    return Experiment(model, salt, tuple(variants), frozenset(clients), shadow, guard)


def parse(text: str) -> dict[str, Experiment]:
    """Experiments by model from the file's text."""
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"not valid TOML: {exc}") from None
    experiments = {}
    for model, table in tables.items():
        if not isinstance(table, dict):
            raise ExperimentError(f"'{model}': expected a table per model, got {table!r}")
        experiments[model] = _experiment(model, table)
    return experiments


# --- the guard ------------------------------------------------------------------------------

Outcome = tuple[float, bool, float]  # (when, failed, latency_s)


def _slow(outcome: Outcome, guard: Guard) -> bool:
    return bool(guard.max_p99_ms) and outcome[2] * 1000 > guard.max_p99_ms


def breach(outcomes: Sequence[Outcome], guard: Guard) -> str:
    """Why these outcomes break the guard's bounds; "" when they do not (or too few calls)."""
    calls = len(outcomes)
    if calls < guard.min_calls:
        return ""
    errors = sum(failed for _, failed, _ in outcomes) / calls
    if errors > guard.max_error_rate:
        return f"error rate {errors:.1%} > {guard.max_error_rate:.1%} over {calls} calls"
    if guard.max_p99_ms:
        latencies = sorted(latency for _, _, latency in outcomes)
        p99_ms = latencies[min(calls - 1, math.ceil(0.99 * calls) - 1)] * 1000
        if p99_ms > guard.max_p99_ms:
            return f"p99 latency {p99_ms:.0f} ms > {guard.max_p99_ms:.0f} ms over {calls} calls"
    return ""


@dataclass(frozen=True)
class GuardEvent:
    """A guard decision, as proxies tell each other (guard_sync.py)."""
    OUT: ClassVar[str] = "out"  # the guard took the variant out
    BACK: ClassVar[str] = "back"  # an operator put it back

    action: str
    model: str
    salt: str
    variant: str
    why: str = ""


class GuardWindow:
    """A variant's outcomes over the last window_s, with running counts of the failed and the
    slow ones, so that judging a call costs O(1) however many calls the window holds (the
    exact figures are computed only for a breach)."""

    def __init__(self, guard: Guard, outcomes: Iterable[Outcome] = ()) -> None:
        self.guard = guard
        self.outcomes: collections.deque[Outcome] = collections.deque()
        self.bad: collections.deque[float] = collections.deque()  # when, of failed or slow
        self.failed = self.slow = 0
        for outcome in outcomes:
            self._keep(outcome)

    def _keep(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        slow = _slow(outcome, self.guard)
        self.failed += outcome[1]
        self.slow += slow
        if outcome[1] or slow:
            self.bad.append(outcome[0])

    def add(self, outcome: Outcome) -> None:
        self._keep(outcome)
        self.expire(outcome[0])

    def expire(self, now: float) -> None:
        while self.outcomes and self.outcomes[0][0] < now - self.guard.window_s:
            outcome = self.outcomes.popleft()
            slow = _slow(outcome, self.guard)
            self.failed -= outcome[1]
            self.slow -= slow
            if outcome[1] or slow:
                self.bad.popleft()

    def breach(self) -> str:
        """As ``breach(self.outcomes, guard)``. p99 > bound exactly when more than the
        calls below the p99 rank are slower than the bound."""
        calls, guard = len(self.outcomes), self.guard
        if calls < guard.min_calls:
            return ""
        if self.failed / calls > guard.max_error_rate or \
                self.slow >= calls - math.ceil(0.99 * calls) + 1:
            return breach(self.outcomes, guard)
        return ""

    def onset(self) -> float:
        """When the window's first bad call happened: where a breach's evidence starts."""
        return self.bad[0] if self.bad else self.outcomes[0][0]

    def since(self, when: float) -> list[Outcome]:
        """The outcomes from ``when`` on (read from the newest: recent ones are few)."""
        return list(itertools.takewhile(lambda o: o[0] >= when, reversed(self.outcomes)))


class Experiments:
    """The experiments in force, their reloads, assignment and the guard."""

    def __init__(self, path: str, refresh_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._refresh_s = refresh_s
        self._clock = clock
        self.by_model: dict[str, Experiment] = {}
        self.guarded: dict[tuple[str, str], str] = {}  # (model, variant) -> why
        self.shared_breach: set[str] = set()  # models whose every variant breaches at once
        self.reloads: collections.Counter[str] = collections.Counter()  # by outcome
        self._windows: dict[tuple[str, str], GuardWindow] = {}
        self._text = ""
        self._changed: str | None = None  # a new text seen once, not yet applied
        # Told of every guard decision made here (GuardSync shares them with other proxies).
        self.on_guard: Callable[[GuardEvent], None] = lambda event: None
        self._task: asyncio.Task[None] | None = None
        if path:
            self._text = Path(path).read_text()
            self.by_model = parse(self._text)  # a bad file at start stops the proxy
            log.info("experiments from %s: %s", path, self.describe())

    def describe(self) -> str:
        return "; ".join(
            f"{e.model}: " + ", ".join(f"{v.name}=v{v.version}x{v.weight:g}" for v in e.variants)
            + (f", shadow v{e.shadow.version} at {e.shadow.fraction:g}" if e.shadow else "")
            for e in self.by_model.values()) or "none"

    def start(self) -> None:
        if self.path and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            self.reload()

    def reload(self) -> bool:
        """Re-read the file; True when new experiments took effect."""
        try:
            text = Path(self.path).read_text()
        except OSError as exc:
            if self._text != "\0unreadable":
                log.error("experiments file %s unreadable (%s); keeping the experiments in "
                          "force", self.path, exc)
                self.reloads["unreadable"] += 1
                self._text = "\0unreadable"
            return False
        if text == self._text:
            self._changed = None
            return False
        if text != self._changed:
            # Applied only once it reads the same on two checks in a row: an editor that
            # truncates and rewrites in place is never caught half-way (an empty file would
            # end every experiment for a moment).
            self._changed = text
            return False
        self._text, self._changed = text, None
        try:
            experiments = parse(text)
        except ExperimentError as exc:
            log.error("experiments file %s rejected: %s; keeping the experiments in force",
                      self.path, exc)
            self.reloads["invalid"] += 1
            return False
        self.by_model = experiments
        self.reloads["applied"] += 1
        log.info("experiments reloaded from %s: %s", self.path, self.describe())
        return True

    def choose(self, model: str, pinned: str, key: str, client: str, forced: str) -> Choice:
        """The version and variant for a call. ``pinned``: the request's model_version;
        ``key``: what makes the choice sticky; ``forced``: a variant the caller asks for,
        allowed only to the experiment's force_clients."""
        if pinned:
            if not pinned.isdigit():
                raise invalid(f"model_version must be digits, e.g. \"2\", got {pinned[:20]!r}")
            return Choice(pinned, "")
        experiment = self.by_model.get(model)
        if forced:
            if experiment is None:
                raise invalid(f"model '{model}' has no experiment to force variant "
                              f"'{forced[:40]}' in")
            if client not in experiment.force_clients:
                raise ProxyError(grpc.StatusCode.PERMISSION_DENIED,
                                 f"client '{client[:60]}' may not force a variant of "
                                 f"model '{model}'")
            variant = experiment.variant(forced)
            if variant is None:
                raise invalid(f"model '{model}' has no variant '{forced[:40]}'; variants: "
                              f"{', '.join(v.name for v in experiment.variants)}")
            return Choice(variant.version, variant.name)
        if experiment is None:
            return Choice("", "")
        point = bucket(experiment.salt, key) if key else random.random()
        variant = assign(self.active(experiment), point)
        if variant is None:  # every variant guarded: the model's own default answers
            return Choice("", "")
        return Choice(variant.version, variant.name)

    def active(self, experiment: Experiment) -> tuple[Variant, ...]:
        """The split in force: a guarded variant's weight is 0."""
        return tuple(Variant(v.name, v.version, 0.0)
                     if (experiment.model, v.name) in self.guarded else v
                     for v in experiment.variants)

    def record(self, model: str, variant: str, code: grpc.StatusCode, latency_s: float) -> None:
        """An upstream outcome of ``variant``: the guard's evidence."""
        experiment = self.by_model.get(model)
        if not variant or experiment is None or experiment.guard is None \
                or code == grpc.StatusCode.CANCELLED:
            return
        guard, now = experiment.guard, self._clock()
        window = self._window(experiment, variant)
        window.add((now, code not in NOT_THE_VARIANTS_FAULT, latency_s))
        if (model, variant) in self.guarded:
            return
        why = window.breach()
        if model in self.shared_breach:
            if len(window.outcomes) >= guard.min_calls and not why:
                self._judge_afresh(experiment)
            return
        if not why:
            return
        others = self._others_since(experiment, variant, window.onset())
        if others is None:
            return  # the others have too few calls since the breach began: wait
        if others and all(others.values()):
            self._shared(experiment, {variant: why, **others})
            return
        self.guarded[(model, variant)] = why
        log.warning("experiment %s: variant %s taken out of the split: %s; an operator "
                    "puts it back (detect ops restore)", model, variant, why)
        self.on_guard(GuardEvent(GuardEvent.OUT, model, experiment.salt, variant, why))

    def _window(self, experiment: Experiment, variant: str) -> GuardWindow:
        """The variant's window, recounted if a reload changed the guard's bounds."""
        assert experiment.guard is not None
        key = (experiment.model, variant)
        window = self._windows.get(key)
        if window is None or window.guard != experiment.guard:
            window = self._windows[key] = GuardWindow(experiment.guard,
                                                  window.outcomes if window else ())
        return window

    def _others_since(self, experiment: Experiment, variant: str,
                      onset: float) -> dict[str, str] | None:
        """How the other variants in the split fared since ``onset`` (a variant's breach
        began): why each breaks the bounds, "" for one that keeps within them. A breach is
        the variant's own only when another, on calls of the same time, keeps within the
        bounds; None while none keeps within them and some have too few calls to judge."""
        assert experiment.guard is not None
        guard, now = experiment.guard, self._clock()
        verdicts: dict[str, str] = {}
        waiting = False
        for other in self.active(experiment):
            if other.name == variant or other.weight == 0:
                continue
            window = self._window(experiment, other.name)
            window.expire(now)
            recent = window.since(onset)
            if len(recent) < guard.min_calls:
                waiting = True
                continue
            verdicts[other.name] = breach(recent, guard)
            if not verdicts[other.name]:
                return verdicts
        return None if waiting else verdicts

    def _shared(self, experiment: Experiment, verdicts: dict[str, str]) -> None:
        """Every variant breaks the bounds on calls of the same time: a fault they share
        (backend outage, overload). Nobody is judged until one of them keeps within the
        bounds again, and what the windows saw meanwhile is nobody's evidence."""
        self.shared_breach.add(experiment.model)
        log.warning("experiment %s: every variant breaks its guard at once (%s): a fault they "
                    "share, such as a backend outage or overload; none taken out",
                    experiment.model, "; ".join(f"{n}: {why}" for n, why in verdicts.items()))
        self._forget(experiment)

    def _judge_afresh(self, experiment: Experiment) -> None:
        self.shared_breach.discard(experiment.model)
        log.info("experiment %s: a variant keeps within its guard's bounds again; the guard "
                 "judges afresh", experiment.model)
        self._forget(experiment)

    def _forget(self, experiment: Experiment) -> None:
        for variant in experiment.variants:
            self._windows.pop((experiment.model, variant.name), None)

    @contextlib.contextmanager
    def outcome(self, model: str, variant: str) -> Iterator[list[grpc.StatusCode]]:
        """Times the upstream work in the block and records how it ended for ``variant``.
        The block adds the codes of rows that failed on their own (a batch's images): the
        first that is the variant's fault counts the call as failed."""
        rows: list[grpc.StatusCode] = []
        if not variant:
            yield rows
            return
        start, code = self._clock(), grpc.StatusCode.OK
        try:
            yield rows
            code = next((c for c in rows if c not in NOT_THE_VARIANTS_FAULT), code)
        except ProxyError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self.record(model, variant, code, self._clock() - start)

    def restore(self, model: str, variant: str) -> str:
        """Put a guarded variant back into the split (an operator's decision)."""
        experiment = self.by_model.get(model)
        if experiment is None or experiment.variant(variant) is None:
            raise ProxyError(grpc.StatusCode.NOT_FOUND,
                             f"no variant '{variant}' in an experiment of model '{model}'")
        why = self.guarded.pop((model, variant), "")
        self._windows.pop((model, variant), None)
        if why:
            log.warning("experiment %s: variant %s put back into the split by an operator",
                        model, variant)
        # Every proxy follows the operator, also those whose guard this one never heard of.
        self.on_guard(GuardEvent(GuardEvent.BACK, model, experiment.salt, variant))
        return why

    def apply(self, event: GuardEvent) -> bool:
        """A decision another proxy made (or this one's, heard back): True when it changed
        the split here. Only for the same experiment: same model, salt and variant."""
        experiment = self.by_model.get(event.model)
        if experiment is None or experiment.salt != event.salt \
                or experiment.variant(event.variant) is None:
            return False
        key = (event.model, event.variant)
        if event.action == GuardEvent.OUT and key not in self.guarded:
            self.guarded[key] = f"{event.why} (judged by another proxy)"
            log.warning("experiment %s: variant %s taken out of the split by another proxy's "
                        "guard: %s", event.model, event.variant, event.why)
            return True
        if event.action == GuardEvent.BACK and key in self.guarded:
            del self.guarded[key]
            self._windows.pop(key, None)
            log.warning("experiment %s: variant %s put back into the split by an operator "
                        "(through another proxy)", event.model, event.variant)
            return True
        return False
