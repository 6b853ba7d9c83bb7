"""The experiment rules on their own: the file's validation, assignment and the guard's
judgement (latency included), with a clock the test moves; and the guard's messages between
proxies through a real redis-server."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from redis.asyncio import Redis

from detect_proxy.experiments import (
    ExperimentError,
    Experiments,
    Guard,
    GuardEvent,
    GuardWindow,
    Variant,
    assign,
    breach,
    parse,
)
from detect_proxy.guard_sync import CHANNEL, GuardSync
from detect_proxy.telemetry import Telemetry
from detect_stack.servers import free_port, redis_ping, running

FILE = """
[m]
salt = "s"
[[m.variants]]
name = "control"
version = "1"
weight = 3
[[m.variants]]
name = "candidate"
version = "2"
weight = 1
[m.guard]
window_s = 10
min_calls = 4
max_error_rate = 0.5
max_p99_ms = 100
"""


def test_ranges_follow_the_weights_in_file_order():
    variants = (Variant("a", "1", 3), Variant("off", "3", 0), Variant("b", "2", 1))
    assert assign(variants, 0.0).name == "a"
    assert assign(variants, 0.7499).name == "a"
    assert assign(variants, 0.75).name == "b"
    assert assign(variants, 0.999999).name == "b"
    assert assign((Variant("a", "1", 0),), 0.5) is None


@pytest.mark.parametrize("text, message", [
    ("[m]\nsalt = 1\n", "'salt' must be a str"),
    ("[m]\nsalt = \"s\"\nvariants = []\n", "'variants' is empty"),
    ('[m]\nsalt = "s"\n[[m.variants]]\nname = "a"\nversion = "v1"\nweight = 1\n',
     "version must be digits"),
    ('[m]\nsalt = "s"\n[[m.variants]]\nname = "a"\nversion = "1"\nweight = -1\n',
     "weight must be >= 0"),
    ('[m]\nsalt = "s"\n[[m.variants]]\nname = "a"\nversion = "1"\nweight = 0\n',
     "at least one variant needs a weight above 0"),
    ('[m]\nsalt = "s"\nsplit = 3\n', "unknown keys ['split']"),
    (FILE.replace("max_p99_ms", "max_p99"), "[m] guard: unknown keys ['max_p99']"),
    ("[m\n", "not valid TOML"),
])
def test_a_bad_file_says_where(text, message):
    with pytest.raises(ExperimentError) as err:
        parse(text)
    assert message in str(err.value)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_guard_judges_latency_and_errors_over_its_window(tmp_path):
    path = tmp_path / "experiments.toml"
    path.write_text(FILE)
    clock = Clock()
    experiments = Experiments(str(path), 1.0, clock)
    for _ in range(3):  # slow, but too few calls to judge
        experiments.record("m", "candidate", grpc.StatusCode.OK, 0.5)
    assert not experiments.guarded
    clock.now = 11.0  # those left the window
    for _ in range(4):
        experiments.record("m", "candidate", grpc.StatusCode.OK, 0.5)
    assert not experiments.guarded  # breaches, but control has too few calls to compare with
    for _ in range(4):
        experiments.record("m", "control", grpc.StatusCode.OK, 0.01)
    experiments.record("m", "candidate", grpc.StatusCode.OK, 0.5)
    assert "p99 latency 500 ms > 100 ms over 5 calls" in experiments.guarded[("m", "candidate")]
    # Out of the split: every caller now gets control.
    choices = {experiments.choose("m", "", f"k{i}", "", "").variant for i in range(200)}
    assert choices == {"control"}
    assert experiments.restore("m", "candidate").startswith("p99 latency")
    # Callers' own mistakes are not the variant's fault.
    for _ in range(4):
        experiments.record("m", "control", grpc.StatusCode.INVALID_ARGUMENT, 0.001)
    assert not experiments.guarded
    for _ in range(4):  # back in the split, and fine now
        experiments.record("m", "candidate", grpc.StatusCode.OK, 0.001)
    for _ in range(8):
        experiments.record("m", "control", grpc.StatusCode.UNAVAILABLE, 0.001)
    assert not experiments.guarded  # 8 of 16: at the bound, not over it
    experiments.record("m", "control", grpc.StatusCode.UNAVAILABLE, 0.001)
    assert "error rate 52.9% > 50.0% over 17 calls" in experiments.guarded[("m", "control")]


def test_a_change_applies_once_it_reads_the_same_twice(tmp_path):
    """An editor that truncates and rewrites in place can be caught with an empty or half
    file; that read must never end the experiments in force."""
    path = tmp_path / "experiments.toml"
    path.write_text(FILE)
    experiments = Experiments(str(path), 1.0)
    path.write_text("")  # caught half-way
    assert not experiments.reload()
    path.write_text(FILE.replace("weight = 1", "weight = 2"))
    assert not experiments.reload()  # seen once
    assert [v.weight for v in experiments.by_model["m"].variants] == [3, 1]
    assert experiments.reload()  # the same twice: applied
    assert [v.weight for v in experiments.by_model["m"].variants] == [3, 2]
    assert not experiments.reload()
    assert experiments.reloads["applied"] == 1


def test_a_fault_every_variant_shares_takes_none_out(tmp_path):
    path = tmp_path / "experiments.toml"
    path.write_text(FILE)
    clock = Clock()
    experiments = Experiments(str(path), 1.0, clock)
    for _ in range(10):
        experiments.record("m", "control", grpc.StatusCode.OK, 0.001)
        experiments.record("m", "candidate", grpc.StatusCode.OK, 0.001)
    clock.now = 1.0  # the backend goes down; control's callers happen to come first
    for _ in range(12):
        experiments.record("m", "control", grpc.StatusCode.UNAVAILABLE, 0.001)
    # Control breaks the bounds, but candidate has had no call since: nothing to compare.
    assert not experiments.guarded
    for _ in range(11):
        experiments.record("m", "candidate", grpc.StatusCode.UNAVAILABLE, 0.001)
    assert not experiments.guarded
    assert experiments.shared_breach == {"m"}
    clock.now = 2.0  # back
    for _ in range(4):
        experiments.record("m", "control", grpc.StatusCode.OK, 0.001)
        experiments.record("m", "candidate", grpc.StatusCode.OK, 0.001)
    assert not experiments.guarded and not experiments.shared_breach
    clock.now = 3.0  # now the candidate alone fails: its own fault
    for _ in range(5):
        experiments.record("m", "candidate", grpc.StatusCode.INTERNAL, 0.001)
        experiments.record("m", "control", grpc.StatusCode.OK, 0.001)
    # Judged on what came after control was back within bounds (the windows started again).
    assert "error rate 83.3% > 50.0% over 6 calls" in experiments.guarded[("m", "candidate")]


def test_a_batch_row_that_fails_counts_against_the_variant(tmp_path):
    path = tmp_path / "experiments.toml"
    path.write_text(FILE)
    experiments = Experiments(str(path), 1.0)
    for _ in range(4):
        experiments.record("m", "control", grpc.StatusCode.OK, 0.001)
    for _ in range(4):
        with experiments.outcome("m", "candidate") as failed_rows:
            failed_rows += [grpc.StatusCode.INVALID_ARGUMENT]  # the caller's image: not it
    assert not experiments.guarded
    for _ in range(5):
        with experiments.outcome("m", "candidate") as failed_rows:
            failed_rows += [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL]
        experiments.record("m", "control", grpc.StatusCode.OK, 0.001)
    assert "error rate 55.6% > 50.0% over 9 calls" in experiments.guarded[("m", "candidate")]


def test_the_running_counts_judge_as_the_whole_window_does():
    """The guard judges each call from running counts; the verdict must be exactly the one
    computed from every outcome in the window, whatever the mix and the window's size."""
    rng = random.Random(7)
    for _ in range(300):
        guard = Guard(window_s=rng.choice([1.0, 5.0]), min_calls=rng.randint(1, 30),
                      max_error_rate=rng.choice([0.0, 0.05, 0.5, 1.0]),
                      max_p99_ms=rng.choice([0.0, 50.0, 100.0]))
        window, now = GuardWindow(guard), 0.0
        for _ in range(rng.randint(1, 400)):
            now += rng.expovariate(100)
            window.add((now, rng.random() < 0.03, rng.choice([0.01, 0.05, 0.1, 0.2])))
            assert window.breach() == breach(list(window.outcomes), guard)
            assert window.onset() == next(
                (when for when, failed, latency in window.outcomes
                 if failed or (guard.max_p99_ms and latency * 1000 > guard.max_p99_ms)),
                window.outcomes[0][0])


