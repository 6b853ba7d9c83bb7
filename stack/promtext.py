"""Read a Prometheus text exposition in tests."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterable

_SAMPLE = re.compile(r'^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$')

# (metric name, labels, value)
Sample = tuple[str, dict[str, str], float]


def scrape(port: int, path: str = "/metrics") -> list[Sample]:
    """The samples a local endpoint exposes (Envoy's admin: ``path="/stats/prometheus"``)."""
    url = f"http://127.0.0.1:{port}{path}"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples: list[Sample] = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def value(samples: Iterable[Sample], name: str, **labels: str) -> float:
    return sum(v for n, sample_labels, v in samples
               if n == name and all(sample_labels.get(k) == w for k, w in labels.items()))
