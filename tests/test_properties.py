"""Properties that hold for any input: framing round-trips, tokens rejoin, stops never leak."""

from __future__ import annotations

import itertools
import json

from hypothesis import given, settings, strategies as st
from openai._streaming import SSEDecoder

from streamapi import sse
from streamapi.engines import ChatMessage, GenerationRequest
from streamapi.engines.planner import Planner
from streamapi.text.tokenizer import tokenize

DETERMINISTIC = settings(max_examples=300, derandomize=True, deadline=None)


def _decode(stream: bytes, cuts: list[int]) -> list[str]:
    """What the official openai SDK's SSE decoder reads, fed in arbitrary pieces."""
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    pieces = [stream[a:b] for a, b in itertools.pairwise(points)]
    return [event.data for event in SSEDecoder().iter_bytes(iter(pieces))]


@DETERMINISTIC
@given(texts=st.lists(st.text(), min_size=1, max_size=5), cuts=st.lists(st.integers(0, 10_000)))
def test_any_text_survives_the_encoder_and_the_sdk_decoder(
    texts: list[str], cuts: list[int]
) -> None:
    frames = [sse.encode_data({"choices": [{"delta": {"content": t}}]}) for t in texts]
    decoded = _decode(b"".join([*frames, sse.DONE]), cuts)
    assert decoded[-1] == "[DONE]"
    assert [json.loads(d)["choices"][0]["delta"]["content"] for d in decoded[:-1]] == texts


@DETERMINISTIC
@given(model=st.text(), texts=st.lists(st.text(), min_size=1, max_size=5))
def test_a_template_frame_is_byte_for_byte_the_encoded_chunk(model: str, texts: list[str]) -> None:
    # The hot path splices each token into a frame encoded once; whatever the
    # model name (even one that holds the hole marker) or the text, the bytes
    # are those of encoding the whole chunk.
    def chunk(content: str) -> dict[str, object]:
        return {"id": "x", "model": model + sse.HOLE, "choices": [{"delta": {"content": content}}]}

    template = sse.DataTemplate(chunk(sse.HOLE))
    for text in texts:
        assert template.fill(text) == sse.encode_data(chunk(text))


@DETERMINISTIC
@given(name=st.text(min_size=1, max_size=20), text=st.text(), cuts=st.lists(st.integers(0, 500)))
def test_named_events_survive_too(name: str, text: str, cuts: list[int]) -> None:
    event_name = "".join(ch for ch in name if ch.isalnum() or ch in "._") or "x"
    decoded = _decode(sse.encode_event(event_name, {"text": text}), cuts)
    assert [json.loads(d)["text"] for d in decoded] == [text]


@DETERMINISTIC
@given(text=st.text())
def test_tokens_rejoin_into_the_text(text: str) -> None:
    tokens = tokenize(text)
    assert "".join(tokens) == text
    assert all(tokens)


_PLANNER = Planner(min_answer_chars=400)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    question=st.text(min_size=1, max_size=80),
    stops=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4),
    seed=st.integers(0, 2**32),
)
def test_stop_sequences_never_leak_into_the_answer(
    question: str, stops: list[str], seed: int
) -> None:
    request = GenerationRequest(
        model="m", messages=(ChatMessage("user", question),), stop=tuple(stops), seed=seed
    )
    plan = _PLANNER.plan(request)
    assert not any(stop in plan.text for stop in stops)
    assert plan.finish_reason in ("stop", "length")
