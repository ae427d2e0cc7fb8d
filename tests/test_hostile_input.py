"""Hostile bodies get 400 or 413 in the error envelope: never a 500, never a hang."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from streamapi.settings import Settings

URL = "/v1/chat/completions"
JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | fields


HOSTILE_BODIES = [
    pytest.param(b'{"model": "m", "messages": [', id="truncated-json"),
    pytest.param(b"\xff\xfe{}", id="invalid-utf8"),
    pytest.param(b'{"messages": [{"role": "user", "content": "\\ud800"}]}', id="lone-surrogate"),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', id="nan"
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', id="infinity"
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "hi"}], "seed": 12345678901234567890123456789}',
        id="huge-int",
    ),
    pytest.param(
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}',
        id="float-overflow",
    ),
    pytest.param(b"[" * 5000 + b"]" * 5000, id="nested-5000-arrays"),
    pytest.param(b'{"a":' * 5000 + b"1" + b"}" * 5000, id="nested-5000-objects"),
    pytest.param(json.dumps({"messages": None}).encode(), id="null-messages"),
    pytest.param(json.dumps({"messages": [None]}).encode(), id="null-message"),
    pytest.param(json.dumps(chat(n=10**9)).encode(), id="huge-n"),
    pytest.param(json.dumps(chat(max_tokens=10**12)).encode(), id="huge-max-tokens"),
    pytest.param(json.dumps(chat(stop=["x"] * 100_000)).encode(), id="many-stops"),
    pytest.param(
        # 4 tokens each: over the default context of 131072 tokens.
        json.dumps(chat(messages=[{"role": "user", "content": "hi"}] * 40_000)).encode(),
        id="40000-messages",
    ),
    pytest.param(
        json.dumps(
            chat(
                tools=[
                    {"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/x"}}}
                ]
            )
        ).encode(),
        id="dangling-ref",
    ),
    pytest.param(b"null", id="json-null"),
    pytest.param(b'"a string"', id="json-string"),
]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
async def test_hostile_body_gets_a_clear_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(URL, content=body, headers=JSON_HEADERS)
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("settings", [Settings(latency_profile="instant")])
async def test_a_huge_string_is_refused_before_it_is_read(client: httpx.AsyncClient) -> None:
    body = json.dumps(chat(messages=[{"role": "user", "content": "x" * (8 * 1024 * 1024)}]))
    response = await client.post(URL, content=body, headers=JSON_HEADERS)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_a_long_prompt_within_the_body_limit_hits_the_context_length(
    client: httpx.AsyncClient,
) -> None:
    body = json.dumps(chat(messages=[{"role": "user", "content": "word " * 200_000}]))
    response = await client.post(URL, content=body, headers=JSON_HEADERS)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    "path",
    ["/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"],
)
@pytest.mark.parametrize("body", HOSTILE_BODIES[:10])
async def test_every_route_refuses_hostile_bodies(
    client: httpx.AsyncClient, path: str, body: bytes
) -> None:
    response = await client.post(path, content=body, headers=JSON_HEADERS)
    assert response.status_code == 400, response.text[:300]
    assert "Traceback" not in response.text


# --- bounded work per request (issue 26) ---------------------------------------------------
#
# Each hostile case gets a bounded answer: a 400 naming the parameter, or a result capped
# by the request's own limits. Budgets and statuses are asserted, never times (the stalls
# these cases caused are measured by bench/hostile.py).


def _object(prop: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {"value": prop}, "required": ["value"]}


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


def _fan_out(branching: int, depth: int) -> dict[str, Any]:
    defs: dict[str, Any] = {f"d{depth}": {"type": "string"}}
    for level in range(depth):
        props = {f"p{i}": {"$ref": f"#/$defs/d{level + 1}"} for i in range(branching)}
        defs[f"d{level}"] = {"type": "object", "properties": props, "required": list(props)}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


SELF_REQUIRED = {"type": "object", "properties": {"self": {"$ref": "#"}}, "required": ["self"]}
MAX_TOKEN_CHARS = 8  # the tokenizer's longest token


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param(
            _object({"type": "array", "items": {"type": "string"}, "minItems": 10**6}),
            id="minItems-1e6",
        ),
        pytest.param(_object({"type": "string", "pattern": "a{1000000}"}), id="pattern-repeat"),
        pytest.param(_object({"type": "string", "pattern": "(b{1000}){1000}"}), id="nested-repeat"),
        pytest.param(_object({"type": "string", "minLength": 10**7}), id="minLength-1e7"),
        pytest.param(_fan_out(8, 6), id="defs-fan-out"),
    ],
)
async def test_a_huge_value_is_cut_at_max_tokens(
    client: httpx.AsyncClient, schema: dict[str, Any]
) -> None:
    response = await client.post(
        URL, json=chat(response_format=_json_schema(schema), max_tokens=64), headers=JSON_HEADERS
    )
    assert response.status_code == 200, response.text[:300]
    body = response.json()
    choice = body["choices"][0]
    # As a model cut by its limit: max_tokens tokens of the value's start, "length".
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 64
    assert len(choice["message"]["content"]) <= 64 * MAX_TOKEN_CHARS


async def test_a_huge_max_items_is_only_an_upper_bound(client: httpx.AsyncClient) -> None:
    """``maxItems: 1e9`` asks for nothing: the array's length is drawn within the answer's
    budget, so it may end by itself ("stop") or be cut ("length"), never run past it."""
    schema = _json_schema(_object({"type": "array", "maxItems": 10**9}))
    finishes = set()
    for seed in range(8):
        response = await client.post(
            URL, json=chat(response_format=schema, max_tokens=64, seed=seed), headers=JSON_HEADERS
        )
        assert response.status_code == 200, response.text[:300]
        body = response.json()
        finishes.add(body["choices"][0]["finish_reason"])
        assert body["usage"]["completion_tokens"] <= 64
        assert len(body["choices"][0]["message"]["content"]) <= 64 * MAX_TOKEN_CHARS
    assert finishes <= {"stop", "length"}


def test_the_generation_budget_bounds_values_whatever_the_schema_asks() -> None:
    import random

    from streamapi.text.jsonschema import GenerationBudget, SchemaGenerator

    for schema in (
        {"type": "array", "items": {"type": "array", "minItems": 10**6}, "minItems": 10**6},
        {"type": "string", "pattern": "(x{1000}){1000}y"},
        {"type": "string", "minLength": 10**9},
        _fan_out(10, 6),
    ):
        budget = GenerationBudget.for_tokens(100)
        text = json.dumps(SchemaGenerator(schema, random.Random(0), budget=budget).generate())
        assert budget.spent
        # Cut past the token limit (so never sent whole), and bounded by the budget.
        assert 101 * MAX_TOKEN_CHARS <= len(text) <= 4 * 101 * MAX_TOKEN_CHARS


@pytest.mark.parametrize("step", [5e-6, 1e-9, 5e-324, 7])
def test_multiple_of_is_computed_not_enumerated(step: float) -> None:
    import random

    from streamapi.text.jsonschema import SchemaGenerator

    schema = {"type": "number", "multipleOf": step, "minimum": 0, "maximum": 1000}
    value = SchemaGenerator(schema, random.Random(1)).generate()
    assert 0 <= value <= 1000
    if step >= 1e-9:
        assert abs(value / step - round(value / step)) < 1e-6


SELF_REFERENCES = [
    pytest.param({"$ref": "#"}, id="ref-root"),
    pytest.param(SELF_REQUIRED, id="required-self"),
    pytest.param({"type": "array", "items": {"$ref": "#"}, "minItems": 1}, id="array-of-itself"),
    pytest.param(
        {
            "$defs": {
                "a": {
                    "type": "object",
                    "properties": {"b": {"$ref": "#/$defs/b"}},
                    "required": ["b"],
                },
                "b": {"allOf": [{"$ref": "#/$defs/a"}]},
            },
            "$ref": "#/$defs/a",
        },
        id="defs-loop",
    ),
]


@pytest.mark.parametrize("schema", SELF_REFERENCES)
async def test_a_schema_that_requires_itself_is_a_400_naming_the_loop(
    client: httpx.AsyncClient, schema: dict[str, Any]
) -> None:
    response = await client.post(
        URL, json=chat(response_format=_json_schema(schema)), headers=JSON_HEADERS
    )
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["param"] == "response_format.json_schema.schema"
    assert "requires itself" in error["message"]
    assert "Traceback" not in response.text


async def test_optional_recursion_is_still_answered(client: httpx.AsyncClient) -> None:
    tree = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#"}},
            "parent": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
        },
        "required": ["name", "children", "parent"],
    }
    response = await client.post(
        URL, json=chat(response_format=_json_schema(tree), seed=1), headers=JSON_HEADERS
    )
    assert response.status_code == 200, response.text[:300]
    assert "name" in json.loads(response.json()["choices"][0]["message"]["content"])


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            URL,
            chat(
                tools=[{"type": "function", "function": {"name": "f", "parameters": SELF_REQUIRED}}]
            ),
            "tools[0].function.parameters",
        ),
        (
            "/v1/responses",
            {
                "model": "m",
                "input": "hi",
                "text": {"format": {"type": "json_schema", "name": "o", "schema": SELF_REQUIRED}},
            },
            "text.format.schema",
        ),
        (
            "/v1/responses",
            {
                "model": "m",
                "input": "hi",
                "tools": [{"type": "function", "name": "f", "parameters": SELF_REQUIRED}],
            },
            "tools[0].parameters",
        ),
        (
            "/v1/messages",
            {
                "model": "m",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"name": "f", "input_schema": SELF_REQUIRED}],
            },
            "tools[0].input_schema",
        ),
        (
            "/v1/messages",
            {
                "model": "m",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}],
                "output_config": {"format": {"type": "json_schema", "schema": SELF_REQUIRED}},
            },
            "output_config.format.schema",
        ),
    ],
)
async def test_every_schema_path_refuses_a_self_reference(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    response = await client.post(path, json=body, headers=JSON_HEADERS)
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert "requires itself" in error["message"]
    if path != "/v1/messages":  # Anthropic's envelope has no param
        assert error["param"] == param


def _tools(count: int, properties: int) -> list[dict[str, Any]]:
    props = {f"a{j}": {"type": "string"} for j in range(properties)}
    return [
        {
            "type": "function",
            "function": {"name": f"t{i}", "parameters": {"type": "object", "properties": props}},
        }
        for i in range(count)
    ]


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        pytest.param({"tools": _tools(2000, 1)}, "tools", "too_many_tools", id="2000-tools"),
        pytest.param({"tools": _tools(129, 1)}, "tools", "too_many_tools", id="129-tools"),
        pytest.param(
            {
                "response_format": _json_schema(
                    {
                        "type": "object",
                        "properties": {f"p{i}": {"type": "string"} for i in range(20_000)},
                    }
                )
            },
            "response_format.json_schema.schema",
            "schema_too_large",
            id="20k-properties",
        ),
        pytest.param(
            # 60 tools of 100 properties: within each, over 5,000 in all.
            {"tools": _tools(60, 100)},
            "tools[50].function.parameters",
            "schema_too_large",
            id="properties-summed-over-tools",
        ),
        pytest.param(
            {"response_format": _json_schema(json.loads('{"items":' * 100 + "{}" + "}" * 100))},
            "response_format.json_schema.schema",
            "schema_too_deep",
            id="deep-schema",
        ),
    ],
)
async def test_schemas_are_bounded_in_size(
    client: httpx.AsyncClient, fields: dict[str, Any], param: str, code: str
) -> None:
    response = await client.post(URL, json=chat(**fields), headers=JSON_HEADERS)
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


async def test_tools_within_the_limits_are_served(client: httpx.AsyncClient) -> None:
    # 128 tools of 39 properties: 4,992 in all, checked off the event loop.
    response = await client.post(
        URL, json=chat(tools=_tools(128, 39), tool_choice="required"), headers=JSON_HEADERS
    )
    assert response.status_code == 200, response.text[:300]
    assert response.json()["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    "settings", [Settings(time_to_first_token_ms=0, inter_token_latency_ms=0, max_tools=2)]
)
async def test_the_tool_limit_is_a_setting(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, json=chat(tools=_tools(3, 1)), headers=JSON_HEADERS)
    assert response.status_code == 400
    assert "at most 2" in response.json()["error"]["message"]


# --- amplification: embeddings, log probabilities, metadata -------------------------------


async def test_embeddings_output_is_capped(client: httpx.AsyncClient) -> None:
    body = {"model": "m", "input": [f"text {i}" for i in range(2048)], "dimensions": 8192}
    response = await client.post("/v1/embeddings", json=body, headers=JSON_HEADERS)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "input"
    assert "2048 x 8192" in error["message"]
    within = {"model": "m", "input": ["a", "b"], "dimensions": 8192}
    response = await client.post("/v1/embeddings", json=within, headers=JSON_HEADERS)
    assert response.status_code == 200
    assert [len(d["embedding"]) for d in response.json()["data"]] == [8192, 8192]


async def test_n_times_top_logprobs_is_capped(client: httpx.AsyncClient) -> None:
    body = chat(n=16, logprobs=True, top_logprobs=20)
    response = await client.post(URL, json=body, headers=JSON_HEADERS)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["param"] == "top_logprobs"
    body["n"] = 5  # 5 x 20 = 100: the default limit
    response = await client.post(URL, json=body, headers=JSON_HEADERS)
    assert response.status_code == 200, response.text[:300]


@pytest.mark.parametrize(
    "settings", [Settings(time_to_first_token_ms=0, inter_token_latency_ms=0, max_n=64)]
)
async def test_legacy_logprobs_are_capped_the_same_way(client: httpx.AsyncClient) -> None:
    body = {"model": "m", "prompt": "hi", "n": 64, "logprobs": 5, "max_tokens": 5}
    response = await client.post("/v1/completions", json=body, headers=JSON_HEADERS)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["param"] == "logprobs"


BAD_METADATA = [
    pytest.param({f"k{i}": "v" for i in range(17)}, "metadata", id="17-keys"),
    pytest.param({"k" * 65: "v"}, "metadata." + "k" * 64, id="long-key"),
    pytest.param({"k": "v" * 513}, "metadata.k", id="long-value"),
    pytest.param({"k": "v" * (4 * 1024 * 1024 - 200)}, "metadata.k", id="3.8MB-value"),
]


@pytest.mark.parametrize(("metadata", "param"), BAD_METADATA)
@pytest.mark.parametrize("path", [URL, "/v1/responses"])
async def test_metadata_is_validated_as_openai_does(
    client: httpx.AsyncClient, path: str, metadata: dict[str, str], param: str
) -> None:
    base = chat() if path == URL else {"model": "m", "input": "hi"}
    response = await client.post(path, json=base | {"metadata": metadata}, headers=JSON_HEADERS)
    assert response.status_code in (400, 413), response.text[:300]
    if response.status_code == 400:
        assert response.json()["error"]["param"] == param
    fine = {f"k{i}": "v" * 512 for i in range(16)}
    response = await client.post(path, json=base | {"metadata": fine}, headers=JSON_HEADERS)
    assert response.status_code == 200, response.text[:300]


@pytest.mark.parametrize(
    "metadata",
    [{"user_id": "u" * 257}, {"user_id": 5}, {"user_id": "u", "extra": "x"}],
    ids=["long-user-id", "number", "extra-key"],
)
async def test_anthropic_metadata_is_user_id_only(
    client: httpx.AsyncClient, metadata: dict[str, Any]
) -> None:
    base = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/messages", json=base | {"metadata": metadata})
    assert response.status_code == 400, response.text[:300]
    assert response.json()["type"] == "error"
    response = await client.post("/v1/messages", json=base | {"metadata": {"user_id": "u" * 256}})
    assert response.status_code == 200


# --- regular expressions from rules and settings ---------------------------------------------


def test_rule_regexes_run_in_linear_time() -> None:
    from streamapi.control.rules import parse_rules

    (rule,) = parse_rules(
        [{"match": {"user": {"regex": "^(a+)+$"}}, "respond": {"text": "x"}}], source="t"
    )
    user = rule.match.user
    assert user is not None
    # 2**60 steps for a backtracking engine; RE2 answers at once.
    assert not user.matches("a" * 60 + "!")
    assert user.matches("a" * 60)


@pytest.mark.parametrize("regex", [r"(a)\1", r"a(?=b)", r"(?<!x)y"])
def test_a_regex_rule_re2_cannot_run_is_refused_at_load(regex: str) -> None:
    from streamapi.control.rules import RulesError, parse_rules

    with pytest.raises(RulesError) as raised:
        parse_rules([{"match": {"user": {"regex": regex}}, "respond": {"text": "x"}}], source="r")
    assert "RE2 syntax" in str(raised.value)


def test_model_patterns_must_be_re2() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="RE2 syntax"):
        Settings(vision_model_pattern=r"(gpt)\1")


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}, "allOf": [{"$ref": "#/$defs/a"}]},
        {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
        SELF_REQUIRED,
        {"$ref": "#/nowhere/0/x"},
    ],
    ids=["ref-root", "allOf-loop", "ref-loop", "required-self", "dangling"],
)
def test_the_generator_ends_on_loops_it_is_given_unchecked(schema: dict[str, Any]) -> None:
    # A schema read from a prompt is not checked: the generator must end on its own.
    import random

    from streamapi.text.jsonschema import MAX_NESTING, SchemaGenerator

    value = SchemaGenerator(schema, random.Random(0)).generate()
    text = json.dumps(value)
    assert text.count("{") <= MAX_NESTING + 1


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        (
            {"type": "string", "minLength": 5, "maxLength": 2},
            "minLength 5 is more than maxLength 2",
        ),
        ({"type": "array", "minItems": 3, "maxItems": 1}, "minItems 3 is more than maxItems 1"),
        ({"type": "integer", "minimum": 0.2, "maximum": 0.8}, "no integer lies within"),
        ({"type": "number", "exclusiveMinimum": 1, "maximum": 1}, "no number lies within"),
        ({"enum": []}, "its enum is empty"),
    ],
)
async def test_a_required_value_no_value_satisfies_is_a_400(
    client: httpx.AsyncClient, schema: dict[str, Any], why: str
) -> None:
    response = await client.post(
        URL, json=chat(response_format=_json_schema(_object(schema))), headers=JSON_HEADERS
    )
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["param"] == "response_format.json_schema.schema"
    assert f"at '#/properties/value', {why}" in error["message"]
    # Optional, or with a way out, it is answered.
    maybe = {"anyOf": [schema, {"type": "null"}]}
    response = await client.post(
        URL, json=chat(response_format=_json_schema(_object(maybe))), headers=JSON_HEADERS
    )
    assert response.status_code == 200, response.text[:300]


async def test_a_custom_tools_regex_grammar_runs_in_linear_time(client: httpx.AsyncClient) -> None:
    """A custom tool's regex grammar is the client's: the simulator tries the request's
    words against it (2**60 steps for a backtracking engine here) and generates from it
    within the answer's budget."""
    tool = {
        "type": "custom",
        "name": "tag",
        "format": {"type": "grammar", "syntax": "regex", "definition": "(a+)+b"},
    }
    body = {
        "model": "m",
        "input": "a" * 60 + "!",
        "tools": [tool],
        "tool_choice": {"type": "custom", "name": "tag"},
        "max_output_tokens": 64,
    }
    response = await client.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text[:300]
    (call,) = [item for item in response.json()["output"] if item["type"] == "custom_tool_call"]
    assert call["input"].endswith("b") and set(call["input"][:-1]) == {"a"}
