"""Legacy completions and embeddings over ASGI."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import httpx
import pytest
from openai.types import Completion, CreateEmbeddingResponse

from tests.sse_helpers import chunks

COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
JSON = {"Accept": "application/json"}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "Write about rivers", "seed": 3} | fields


async def test_completion_defaults_to_16_tokens(client: httpx.AsyncClient) -> None:
    body = (await client.post(COMPLETIONS, json=completion())).json()
    parsed = Completion.model_validate(body)
    assert parsed.id.startswith("cmpl-")
    assert parsed.object == "text_completion"
    assert parsed.usage is not None
    assert parsed.usage.completion_tokens == 16
    assert parsed.choices[0].finish_reason == "length"


async def test_several_prompts_times_n_are_numbered_prompt_by_prompt(
    client: httpx.AsyncClient,
) -> None:
    body = (
        await client.post(
            COMPLETIONS, json=completion(prompt=["Say hi", "Say bye"], n=2, max_tokens=4)
        )
    ).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["choices"][0]["text"] != body["choices"][1]["text"]
    assert body["usage"]["completion_tokens"] == 16


async def test_echo_puts_the_prompt_first(client: httpx.AsyncClient) -> None:
    plain = (await client.post(COMPLETIONS, json=completion(max_tokens=5))).json()
    echoed = (await client.post(COMPLETIONS, json=completion(max_tokens=5, echo=True))).json()
    assert echoed["choices"][0]["text"] == "Write about rivers" + plain["choices"][0]["text"]


async def test_completion_logprobs_offsets_follow_the_text(client: httpx.AsyncClient) -> None:
    body = (
        await client.post(COMPLETIONS, json=completion(max_tokens=6, logprobs=2, echo=True))
    ).json()
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == 3 + 6  # the echoed prompt's tokens, then the new ones
    for token, offset in zip(logprobs["tokens"], logprobs["text_offset"], strict=True):
        assert choice["text"][offset : offset + len(token)] == token
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert all(len(top) == 2 for top in logprobs["top_logprobs"][1:])


async def test_echo_with_zero_max_tokens_scores_the_prompt(client: httpx.AsyncClient) -> None:
    body = (
        await client.post(COMPLETIONS, json=completion(max_tokens=0, echo=True, logprobs=1))
    ).json()
    choice = body["choices"][0]
    assert choice["text"] == "Write about rivers"
    assert choice["logprobs"]["tokens"] == ["Write", " about", " rivers"]
    assert choice["logprobs"]["token_logprobs"][0] is None
    assert all(lp <= 0 for lp in choice["logprobs"]["token_logprobs"][1:])
    assert choice["logprobs"]["text_offset"] == [0, 5, 11]
    assert body["usage"]["completion_tokens"] == 0


async def test_zero_max_tokens_without_echo_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(COMPLETIONS, json=completion(max_tokens=0), headers=JSON)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"


async def test_token_id_prompts_are_counted(client: httpx.AsyncClient) -> None:
    body = (await client.post(COMPLETIONS, json=completion(prompt=[[1, 2, 3], [4, 5]]))).json()
    assert body["usage"]["prompt_tokens"] == 5
    assert len(body["choices"]) == 2


async def test_completion_stream_has_text_chunks_finish_and_usage(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        COMPLETIONS,
        json=completion(stream=True, max_tokens=5, stream_options={"include_usage": True}),
    )
    # Stream chunks carry finish_reason null, which the SDK's (non-validating)
    # stream parser accepts but Completion.model_validate does not.
    parsed = chunks(response.text)
    assert {c["id"] for c in parsed} == {parsed[0]["id"]}
    assert {c["object"] for c in parsed} == {"text_completion"}
    texts = [c["choices"][0]["text"] for c in parsed if c["choices"] and c["choices"][0]["text"]]
    assert len(texts) == 5
    finishes = [c["choices"][0]["finish_reason"] for c in parsed if c["choices"]]
    assert [f for f in finishes if f] == ["length"]
    assert parsed[-1]["choices"] == []
    assert parsed[-1]["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"logprobs": 6}, "logprobs"),
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
async def test_invalid_completions_get_400(
    client: httpx.AsyncClient, fields: dict[str, Any], param: str
) -> None:
    response = await client.post(COMPLETIONS, json=completion(**fields), headers=JSON)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_embeddings_are_deterministic_unit_vectors(client: httpx.AsyncClient) -> None:
    body = (
        await client.post(EMBEDDINGS, json={"model": "e", "input": ["cat", "dog", "cat"]})
    ).json()
    parsed = CreateEmbeddingResponse.model_validate(body)
    vectors = [d.embedding for d in parsed.data]
    assert [d.index for d in parsed.data] == [0, 1, 2]
    assert vectors[0] == vectors[2]
    assert vectors[0] != vectors[1]
    assert len(vectors[0]) == 1536
    assert math.isclose(math.fsum(x * x for x in vectors[1]), 1.0, rel_tol=1e-9)
    assert parsed.usage.prompt_tokens == 3


async def test_shortened_embeddings_are_the_renormalised_prefix(client: httpx.AsyncClient) -> None:
    full = (await client.post(EMBEDDINGS, json={"input": "cat"})).json()["data"][0]["embedding"]
    short = (await client.post(EMBEDDINGS, json={"input": "cat", "dimensions": 8})).json()
    vector = short["data"][0]["embedding"]
    norm = math.sqrt(math.fsum(x * x for x in full[:8]))
    assert len(vector) == 8
    assert vector == pytest.approx([x / norm for x in full[:8]])


async def test_base64_embeddings_decode_to_the_float_vector(client: httpx.AsyncClient) -> None:
    floats = (await client.post(EMBEDDINGS, json={"input": "cat", "dimensions": 4})).json()
    encoded = await client.post(
        EMBEDDINGS, json={"input": "cat", "dimensions": 4, "encoding_format": "base64"}
    )
    raw = base64.b64decode(encoded.json()["data"][0]["embedding"])
    assert list(struct.unpack("<4f", raw)) == pytest.approx(
        floats["data"][0]["embedding"], rel=1e-6
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input[0]"),
        ({"input": []}, "input"),
        ({"input": ["a", ""]}, "input[1]"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({}, "input"),
    ],
)
async def test_invalid_embeddings_get_400(
    client: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    response = await client.post(EMBEDDINGS, json=body, headers=JSON)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
