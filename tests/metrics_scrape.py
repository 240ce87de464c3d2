"""Scraping Archway's Prometheus endpoint in tests, as Prometheus would."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def sample_key(name: str, **labels: str) -> str:
    """One sample's name and labels, in the form ``scrape`` keys them by."""
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def requests_key(resolution: str, provider: str, model: str, outcome: str = "routed") -> str:
    """The ``sample_key`` of ``archway_requests_total`` for one set of labels."""
    return sample_key(
        "archway_requests_total",
        resolution=resolution,
        provider=provider,
        model=model,
        outcome=outcome,
    )


def parse(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample_key(sample.name, **sample.labels)] = sample.value
    return samples


def scrape(url: str) -> dict[str, float]:
    """Every sample the endpoint serves, by ``sample_key``."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain")
        return parse(response.read().decode())


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    """How much a sample grew between two scrapes (absent counts as 0)."""
    return after.get(key, 0.0) - before.get(key, 0.0)