def test_decisions_told_and_heard(tmp_path):
    """What a proxy tells the others (on_guard) and what it takes from them (apply): only
    decisions about the same experiment (model, salt, variant) change its split."""
    path = tmp_path / "experiments.toml"
    path.write_text(FILE)
    experiments = Experiments(str(path), 1.0)
    told: list[GuardEvent] = []
    experiments.on_guard = told.append
    for _ in range(5):
        experiments.record("m", "control", grpc.StatusCode.OK, 0.001)
        experiments.record("m", "candidate", grpc.StatusCode.INTERNAL, 0.001)
    assert told == [GuardEvent(GuardEvent.OUT, "m", "s", "candidate",
                               "error rate 100.0% > 50.0% over 5 calls")]
    experiments.restore("m", "candidate")
    experiments.restore("m", "control")  # an operator's restore is told even if it was in
    assert [e.action for e in told[1:]] == [GuardEvent.BACK, GuardEvent.BACK]

    assert not experiments.apply(GuardEvent(GuardEvent.OUT, "m", "other-salt", "candidate", "x"))
    assert not experiments.apply(GuardEvent(GuardEvent.OUT, "m", "s", "nope", "x"))
    assert not experiments.apply(GuardEvent(GuardEvent.OUT, "other", "s", "candidate", "x"))
    assert not experiments.guarded
    assert experiments.apply(GuardEvent(GuardEvent.OUT, "m", "s", "candidate", "slow"))
    assert experiments.guarded == {("m", "candidate"): "slow (judged by another proxy)"}
    assert not experiments.apply(GuardEvent(GuardEvent.OUT, "m", "s", "candidate", "slow"))
    assert experiments.apply(GuardEvent(GuardEvent.BACK, "m", "s", "candidate"))
    assert not experiments.guarded
    assert len(told) == 3  # what it heard, it does not tell again


