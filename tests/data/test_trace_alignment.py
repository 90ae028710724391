from types import SimpleNamespace

import numpy as np
import pytest

from pixelllm_d2.data.datasets.shapes_text import narrative_utterances
from pixelllm_d2.data.trace_alignment import align_tokens_to_utterances, summarize_traces
from pixelllm_d2.text import build_tokenizer

# Official alignment only looks at the ids' pad / EOS status; T5 convention: pad 0, EOS 1.
FAKE_TOKENIZER = SimpleNamespace(pad_id=0, eos_id=1)


def _utt(text, center):
    return {"utterance": text, "center": list(center)}


def test_official_alignment_hand_worked():
    # Valid utterances: 0, 3, 4 (1 has a zero centre, 2 is empty) -> positions 1/3, 2/3, 1.
    utterances = [
        _utt("in this picture", (0.2, 0.3)),
        _utt("i see", (0.0, 0.5)),
        _utt("  ", (0.4, 0.4)),
        _utt("a dog", (0.5, 0.5)),
        _utt("and a cat", (0.8, 0.6)),
    ]
    # 7 text tokens; token j sits at 1/3 + (j/7)(2/3) = .429 .524 .619 .714 .810 .905 1.0
    ids = [11, 12, 13, 14, 15, 16, 17, 1, 0, 0]
    got = align_tokens_to_utterances(ids, utterances, FAKE_TOKENIZER, "official")
    assert got.tolist() == [0, 3, 3, 3, 3, 4, 4, -1, -1, -1]


def test_official_alignment_tie_takes_first_utterance():
    # K = 2 (positions .5, 1), N = 2: token 1 sits at .75, equally far from both -> the first (tf.argmin).
    got = align_tokens_to_utterances([5, 6, 1], [_utt("a", (0.5, 0.5)), _utt("b", (0.5, 0.5))], FAKE_TOKENIZER)
    assert got.tolist() == [0, 1, -1]


@pytest.mark.parametrize("utterances", [[], [_utt("", (0.5, 0.5))], [_utt("x", (0.5, 0.0))]])
def test_no_valid_utterance_gives_no_target(utterances):
    assert align_tokens_to_utterances([5, 6, 1], utterances, FAKE_TOKENIZER).tolist() == [-1, -1, -1]


def test_official_vs_timestamp_on_a_shapes_narrative():
    tok = build_tokenizer("shapes")
    objs = [SimpleNamespace(size=s, color=c, shape=h) for s, c, h in
            [("small", "red", "circle"), ("large", "blue", "square"), ("small", "yellow", "triangle")]]
    texts = narrative_utterances(objs)
    caption = " ".join(texts)
    assert caption == "a small red circle and a large blue square and a small yellow triangle"
    ids = tok.encode(caption, 40)
    utterances = [_utt(t, (0.5, 0.5)) for t in texts]
    exact = align_tokens_to_utterances(ids, utterances, tok, "timestamp")
    assert exact[:14].tolist() == [0] * 4 + [1] * 5 + [2] * 5 and (exact[14:] == -1).all()
    # Order-proportional: the first and last of K=3 utterances get a quarter of the 14 tokens each.
    official = align_tokens_to_utterances(ids, utterances, tok, "official")
    assert official[:14].tolist() == [0] * 3 + [1] * 7 + [2] * 4


def test_timestamp_alignment_normalises_case_and_punctuation():
    tok = build_tokenizer("byt5")
    utterances = [_utt("In this image,", (0.1, 0.1)), _utt("a Dog.", (0.5, 0.5)), _utt("and a cat", (0.9, 0.9))]
    ids = tok.encode("In this image, a Dog. and a cat", 64)
    got = align_tokens_to_utterances(ids, utterances, tok, "timestamp")
    words, token_to_word = tok.group_words(ids)
    assert words == ["In", "this", "image,", "a", "Dog.", "and", "a", "cat"]
    per_word = {}
    for t, w in enumerate(token_to_word):
        if w >= 0:
            per_word.setdefault(w, set()).add(int(got[t]))
    assert [per_word[w] for w in range(len(words))] == [{0}, {0}, {0}, {1}, {1}, {2}, {2}, {2}]
    assert got[ids.index(1)] == -1  # EOS
    with pytest.raises(ValueError, match="official' or 'timestamp"):
        align_tokens_to_utterances(ids, utterances, tok, "nearest")


