"""Properties that hold for any input: framing round-trips, tokens rejoin, stops never leak."""

from __future__ import annotations

import itertools
import json
import random

from hypothesis import given, settings, strategies as st
from openai._streaming import SSEDecoder

from streamapi import sse
from streamapi.engines.planner import Planner
from streamapi.engines.protocol import GenerationRequest, PromptMessage, TokenDelta, ToolCallStart
from streamapi.serving.chat import ChatJob, _Choice, _ChunkWriter
from streamapi.serving.generation import Job
from streamapi.text import harness, instructions, writer
from streamapi.text.memo import per_text
from streamapi.text.tokenizer import (
    _ASCII_PIECES,
    _PIECES,
    count_chat_tokens,
    count_prompt_tokens,
    prefix_chars,
    prompt_tokens,
    tokenize,
)

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


@DETERMINISTIC
@given(text=st.text(), limit=st.integers(-2, 40))
def test_a_limit_keeps_the_first_tokens_and_a_prompt_is_cut_the_same(text: str, limit: int) -> None:
    tokens = tokenize(text)
    assert tokenize(text, limit) == tokens[: max(limit, 0)]
    assert prompt_tokens(text) == tokens  # remembered, or cut again for a long text
    assert prompt_tokens(text) == tokens
    assert count_prompt_tokens(text) == len(tokens)
    assert count_chat_tokens([text, text]) == 2 * len(tokens) + 9


# ASCII text is cut by a pattern of its own (faster): it must cut as the Unicode one does.
_ASCII = st.characters(max_codepoint=127)
_ASCII_PARTS = st.sampled_from(
    ["'s", "'ll", " word", "12345", "__", "  ", "\x1c\x1f", " \t\n", "a-b"]
)


@DETERMINISTIC
@given(parts=st.lists(st.one_of(st.text(_ASCII, max_size=3), _ASCII_PARTS), max_size=30))
def test_ascii_text_is_cut_as_the_unicode_pattern_cuts_it(parts: list[str]) -> None:
    text = "".join(parts)
    assert _ASCII_PIECES.findall(text) == _PIECES.findall(text)


def test_each_ascii_character_is_classed_as_the_unicode_pattern_classes_it() -> None:
    for code in range(128):
        char = chr(code)
        for text in (char, char * 3, f"a{char}", f" {char}b", f"{char} x", f"'{char}", f"1{char}2"):
            assert _ASCII_PIECES.findall(text) == _PIECES.findall(text), repr(text)


# Texts that hold what the simulator's patterns look for, in mixed case and around the
# edges its shortcuts rely on (ASCII or not, long runs of spaces and marks, contractions).
_PROMPT_PARTS = st.sampled_from(
    [
        " Word",
        " wOrDs",
        " sentence",
        " SENTENCES",
        " one",
        " 3",
        " be brief",
        " Keep it \u017fhort",
        " briefly",
        " tl;dr",
        " json",
        " JSON",
        " j\u017fon",
        " respond with",
        " as",
        " in",
        ". ",
        "? ",
        "!\n",
        "\n",
        " works",
        " mean",
        " Matter",
        " \u017f",
        " \u0131",
        " <task>",
        "</task>",
        " Task:",
        "[[ ## answer ## ]]",
        " Observation: ",
        " extraordinarily",
        "___________",
        "abcdefghijklmnop",
        " " * 40,
        "." * 30,
        "'re",
        "'s",
        " 12345",
        " é",
        "\x1c",
    ]
)
_PROMPTS = st.lists(st.one_of(_PROMPT_PARTS, st.text(max_size=4)), max_size=24).map("".join)


@DETERMINISTIC
@given(text=_PROMPTS, limit=st.integers(0, 24))
def test_a_capped_text_is_cut_as_the_whole_text_is(text: str, limit: int) -> None:
    assert tokenize(text, limit) == tokenize(text)[:limit]


def test_a_capped_text_is_cut_as_the_whole_text_is_across_window_ends() -> None:
    # A capped text is matched in windows: pieces that a window's end cuts short (long
    # words, runs of spaces or marks, contractions) must come out as in the whole text.
    rng = random.Random(22)
    parts = [
        *"ab cd  \n\t'sxyz0189_.,!?-é漢AB\x1c",
        *["abcdefghijklmnop", " abcdefghi", "___________", " " * 30, "1234567", " 'll", "'s"],
        *["....!!!!,,,", "'re", " " * 200, "x" * 100, "\n\n", "'ll"],
    ]
    for _ in range(3000):
        text = "".join(rng.choices(parts, k=rng.randint(0, 60)))
        whole = tokenize(text)
        for limit in (1, 2, 3, 5, 17, 40):
            assert tokenize(text, limit) == whole[:limit], (text, limit)


def test_a_long_enough_beginning_of_a_text_holds_its_first_tokens() -> None:
    # A capped answer is written only as far as prefix_chars says its tokens need.
    rng = random.Random(7)
    parts = [" " * 90, "x" * 100, "." * 70, " word", "'s", "extraordinarily ", "\n\n", "_" * 40]
    for _ in range(2000):
        text = "".join(rng.choices(parts, k=rng.randint(0, 40)))
        limit = rng.randint(0, 30)
        whole = tokenize(text, limit)
        for chars in (prefix_chars(limit), prefix_chars(limit) + rng.randint(1, 50)):
            assert tokenize(text[:chars], limit) == whole, (text, limit, chars)


