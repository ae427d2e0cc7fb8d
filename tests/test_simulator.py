"""The simulator engine, its tokenizer and its answer writer."""

from __future__ import annotations

import asyncio
import random

import pytest

from streamapi.engines.protocol import GenerationRequest, PromptMessage
from streamapi.engines.scheduler import ScheduledSequence
from streamapi.engines.simulator import SimulatorEngine
from streamapi.text.tokenizer import count_chat_tokens, count_tokens, tokenize
from streamapi.text.writer import find_subject, key_terms, write_answer


def request(text: str = "Explain vector databases", **fields: object) -> GenerationRequest:
    return GenerationRequest(
        model="m",
        messages=(PromptMessage("user", text),),
        **fields,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello, world! It's 2026: streaming APIs   rock.\n\n- item_name",
        "internationalization antidisestablishmentarianism",
        "naïve café — 東京 👋🏽 \t\r\n",
        "x" * 5000,
        "1234567890,,,,;;;;",
    ],
)
def test_tokens_concatenate_back_to_the_text(text: str) -> None:
    assert "".join(tokenize(text)) == text


def test_tokenizer_averages_about_four_characters_a_token() -> None:
    answer = write_answer(
        "Explain how TCP congestion control works", random.Random(1), min_chars=5000
    )
    ratio = len(answer) / count_tokens(answer)
    assert 3.5 <= ratio <= 5.0


def test_words_keep_their_leading_space() -> None:
    assert tokenize("Hello big world.") == ["Hello", " big", " world", "."]


def test_chat_tokens_count_message_framing() -> None:
    assert count_chat_tokens(["Hello big world."]) == 4 + 3 + 3
    assert count_chat_tokens([]) == 3


@pytest.mark.parametrize(
    ("question", "subject"),
    [
        ("Explain streaming APIs", "streaming APIs"),
        ("What is the CAP theorem?", "CAP theorem"),
        ("Can you please describe how Kubernetes schedules pods.", "how Kubernetes schedules pods"),
        ("Tell me about the history of Rome. Be brief.", "history of Rome"),
        ("   ", "this topic"),
    ],
)
def test_subject_drops_the_asking_words(question: str, subject: str) -> None:
    assert find_subject(question) == subject


def test_key_terms_prefer_repeated_content_words() -> None:
    question = "Compare PostgreSQL replication and MySQL replication for failover"
    terms = key_terms(question, find_subject(question))
    assert terms[0] == "replication"
    assert {"PostgreSQL", "MySQL", "failover"} <= set(terms)


def test_answer_is_structured_on_topic_and_long_enough() -> None:
    answer = write_answer("Explain vector databases", random.Random(9), min_chars=1378)
    assert len(answer) >= 1378
    assert "vector databases" in answer
    paragraphs = answer.split("\n\n")
    assert len(paragraphs) >= 5
    bullets = [line for line in answer.splitlines() if line.startswith("- ")]
    assert len(bullets) >= 3


def test_a_pathological_prompt_gives_an_answer_of_normal_length() -> None:
    answer = write_answer("a" * 5000, random.Random(1), min_chars=1378)
    assert len(answer) < 3000


def test_min_chars_grows_the_answer() -> None:
    assert len(write_answer("Explain caching", random.Random(1), min_chars=6000)) >= 6000


def test_plan_is_deterministic_for_a_seed() -> None:
    engine = SimulatorEngine()
    assert engine.plan(request(seed=1)) == engine.plan(request(seed=1))
    assert engine.plan(request(seed=1)) != engine.plan(request(seed=2))
    assert engine.plan(request(seed=1)) != engine.plan(request(seed=1, choice_index=1))


def test_server_wide_seed_makes_unseeded_requests_deterministic() -> None:
    engine = SimulatorEngine(seed=5)
    assert engine.plan(request()) == engine.plan(request())


def test_unseeded_requests_vary() -> None:
    engine = SimulatorEngine()
    plans = {tuple(engine.plan(request()).tokens) for _ in range(5)}
    assert len(plans) > 1


def test_temperature_zero_is_deterministic_without_a_seed() -> None:
    engine = SimulatorEngine()
    assert engine.plan(request(temperature=0.0)) == engine.plan(
        request(temperature=0.0, choice_index=3)
    )


def test_max_tokens_cuts_with_length() -> None:
    plan = SimulatorEngine().plan(request(seed=1, max_tokens=10))
    assert len(plan.tokens) == 10
    assert plan.finish_reason == "length"


def test_stop_cuts_before_the_stop_string() -> None:
    engine = SimulatorEngine()
    full = "".join(engine.plan(request(seed=1)).tokens)
    plan = engine.plan(request(seed=1, stop=("\n\n",)))
    assert "".join(plan.tokens) == full.split("\n\n")[0]
    assert plan.finish_reason == "stop"


def test_stop_at_the_very_start_streams_no_token() -> None:
    engine = SimulatorEngine()
    first = engine.plan(request(seed=1)).tokens[0]
    plan = engine.plan(request(seed=1, stop=(first,)))
    assert plan.tokens == []


async def test_stream_with_no_token_still_finishes() -> None:
    engine = SimulatorEngine()
    first = engine.plan(request(seed=1)).tokens[0]
    deltas = [d async for d in engine.stream(request(seed=1, stop=(first,)))]
    assert [(d.text, d.finish_reason) for d in deltas] == [("", "stop")]


async def test_stream_sets_finish_reason_on_the_last_token_only() -> None:
    deltas = [d async for d in SimulatorEngine().stream(request(seed=1, max_tokens=5))]
    assert [d.finish_reason for d in deltas] == [None, None, None, None, "length"]


async def test_stream_is_paced_by_the_event_loop_clock() -> None:
    engine = SimulatorEngine(time_to_first_token_ms=30, inter_token_latency_ms=10)
    loop = asyncio.get_running_loop()
    start = loop.time()
    stamps = [loop.time() - start async for _ in engine.stream(request(seed=1, max_tokens=6))]
    # Sleeps end no earlier than asked; how much later depends on the machine.
    assert stamps[0] >= 0.030
    assert stamps[-1] >= 0.030 + 5 * 0.010


async def test_closing_the_stream_early_stops_it() -> None:
    stream = SimulatorEngine(inter_token_latency_ms=1).stream(request(seed=1))
    first = await anext(stream)
    await stream.aclose()
    assert first.text
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_a_long_answer_is_planned_off_the_loop_and_streams_the_same() -> None:
    # Over 2,048 tokens with ignore_eos: planned in a worker thread when the stream opens.
    long = request(seed=1, max_tokens=3000, ignore_eos=True)
    engine = SimulatorEngine()
    stream = engine.stream(long)
    assert not isinstance(stream, ScheduledSequence)
    deltas = [d async for d in stream]
    assert [d.text for d in deltas] == engine.plan(long).tokens
    assert deltas[-1].finish_reason == "length"
    await engine.aclose()


async def test_a_long_answer_closed_before_it_opens_never_queues() -> None:
    engine = SimulatorEngine()
    stream = engine.stream(request(seed=1, max_tokens=3000, ignore_eos=True))
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert engine.scheduler.running == 0
    await engine.aclose()
