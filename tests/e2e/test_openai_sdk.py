"""The official ``openai`` SDK, unchanged, against a real server process."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

if TYPE_CHECKING:
    from tests.e2e.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.e2e

MODEL = "sim-small"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Explain server-sent events"},
]
FAST_PACING = ("--time-to-first-token-ms", "20", "--inter-token-latency-ms", "1")


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> ServerProcess:
    return module_server_factory(*FAST_PACING, "--no-accept-unknown-models")


@pytest.fixture
def client(server: ServerProcess) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
async def async_client(server: ServerProcess) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def _content(chunks: list[ChatCompletionChunk], index: int = 0) -> str:
    return "".join(
        choice.delta.content or ""
        for chunk in chunks
        for choice in chunk.choices
        if choice.index == index
    )


def _finish_reasons(chunks: list[ChatCompletionChunk]) -> list[tuple[int, str]]:
    return [
        (choice.index, choice.finish_reason)
        for chunk in chunks
        for choice in chunk.choices
        if choice.finish_reason is not None
    ]


# --- completions, sync and async -----------------------------------------------------


def test_sync_create_returns_whole_completion(client: OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    assert choice.message.role == "assistant"
    assert len(choice.message.content or "") >= 1378
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_sync_stream_yields_chunks_of_one_completion(client: OpenAI) -> None:
    with client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) as stream:
        chunks = list(stream)
    assert len({chunk.id for chunk in chunks}) == 1
    assert len({chunk.created for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(_content(chunks)) >= 1378
    assert _finish_reasons(chunks) == [(0, "stop")]
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_async_create_returns_whole_completion(async_client: AsyncOpenAI) -> None:
    completion = await async_client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.choices[0].message.role == "assistant"
    assert len(completion.choices[0].message.content or "") >= 1378
    assert completion.choices[0].finish_reason == "stop"


async def test_async_stream_yields_content_then_finish(async_client: AsyncOpenAI) -> None:
    stream = await async_client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    async with stream:
        chunks = [chunk async for chunk in stream]
    assert len({chunk.id for chunk in chunks}) == 1
    assert len(_content(chunks)) >= 1378
    assert _finish_reasons(chunks) == [(0, "stop")]


# --- usage --------------------------------------------------------------------------


def test_stream_include_usage_puts_usage_in_last_chunk(client: OpenAI) -> None:
    with client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    last = chunks[-1]
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == len(content_chunks)
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)


def test_stream_usage_matches_non_streamed_usage(client: OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=11)
    with client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        seed=11,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    assert chunks[-1].usage == completion.usage
    assert _content(chunks) == completion.choices[0].message.content


# --- the stream helper ----------------------------------------------------------------


def test_stream_helper_final_completion_is_clean(client: OpenAI) -> None:
    events: defaultdict[str, list[Any]] = defaultdict(list)
    with client.chat.completions.stream(model=MODEL, messages=MESSAGES) as stream:
        for event in stream:
            events[event.type].append(event)
        final = stream.get_final_completion()
    message = final.choices[0].message
    deltas = "".join(event.delta for event in events["content.delta"])
    assert message.role == "assistant"
    assert message.content == deltas
    assert len(deltas) >= 1378
    assert final.choices[0].finish_reason == "stop"
    assert len(events["content.done"]) == 1


async def test_async_stream_helper_final_completion_is_clean(async_client: AsyncOpenAI) -> None:
    async with async_client.chat.completions.stream(model=MODEL, messages=MESSAGES) as stream:
        deltas = [event.delta async for event in stream if event.type == "content.delta"]
        final = await stream.get_final_completion()
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].message.content == "".join(deltas)


# --- n, max_tokens, stop, seed --------------------------------------------------------


def test_stream_n2_gives_each_choice_one_role_and_one_finish(client: OpenAI) -> None:
    with client.chat.completions.create(
        model=MODEL, messages=MESSAGES, n=2, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    roles = Counter(
        choice.index for chunk in chunks for choice in chunk.choices if choice.delta.role
    )
    usage = chunks[-1].usage
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert roles == {0: 1, 1: 1}
    assert sorted(_finish_reasons(chunks)) == [(0, "stop"), (1, "stop")]
    assert len(_content(chunks, 0)) >= 1378
    assert len(_content(chunks, 1)) >= 1378
    assert usage is not None
    assert usage.completion_tokens == len(content_chunks)


def test_create_n2_returns_two_choices(client: OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert [choice.message.role for choice in completion.choices] == ["assistant"] * 2
    assert [choice.finish_reason for choice in completion.choices] == ["stop"] * 2


def test_max_tokens_ends_with_length(client: OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5


def test_stream_max_tokens_ends_with_length(client: OpenAI) -> None:
    with client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    usage = chunks[-1].usage
    assert _finish_reasons(chunks) == [(0, "length")]
    assert usage is not None
    assert usage.completion_tokens == 7


def test_stop_sequence_cuts_answer_before_it(client: OpenAI) -> None:
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=5)
    text = full.choices[0].message.content or ""
    stop = text[400:412]
    cut = client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=5, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_stream_stop_sequence_cuts_answer_before_it(client: OpenAI) -> None:
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=6)
    text = full.choices[0].message.content or ""
    stop = text[300:310]
    with client.chat.completions.create(
        model=MODEL, messages=MESSAGES, seed=6, stop=stop, stream=True
    ) as stream:
        chunks = list(stream)
    assert _content(chunks) == text[: text.index(stop)]
    assert _finish_reasons(chunks) == [(0, "stop")]


def test_same_seed_gives_identical_content(client: OpenAI) -> None:
    first = client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=1234)
    second = client.chat.completions.create(model=MODEL, messages=MESSAGES, seed=1234)
    with client.chat.completions.create(
        model=MODEL, messages=MESSAGES, seed=1234, stream=True
    ) as stream:
        streamed = _content(list(stream))
    assert first.choices[0].message.content == second.choices[0].message.content
    assert streamed == first.choices[0].message.content


# --- models --------------------------------------------------------------------------


def test_models_list_names_the_served_model(client: OpenAI) -> None:
    models = client.models.list()
    assert [model.id for model in models.data] == [MODEL]
    assert models.data[0].object == "model"


def test_models_retrieve_returns_the_model(client: OpenAI) -> None:
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL
    assert model.object == "model"


def test_models_retrieve_unknown_raises_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"


# --- errors --------------------------------------------------------------------------

BAD_BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "empty messages": ({"messages": []}, "messages"),
    "temperature above 2": ({"messages": MESSAGES, "temperature": 3}, "temperature"),
    "unknown role": ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    "max_tokens 0": ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
    "n 0": ({"messages": MESSAGES, "n": 0}, "n"),
    "n above max_n": ({"messages": MESSAGES, "n": 1000}, "n"),
}


@pytest.mark.parametrize(("kwargs", "param"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_body_raises_bad_request_not_422(
    client: OpenAI, kwargs: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, **kwargs)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
def test_bad_body_raises_bad_request_when_streaming_too(client: OpenAI, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[], stream=stream)
    assert caught.value.status_code == 400


def test_stream_options_without_stream_raises_bad_request(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream_options={"include_usage": True}
        )
    assert caught.value.status_code == 400
    assert "stream_options" in caught.value.message


def test_stream_options_without_stream_names_the_param(client: OpenAI) -> None:
    # Wire contract R5: every validation rule answers 400 *with param set*.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream_options={"include_usage": True}
        )
    assert caught.value.param == "stream_options"


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_raises_not_found(client: OpenAI, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES, stream=stream)
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert "gpt-9" in caught.value.message


async def test_async_unknown_model_raises_not_found(async_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await async_client.chat.completions.create(model="gpt-9", messages=MESSAGES, stream=True)
    assert caught.value.code == "model_not_found"


# --- request ids ---------------------------------------------------------------------


def test_completion_exposes_request_id(client: OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    assert re.fullmatch(r"[0-9a-f]{32}", completion._request_id or "")


def test_client_request_id_is_echoed(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, extra_headers={"X-Request-Id": "e2e-42"}
    )
    assert completion._request_id == "e2e-42"


def test_stream_exposes_request_id(client: OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=3,
        stream=True,
        extra_headers={"X-Request-Id": "e2e-stream-7"},
    ) as response:
        request_id = response.request_id
        chunks = list(response.parse())
    assert request_id == "e2e-stream-7"
    assert _finish_reasons(chunks) == [(0, "length")]


def test_error_exposes_request_id(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="gpt-9", messages=MESSAGES, extra_headers={"X-Request-Id": "e2e-err-1"}
        )
    assert caught.value.request_id == "e2e-err-1"


# --- many events in one write ---------------------------------------------------------


def test_events_sharing_writes_reach_the_sdk_whole(server_factory: ServerFactory) -> None:
    # With no latency at all, each stream's tokens are ready together and share a
    # few writes: the SDK must still see every chunk, in order, as it would paced.
    answers: dict[str, list[str]] = {}
    for name, pacing in (("instant", ("--latency-profile", "instant")), ("paced", FAST_PACING)):
        server = server_factory(*pacing)
        with OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
            chat = list(
                c.chat.completions.create(
                    model=MODEL,
                    messages=MESSAGES,
                    max_tokens=300,
                    seed=7,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"ignore_eos": True},
                )
            )
            legacy = list(
                c.completions.create(
                    model=MODEL,
                    prompt="Explain server-sent events",
                    max_tokens=300,
                    seed=7,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
            )
        tokens = [chunk for chunk in chat if chunk.choices and chunk.choices[0].delta.content]
        assert len(tokens) == 300
        assert chat[-1].usage is not None and chat[-1].usage.completion_tokens == 300
        assert _finish_reasons(chat) == [(0, "length")]
        assert len({chunk.id for chunk in chat}) == 1
        texts = [c.choices[0].text for c in legacy if c.choices and c.choices[0].text]
        assert len(texts) == 300
        answers[name] = [_content(chat), "".join(texts)]
    assert answers["instant"] == answers["paced"]