@DETERMINISTIC
@given(question=_PROMPTS, seed=st.integers(0, 2**32), max_chars=st.integers(0, 3000))
def test_a_capped_answer_is_the_beginning_of_the_whole_answer(
    question: str, seed: int, max_chars: int
) -> None:
    whole = writer.write_answer(question, random.Random(seed), min_chars=1378)
    capped = writer.write_answer(question, random.Random(seed), min_chars=1378, max_chars=max_chars)
    assert whole.startswith(capped)
    assert len(capped) >= max_chars or capped == whole


@DETERMINISTIC
@given(text=_PROMPTS)
def test_a_text_skipped_by_a_shortcut_has_nothing_its_pattern_finds(text: str) -> None:
    # Each shortcut skips a pattern when a text lacks what every match holds.
    may = instructions._may_hold
    if instructions._WORDS_ASKED.search(text):
        assert may(text, ("word",))
    if instructions._SENTENCES_ASKED.search(text):
        assert may(text, ("sentence",))
    if instructions._BRIEF_ASKED.search(text):
        assert may(text, instructions._BRIEF_WORDS)
    assert instructions._asks_for_json(text) == bool(instructions._ASKS_FOR_JSON.search(text))
    if writer._FIRST_SENTENCE.search(text):
        assert any(mark in text for mark in ".?!\n")
    first = text.split("\n")[0]
    if writer._CLOSING_VERB.search(first) and first.isascii():
        assert first.lower().endswith(writer._CLOSING_VERBS)
    if harness._TAG.search(text):
        assert "<" in text
    if harness._ANNOUNCEMENTS.search(text):
        assert ":" in text
    if harness._FIELD_MARKER.search(text):
        assert "[[ ## " in text
    if text.isascii():
        assert writer._ASCII_WORD.findall(text) == writer._WORD.findall(text)


def test_a_per_text_memo_computes_a_text_once_and_a_long_one_each_time() -> None:
    calls: list[str] = []

    @per_text(maxsize=2, max_chars=5)
    def shout(text: str) -> str:
        calls.append(text)
        return text.upper()

    assert [shout("ab"), shout("ab"), shout("abcdef"), shout("abcdef")] == ["AB", "AB"] + [
        "ABCDEF"
    ] * 2
    assert calls == ["ab", "abcdef", "abcdef"]  # a long text is not kept
    for text in ("c", "d"):  # two more: "ab" is the least recent, and goes
        shout(text)
    shout("ab")
    assert calls[-1] == "ab"


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
        model="m", messages=(PromptMessage("user", question),), stop=tuple(stops), seed=seed
    )
    plan = _PLANNER.plan(request)
    assert not any(stop in plan.text for stop in stops)
    assert plan.finish_reason in ("stop", "length")


class _NoShortcut(_Choice):
    """A ``_ChunkWriter`` choice that never keeps its plain template: every delta takes
    the long way."""

    @property
    def plain(self) -> sse.DataTemplate | None:
        return None

    @plain.setter
    def plain(self, template: sse.DataTemplate | None) -> None:
        pass


_TEXT = st.text(min_size=0, max_size=6)
_DELTA = st.one_of(
    st.builds(TokenDelta, _TEXT),
    st.builds(TokenDelta, _TEXT, channel=st.just("reasoning")),
    st.builds(
        lambda i: TokenDelta("", tool_call=ToolCallStart(i, f"call_{i}", "f")), st.integers(0, 2)
    ),
    st.builds(TokenDelta, _TEXT, channel=st.just("tool_call"), tool_index=st.just(0)),
    st.builds(TokenDelta, _TEXT, cached_prompt_tokens=st.integers(0, 3)),
)


@DETERMINISTIC
@given(
    choices=st.lists(st.lists(_DELTA, max_size=12), min_size=1, max_size=2),
    finish=st.sampled_from(["stop", "length", "tool_calls"]),
    include_usage=st.booleans(),
)
def test_the_one_token_shortcut_writes_the_same_frames(
    choices: list[list[TokenDelta]], finish: str, include_usage: bool
) -> None:
    # _ChunkWriter fills a plain content token straight into its template; the
    # frames must be those that its general path writes for the same deltas.
    request = GenerationRequest(model="m", messages=(PromptMessage("user", "hi"),))
    job = Job(
        id="chatcmpl-1", created=1, model="m", choices=(request,) * len(choices), prompt_tokens=3
    )
    chat = ChatJob(job=job, include_usage=include_usage, continuous_usage=False, logprobs=False)
    fast, slow = _ChunkWriter(chat, 1), _ChunkWriter(chat, 1)
    slow._choices = tuple(_NoShortcut() for _ in choices)
    per_choice: list[list[tuple[int, TokenDelta]]] = []
    for index, deltas in enumerate(choices):
        opened = False
        kept = []
        for delta in deltas:
            opened = opened or delta.tool_call is not None
            if delta.channel != "tool_call" or opened:  # arguments follow an opened call
                kept.append((index, delta))
        per_choice.append([*kept, (index, TokenDelta("", finish_reason=finish))])  # type: ignore[arg-type]
    # The choices' deltas interleave, as two choices' tokens do.
    ordered = [pair for step in itertools.zip_longest(*per_choice) for pair in step if pair]
    for index, delta in ordered:
        assert fast.add(index, delta) == slow.add(index, delta)
    if include_usage:  # a stream sends its usage chunk only then
        assert fast.usage_chunk() == slow.usage_chunk()
