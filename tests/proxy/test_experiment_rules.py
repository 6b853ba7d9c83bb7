"""The experiment rules on their own: the file's validation, assignment and the guard's
judgement (latency included), with a clock the test moves."""

from __future__ import annotations

import grpc
import pytest

from detect_proxy.experiments import (
    ExperimentError,
    Experiments,
    Variant,
    assign,
    parse,
)

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
    for _ in range(3):
        experiments.record("m", "candidate", grpc.StatusCode.OK, 0.5)
    assert not experiments.guarded
    experiments.record("m", "candidate", grpc.StatusCode.OK, 0.5)
    assert "p99 latency 500 ms > 100 ms over 4 calls" in experiments.guarded[("m", "candidate")]
    # Out of the split: every caller now gets control.
    choices = {experiments.choose("m", "", f"k{i}", "", "").variant for i in range(200)}
    assert choices == {"control"}
    assert experiments.restore("m", "candidate").startswith("p99 latency")
    # Callers' own mistakes are not the variant's fault.
    for _ in range(4):
        experiments.record("m", "control", grpc.StatusCode.INVALID_ARGUMENT, 0.001)
    assert not experiments.guarded
    for _ in range(5):
        experiments.record("m", "control", grpc.StatusCode.UNAVAILABLE, 0.001)
    assert "error rate 55.6% > 50.0% over 9 calls" in experiments.guarded[("m", "control")]


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