def test_summarize_traces_hand_worked():
    # x(t), y(t) through (t=0: .1,.2), (t=1: .3,.2), (t=2: .3,.6); given out of order.
    points = np.array([[0.3, 0.6, 2.0], [0.1, 0.2, 0.0], [0.3, 0.2, 1.0]])
    timed = [
        {"utterance": "inside", "start_time": 0.5, "end_time": 1.5},
        {"utterance": "after", "start_time": 2.0, "end_time": 3.0},
        {"utterance": "beyond", "start_time": 3.0, "end_time": 4.0},
        {"utterance": "before", "start_time": -1.0, "end_time": 0.0},
        {"utterance": "instant", "start_time": 1.0, "end_time": 1.0},
    ]
    got = summarize_traces(points, timed, num_samples=3)
    # inside: samples t = .5, 1, 1.5 -> x .2 .3 .3, y .2 .2 .4; trapezoid means .275, .25
    np.testing.assert_allclose(got[0]["box"], [0.2, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(got[0]["center"], [0.275, 0.25])
    np.testing.assert_allclose(got[0]["points"], [[0.2, 0.2], [0.3, 0.2], [0.3, 0.4]])
    # after the trace: extrapolated with the last segment's slope (y +.4/s): y .6 .8 1.0
    np.testing.assert_allclose(got[1]["box"], [0.3, 0.6, 0.3, 1.0])
    np.testing.assert_allclose(got[1]["center"], [0.3, 0.8])
    # further out, y reaches 1.4: clipped to [0, 1]
    np.testing.assert_allclose(got[2]["box"], [0.3, 1.0, 0.3, 1.0])
    np.testing.assert_allclose(got[2]["center"], [0.3, 1.0])
    # before the trace: x -.1 0 .1 (first segment's slope), clipped; the centre's x is 0 -> invalid online
    np.testing.assert_allclose(got[3]["box"], [0.0, 0.2, 0.1, 0.2])
    np.testing.assert_allclose(got[3]["center"], [0.0, 0.2], atol=1e-12)
    # zero duration: plain mean of identical samples
    np.testing.assert_allclose(got[4]["center"], [0.3, 0.2])
    assert [len(u["points"]) for u in got] == [3] * 5


def test_summarize_traces_matches_scipy_interp1d_and_trapz():
    interpolate = pytest.importorskip("scipy.interpolate")
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 10, 40))
    pts = np.stack([rng.uniform(-0.05, 1.05, 40), rng.uniform(-0.05, 1.05, 40), t], axis=1)
    timed = [{"utterance": "u", "start_time": s, "end_time": s + d} for s, d in [(-1, 2), (3, 1.5), (9.5, 2)]]
    got = summarize_traces(pts[rng.permutation(40)], timed)
    for g, u in zip(got, timed):
        ts = np.linspace(u["start_time"], u["end_time"], 16)
        xs = interpolate.interp1d(t, pts[:, 0], fill_value="extrapolate")(ts)
        ys = interpolate.interp1d(t, pts[:, 1], fill_value="extrapolate")(ts)
        cx = np.trapezoid(xs, ts) / (ts[-1] - ts[0])
        cy = np.trapezoid(ys, ts) / (ts[-1] - ts[0])
        np.testing.assert_allclose(g["points"], np.clip(np.stack([xs, ys], 1), 0, 1), atol=1e-12)
        np.testing.assert_allclose(g["center"], np.clip([cx, cy], 0, 1), atol=1e-12)
        np.testing.assert_allclose(g["box"], np.clip([xs.min(), ys.min(), xs.max(), ys.max()], 0, 1), atol=1e-12)
