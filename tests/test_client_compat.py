"""What third-party clients need of the wire (issue 16), over ASGI.

Each test is one thing a real client sent that once went wrong; the client's
own e2e test is in ``tests/e2e/test_clients.py`` where it installs from PyPI.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given, strategies as st

from streamapi.settings import Settings
from streamapi.text.tokenizer import count_tokens, decode, encode
from tests.sse_helpers import chunks

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
JSON = {"Accept": "application/json"}

LOOKUP = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
ANSWER = {
    "type": "object",
    "properties": {"summary": {"type": "string"}},
    "required": ["summary"],
}


# --- 1. a required tool choice moves on once a result is in -------------------------


def chat_tool(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": schema}}


CHAT_TOOLS = [chat_tool("lookup_city", LOOKUP), chat_tool("final_result", ANSWER)]


async def test_required_chat_calls_the_output_tool_after_a_result(
    client: httpx.AsyncClient,
) -> None:
    # The request names the lookup ("city"): it is called first, then the output tool.
    ask = {"role": "user", "content": "Tell me a story about a city"}
    first = await client.post(
        CHAT, json={"model": "m", "messages": [ask], "tools": CHAT_TOOLS, "tool_choice": "required"}
    )
    message = first.json()["choices"][0]["message"]
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "lookup_city"
    result = {"role": "tool", "tool_call_id": call["id"], "content": '{"city": "Oslo"}'}
    second = await client.post(
        CHAT,
        json={
            "model": "m",
            "messages": [ask, message, result],
            "tools": CHAT_TOOLS,
            "tool_choice": "required",
        },
    )
    (again,) = second.json()["choices"][0]["message"]["tool_calls"]
    assert again["function"]["name"] == "final_result"


async def test_required_chat_without_an_output_tool_calls_an_unanswered_one(
    client: httpx.AsyncClient,
) -> None:
    tools = [chat_tool("lookup_city", LOOKUP), chat_tool("lookup_country", LOOKUP)]
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup_city", "arguments": "{}"},
    }
    messages = [
        {"role": "user", "content": "Tell me a story"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Oslo"},
    ]
    response = await client.post(
        CHAT, json={"model": "m", "messages": messages, "tools": tools, "tool_choice": "required"}
    )
    (again,) = response.json()["choices"][0]["message"]["tool_calls"]
    assert again["function"]["name"] == "lookup_country"


async def test_required_responses_calls_the_output_tool_after_a_result(
    client: httpx.AsyncClient,
) -> None:
    tools = [
        {"type": "function", "name": "lookup_city", "parameters": LOOKUP},
        {"type": "function", "name": "final_result", "parameters": ANSWER},
    ]
    items = [
        {"role": "user", "content": "Tell me a story"},
        {"type": "function_call", "call_id": "c1", "name": "lookup_city", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "Oslo"},
    ]
    response = await client.post(
        RESPONSES, json={"model": "m", "input": items, "tools": tools, "tool_choice": "required"}
    )
    calls = [o for o in response.json()["output"] if o["type"] == "function_call"]
    assert [c["name"] for c in calls] == ["final_result"]


async def test_any_tool_messages_calls_the_output_tool_after_a_result(
    client: httpx.AsyncClient,
) -> None:
    tools = [
        {"name": "lookup_city", "input_schema": LOOKUP},
        {"name": "final_result", "input_schema": ANSWER},
    ]
    use = {"type": "tool_use", "id": "toolu_1", "name": "lookup_city", "input": {"city": "Oslo"}}
    messages = [
        {"role": "user", "content": "Tell me a story"},
        {"role": "assistant", "content": [use]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"}],
        },
    ]
    response = await client.post(
        MESSAGES,
        json={
            "model": "m",
            "max_tokens": 1024,
            "messages": messages,
            "tools": tools,
            "tool_choice": {"type": "any"},
        },
    )
    uses = [b for b in response.json()["content"] if b["type"] == "tool_use"]
    assert [b["name"] for b in uses] == ["final_result"]


# --- 2. a request that does not ask to stream gets JSON errors ------------------------

# What Node's fetch, Python's requests and curl send when not told otherwise.
NO_JSON_ACCEPT = {"Accept": "*/*"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, {"model": "sim-small", "messages": "x", "stream": False}),
        (CHAT, {"model": "sim-small", "messages": "x"}),
        (CHAT, {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "n": 0}),
        ("/v1/completions", {"model": "sim-small", "prompt": "x", "max_tokens": -1}),
    ],
)
async def test_non_streamed_openai_errors_are_json_whatever_the_accept(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    response = await client.post(path, json=body, headers=NO_JSON_ACCEPT)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "sim-small", "messages": "x", "stream": true}',
        b'{"prompt": "hi", "stream": false}',
        b"{not json",
    ],
)
async def test_streamed_and_spec_form_errors_stay_sse_for_curl(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post(CHAT, content=body, headers=NO_JSON_ACCEPT)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith('data: {"error":')


# --- 4. top_p near 0 and top_k 1 decode greedily ----------------------------------------


async def twice(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[Any]:
    return [(await client.post(path, json=body)).json() for _ in range(2)]


@pytest.mark.parametrize(
    "sampling", [{"top_p": 0}, {"top_p": 1e-9}, {"top_p": 0.001}, {"top_k": 1}]
)
async def test_greedy_sampling_gives_the_same_chat_text_twice(
    client: httpx.AsyncClient, sampling: dict[str, Any]
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Tell me about tea"}], "n": 2}
    first, second = await twice(client, CHAT, body | sampling)
    texts = [c["message"]["content"] for c in first["choices"] + second["choices"]]
    assert len(set(texts)) == 1


async def test_sampling_that_is_not_greedy_still_varies(client: httpx.AsyncClient) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Tell me about tea"}]}
    first, second = await twice(client, CHAT, body | {"top_p": 0.5, "top_k": 40})
    assert first["choices"][0]["message"]["content"] != second["choices"][0]["message"]["content"]


async def test_top_k_1_is_greedy_on_completions_and_messages(client: httpx.AsyncClient) -> None:
    legacy = {"model": "m", "prompt": "Tea is", "max_tokens": 30, "top_k": 1}
    first, second = await twice(client, "/v1/completions", legacy)
    assert first["choices"][0]["text"] == second["choices"][0]["text"]
    message = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Tell me about tea"}],
        "top_k": 1,
    }
    first, second = await twice(client, MESSAGES, message)
    assert first["content"] == second["content"]


# --- 6. Anthropic usage with prompt caching ---------------------------------------------

LONG_SYSTEM = " ".join(f"Rule {i}: answer politely about tea number {i}." for i in range(300))


def cached_message(question: str, *, breakpoint: bool = True, **fields: Any) -> dict[str, Any]:
    system: dict[str, Any] = {"type": "text", "text": LONG_SYSTEM}
    if breakpoint:
        system["cache_control"] = {"type": "ephemeral"}
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": [system],
        "messages": [{"role": "user", "content": question}],
    } | fields


def prompt_size(usage: dict[str, int]) -> int:
    return (
        usage["input_tokens"]
        + usage["cache_read_input_tokens"]
        + usage["cache_creation_input_tokens"]
    )


async def test_a_cold_breakpoint_is_written_then_read_and_never_counted_twice(
    client: httpx.AsyncClient,
) -> None:
    cold = (await client.post(MESSAGES, json=cached_message("What is green tea?"))).json()
    warm = (await client.post(MESSAGES, json=cached_message("What is black tea?"))).json()
    cold_usage, warm_usage = cold["usage"], warm["usage"]
    assert cold_usage["cache_read_input_tokens"] == 0
    assert cold_usage["cache_creation_input_tokens"] > 1000
    assert cold_usage["input_tokens"] < 20, "the question only"
    assert warm_usage["cache_read_input_tokens"] >= cold_usage["cache_creation_input_tokens"]
    assert warm_usage["cache_creation_input_tokens"] == 0
    assert warm_usage["input_tokens"] < 20
    assert prompt_size(warm_usage) == prompt_size(cold_usage)


async def test_without_a_breakpoint_nothing_is_cached(client: httpx.AsyncClient) -> None:
    """As Anthropic documents: caching is asked for with ``cache_control``."""
    first = (await client.post(MESSAGES, json=cached_message("Hi", breakpoint=False))).json()
    second = (await client.post(MESSAGES, json=cached_message("Hi", breakpoint=False))).json()
    for usage in (first["usage"], second["usage"]):
        assert usage["cache_creation_input_tokens"] == usage["cache_read_input_tokens"] == 0
    assert second["usage"]["input_tokens"] == first["usage"]["input_tokens"] > 1000


async def test_streamed_message_delta_carries_the_final_cache_counts(
    client: httpx.AsyncClient,
) -> None:
    whole = (await client.post(MESSAGES, json=cached_message("What is oolong?"))).json()
    streamed = await client.post(MESSAGES, json=cached_message("What is oolong?", stream=True))
    events = [
        json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")
    ]
    start = next(e for e in events if e["type"] == "message_start")["message"]["usage"]
    delta = next(e for e in events if e["type"] == "message_delta")["usage"]
    assert prompt_size(start) == prompt_size(delta) == prompt_size(whole["usage"])
    assert delta["cache_read_input_tokens"] > 1000
    assert delta["input_tokens"] < 20


# --- 7. an assistant message with null content is an empty reply ------------------------


async def test_null_assistant_content_is_accepted_on_every_protocol(
    client: httpx.AsyncClient,
) -> None:
    chat = await client.post(
        CHAT,
        json={
            "model": "m",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": None},
                {"role": "user", "content": "Still there?"},
            ],
        },
    )
    assert chat.status_code == 200, chat.text
    responses = await client.post(
        RESPONSES,
        json={
            "model": "m",
            "input": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": None},
                {"role": "user", "content": "Still there?"},
            ],
        },
    )
    assert responses.status_code == 200, responses.text
    messages = await client.post(
        MESSAGES,
        json={
            "model": "m",
            "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": None},
                {"role": "user", "content": "Still there?"},
            ],
        },
    )
    assert messages.status_code == 200, messages.text


@pytest.mark.parametrize("path", [CHAT, RESPONSES, MESSAGES])
async def test_null_user_content_is_still_refused(client: httpx.AsyncClient, path: str) -> None:
    key = "input" if path == RESPONSES else "messages"
    body = {"model": "m", "max_tokens": 10, key: [{"role": "user", "content": None}]}
    response = await client.post(path, json=body, headers=JSON)
    assert response.status_code == 400


# --- 13. a streamed tool call opens with content null ----------------------------------


async def test_a_streamed_tool_call_opens_with_the_role_and_null_content(
    client: httpx.AsyncClient,
) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Look up the city of Oslo"}],
        "tools": CHAT_TOOLS,
        "stream": True,
    }
    response = await client.post(CHAT, json=body)
    deltas = [c["choices"][0]["delta"] for c in chunks(response.text) if c["choices"]]
    first = deltas[0]
    assert first["role"] == "assistant"
    assert first["content"] is None
    assert first["tool_calls"][0]["function"] == {"name": "lookup_city", "arguments": ""}
    assert all("role" not in d and d.get("content") is None for d in deltas[1:])


async def test_a_streamed_text_answer_still_opens_with_an_empty_string(
    client: httpx.AsyncClient,
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    response = await client.post(CHAT, json=body)
    first = chunks(response.text)[0]["choices"][0]["delta"]
    assert first == {"role": "assistant", "content": ""}


# --- 14. count_tokens, tokenize, detokenize, Anthropic's 404 ----------------------------


async def test_count_tokens_counts_as_messages_usage_does(client: httpx.AsyncClient) -> None:
    tools = [{"name": "lookup_city", "description": "Find a city", "input_schema": LOOKUP}]
    body = {
        "model": "claude-sonnet-4-5",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "How big is Oslo?"}],
        "tools": tools,
    }
    counted = await client.post("/v1/messages/count_tokens", json=body)
    assert counted.status_code == 200
    assert set(counted.json()) == {"input_tokens"}
    used = await client.post(MESSAGES, json=body | {"max_tokens": 50})
    usage = used.json()["usage"]
    assert counted.json()["input_tokens"] == prompt_size(usage)


async def test_count_tokens_errors_are_anthropics(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messages/count_tokens", json={"model": "m"})
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/messages/batches"),
        ("GET", "/v1/messages/batches/msgbatch_1"),
        ("GET", "/v1/messages/x"),
    ],
)
async def test_unknown_paths_under_messages_get_anthropics_404(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path, json={})
    assert response.status_code == 404
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"


async def test_unknown_openai_paths_keep_openais_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messagesx", json={})
    assert response.status_code == 404
    assert set(response.json()) == {"error"}


async def test_tokenize_then_detokenize_gives_the_prompt_back(client: httpx.AsyncClient) -> None:
    prompt = "Hello, wörld!\n\tTokenizers split words like internationalization."
    tokenized = (
        await client.post(
            "/tokenize", json={"model": "m", "prompt": prompt, "return_token_strs": True}
        )
    ).json()
    assert tokenized["count"] == len(tokenized["tokens"]) == len(tokenized["token_strs"])
    assert "".join(tokenized["token_strs"]) == prompt
    assert tokenized["max_model_len"] > 0
    again = (await client.post("/tokenize", json={"model": "m", "prompt": prompt})).json()
    assert again["tokens"] == tokenized["tokens"]
    assert again["token_strs"] is None
    detokenized = await client.post("/detokenize", json={"model": "m", "tokens": again["tokens"]})
    assert detokenized.json() == {"prompt": prompt}


async def test_tokenize_messages_counts_as_chat_usage_does(client: httpx.AsyncClient) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "How big is Oslo?"}]},
    ]
    tokenized = (await client.post("/tokenize", json={"model": "m", "messages": messages})).json()
    chat = (await client.post(CHAT, json={"model": "m", "messages": messages})).json()
    assert tokenized["count"] == chat["usage"]["prompt_tokens"]
    text = (await client.post("/detokenize", json={"tokens": tokenized["tokens"]})).json()
    assert "How big is Oslo?" in text["prompt"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {"model": "m"}, None),
        ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "a"}]}, None),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
        ("/detokenize", {"tokens": [200]}, "tokens"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
    ],
)
async def test_tokenizer_routes_refuse_bad_input(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], param: str | None
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@given(st.text())
def test_token_ids_are_reversible(text: str) -> None:
    ids = encode(text)
    assert decode(ids) == text
    assert len(ids) == count_tokens(text)
    assert all(i >= 0 for i in ids)


def test_english_token_ids_are_safe_javascript_integers() -> None:
    ids = encode("The quick brown fox jumps over the lazy dog, 12345 times!\n\t~~~~~~~~")
    assert all(i < 2**53 for i in ids)


# --- 8. defaults that real clients' defaults fit in ---------------------------------------


def test_context_lengths_by_model_name() -> None:
    settings = Settings()
    assert settings.max_model_len_of("sim-small") == 131_072
    assert settings.max_model_len_of("claude-sonnet-4-5") == 200_000
    assert settings.max_model_len_of("anthropic/Claude-3-haiku") == 200_000
    # A length given by the operator is every simulated model's.
    assert Settings(max_model_len=4096).max_model_len_of("claude-sonnet-4-5") == 4096


@pytest.mark.parametrize(
    ("profile", "seqs"), [("default", 1024), ("instant", 1024), ("8b-1gpu", 256), ("70b-8gpu", 256)]
)
def test_running_sequences_by_latency_profile(profile: str, seqs: int) -> None:
    assert Settings.model_validate({"latency_profile": profile}).max_num_seqs == seqs
    assert (
        Settings.model_validate({"latency_profile": profile, "max_num_seqs": 3}).max_num_seqs == 3
    )


async def test_pydantic_ais_anthropic_max_tokens_fit(client: httpx.AsyncClient) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64_000,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    response = await client.post(MESSAGES, json=body)
    assert response.status_code == 200, response.text
