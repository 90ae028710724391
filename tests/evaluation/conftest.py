"""Fixtures of the evaluation tests. METEOR's Java process takes ~8 s to start, so the session starts one and the
tests that need it share it."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pixelllm_d2.evaluation import scoring, text_metrics  # noqa: E402


@pytest.fixture(scope="session")
def meteor():
    with text_metrics.Meteor() as m:
        yield m


@pytest.fixture
def shared_meteor(meteor, monkeypatch):
    """Every evaluation inside the test reuses the session's METEOR process instead of starting its own."""

    class _Shared:
        def __enter__(self):
            return meteor

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(scoring, "Meteor", _Shared)
    return meteor


class FakeMeteor:
    """A METEOR stand-in returning fixed scores per hypothesis, recording what it was asked."""

    def __init__(self, scores):
        self.scores = scores
        self.calls = []

    def score(self, hypotheses, references):
        self.calls.append((list(hypotheses), [list(r) for r in references]))
        per_pair = [self.scores[h] for h in hypotheses]
        return sum(per_pair) / max(len(per_pair), 1), per_pair


@pytest.fixture
def fake_meteor():
    return FakeMeteor