@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_decisions_travel_through_a_real_redis(tmp_path, over):
    """Two guards (as two proxies have) on one redis-server, over TCP and a Unix socket."""
    path = tmp_path / "experiments.toml"
    path.write_text(FILE)
    port = free_port()
    sock = tmp_path / "redis.sock"
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--unixsocket", str(sock)]
    url = f"redis://127.0.0.1:{port}/0" if over == "tcp" else f"unix://{sock}"

    async def exchange() -> tuple[dict, dict]:
        here, there = Experiments(str(path), 1.0), Experiments(str(path), 1.0)
        syncs = [GuardSync(url, e, 1.0, 0.1, Telemetry(0)) for e in (here, there)]
        for sync in syncs:
            sync.start()
        async with Redis.from_url(url) as redis:  # until both have subscribed
            for _ in range(250):
                if (await redis.pubsub_numsub(CHANNEL))[0][1] == 2:
                    break
                await asyncio.sleep(0.02)
        for _ in range(5):
            here.record("m", "control", grpc.StatusCode.OK, 0.001)
            here.record("m", "candidate", grpc.StatusCode.INTERNAL, 0.001)
        for _ in range(50):
            if there.guarded:
                break
            await asyncio.sleep(0.02)
        heard = dict(there.guarded)
        there.restore("m", "candidate")
        for _ in range(50):
            if not here.guarded:
                break
            await asyncio.sleep(0.02)
        after = dict(here.guarded)
        for sync in syncs:
            await sync.close()
        return heard, after

    with running(args, tmp_path / "redis.log", lambda: redis_ping(port)):
        heard, after = asyncio.run(exchange())
    assert heard == {("m", "candidate"): "error rate 100.0% > 50.0% over 5 calls (judged by "
                                         "another proxy)"}
    assert after == {}
