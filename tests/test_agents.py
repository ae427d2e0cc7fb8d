"""The simulator plays an agent's model with no rules, over ASGI: it reads the user's words (not
the harness's), calls at most the tools they name, and ends every tool loop with an answer."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from asgi_lifespan import LifespanManager

from streamapi.app import create_app
from streamapi.settings import Settings
from tests.sse_helpers import chunks

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
JSON = {"Accept": "application/json"}
MAX_REQUESTS = 4  # an unscripted loop ends within this many requests


def schema(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


STRING = {"type": "string"}
# The tools Claude Code offers, as it describes them (abridged), with their input schemas.
CLAUDE_CODE_TOOLS: list[dict[str, Any]] = [
    {
        "name": "Task",
        "description": "Launch a new agent to handle complex, multi-step tasks autonomously.",
        "input_schema": schema({"description": STRING, "prompt": STRING, "subagent_type": STRING}),
    },
    {
        "name": "Bash",
        "description": "Executes a given bash command in a persistent shell session with "
        "optional timeout, ensuring proper handling and security measures.",
        "input_schema": schema(
            {"command": STRING, "timeout": {"type": "number"}, "description": STRING},
            ["command"],
        ),
    },
    {
        "name": "Glob",
        "description": "Fast file pattern matching tool that works with any codebase size.",
        "input_schema": schema({"pattern": STRING, "path": STRING}, ["pattern"]),
    },
    {
        "name": "Grep",
        "description": "A powerful search tool built on ripgrep. Supports full regex syntax.",
        "input_schema": schema({"pattern": STRING, "path": STRING}, ["pattern"]),
    },
    {
        "name": "Read",
        "description": "Reads a file from the local filesystem. You can access any file "
        "directly by using this tool.",
        "input_schema": schema(
            {"file_path": STRING, "offset": {"type": "number"}, "limit": {"type": "number"}},
            ["file_path"],
        ),
    },
    {
        "name": "Edit",
        "description": "Performs exact string replacements in files.",
        "input_schema": schema({"file_path": STRING, "old_string": STRING, "new_string": STRING}),
    },
    {
        "name": "Write",
        "description": "Writes a file to the local filesystem. This tool will overwrite the "
        "existing file if there is one at the provided path.",
        "input_schema": schema({"file_path": STRING, "content": STRING}),
    },
    {
        "name": "NotebookEdit",
        "description": "Completely replaces the contents of a specific cell in a Jupyter "
        "notebook (.ipynb file) with new source.",
        "input_schema": schema({"notebook_path": STRING, "new_source": STRING}),
    },
    {
        "name": "WebFetch",
        "description": "Fetches content from a specified URL and processes it using an AI model.",
        "input_schema": schema({"url": {"type": "string", "format": "uri"}, "prompt": STRING}),
    },
    {
        "name": "TodoWrite",
        "description": "Use this tool to create and manage a structured task list for your "
        "current coding session.",
        "input_schema": schema(
            {"todos": {"type": "array", "items": schema({"content": STRING, "status": STRING})}}
        ),
    },
    {
        "name": "WebSearch",
        "description": "Allows Claude to search the web and use the results to inform responses.",
        "input_schema": schema({"query": {"type": "string", "minLength": 2}}),
    },
    {
        "name": "BashOutput",
        "description": "Retrieves output from a running or completed background bash shell.",
        "input_schema": schema({"bash_id": STRING}),
    },
]
# What Claude Code puts around the user's words: reminders that name nearly every tool.
REMINDER = (
    "<system-reminder>\nAs you answer the user's questions, you can use the following "
    "context:\n# important-instruction-reminders\nDo what has been asked; nothing more, "
    "nothing less. Use the Bash tool to run commands, Read and Write files, Edit them, use "
    "Glob and Grep to search, TodoWrite to plan the task, WebFetch and WebSearch for the web, "
    "NotebookEdit for notebooks. Today's date is 2026-12-06. The user works in Berlin.\n"
    "</system-reminder>"
)
SYSTEM = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
    {
        "type": "text",
        "text": "You are an interactive CLI tool that helps users with software "
        "engineering tasks. Use the instructions below and the tools available to you.",
    },
]


def claude_code_request(*blocks: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "system": SYSTEM,
        "tools": CLAUDE_CODE_TOOLS,
        "messages": [{"role": "user", "content": list(blocks)}],
        "seed": 7,
    } | fields


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


async def test_claude_code_saying_hello_gets_a_short_text_and_no_tool_call(
    client: httpx.AsyncClient,
) -> None:
    body = claude_code_request(text_block(REMINDER), text_block("Say hello in one short sentence."))
    message = (await client.post(MESSAGES, json=body)).json()
    assert message["stop_reason"] == "end_turn"
    assert [block["type"] for block in message["content"]] == ["text"]
    text = message["content"][0]["text"]
    assert "reminder" not in text.lower()
    assert text.startswith("Hello") and text.count(".") == 1  # a greeting, in one sentence


async def test_claude_code_calls_one_tool_filled_from_the_users_words(
    client: httpx.AsyncClient,
) -> None:
    body = claude_code_request(
        text_block(REMINDER), text_block("Search the web for the population of Paris.")
    )
    message = (await client.post(MESSAGES, json=body)).json()
    calls = [block for block in message["content"] if block["type"] == "tool_use"]
    assert [call["name"] for call in calls] == ["WebSearch"]
    jsonschema.validate(calls[0]["input"], CLAUDE_CODE_TOOLS[10]["input_schema"])
    # Berlin is in the harness's reminder, Paris in the user's words.
    assert "Berlin" not in json.dumps(calls[0]["input"])


@pytest.mark.parametrize(
    ("question", "argument"),
    [
        ("New task:\nWhat is the weather in Paris?", "Paris"),
        ("What is the weather in New York today?", "New York"),
        (f"{REMINDER}\nHow warm is it in Lisbon right now? Check the weather.", "Lisbon"),
    ],
)
async def test_tool_arguments_take_the_place_the_user_named(
    client: httpx.AsyncClient, question: str, argument: str
) -> None:
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": schema({"city": STRING}),
        },
    }
    body = {"messages": [{"role": "user", "content": question}], "tools": [weather], "seed": 3}
    call = (await client.post(CHAT, json=body)).json()["choices"][0]["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": argument}


# --- a whole loop, in each protocol -------------------------------------------------------

WEATHER_TOOL = ("get_weather", "Get the current weather in a city.", schema({"city": STRING}))
TIME_TOOL = ("get_time", "Get the local time in a city.", schema({"city": STRING}))
RESULT = "Sunny, 21 C"


def chat_tools() -> list[dict[str, Any]]:
    return [
        {"type": "function", "function": {"name": n, "description": d, "parameters": p}}
        for n, d, p in (WEATHER_TOOL, TIME_TOOL)
    ]


async def chat_loop(client: httpx.AsyncClient, question: str, **fields: Any) -> list[str]:
    """Runs a chat agent's loop (every call answered with RESULT); the kinds of its turns."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    kinds = []
    for _ in range(MAX_REQUESTS):
        body = {"messages": messages, "tools": chat_tools(), "seed": 5} | fields
        message = (await client.post(CHAT, json=body)).json()["choices"][0]["message"]
        messages.append(message)
        if not message.get("tool_calls"):
            kinds.append("text")
            assert message["content"]
            return kinds
        kinds.append("+".join(c["function"]["name"] for c in message["tool_calls"]))
        for call in message["tool_calls"]:
            jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER_TOOL[2])
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": RESULT})
    raise AssertionError(f"no answer after {MAX_REQUESTS} requests: {kinds}")


async def test_a_chat_tool_loop_ends_with_an_answer(client: httpx.AsyncClient) -> None:
    assert await chat_loop(client, "What is the weather in Paris?") == ["get_weather", "text"]
    # The same request gives the same loop.
    assert await chat_loop(client, "What is the weather in Paris?") == ["get_weather", "text"]


async def test_tools_named_together_are_called_together_or_one_by_one(
    client: httpx.AsyncClient,
) -> None:
    question = "What are the weather and the local time in Oslo?"
    assert await chat_loop(client, question) == ["get_weather+get_time", "text"]
    assert await chat_loop(client, question, parallel_tool_calls=False) == [
        "get_weather",
        "get_time",
        "text",
    ]


async def test_a_responses_tool_loop_ends_with_an_answer(client: httpx.AsyncClient) -> None:
    tools = [
        {"type": "function", "name": n, "description": d, "parameters": p}
        for n, d, p in (WEATHER_TOOL, TIME_TOOL)
    ]
    items: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Rome?"}]
    for _ in range(MAX_REQUESTS):
        response = (
            await client.post(RESPONSES, json={"input": items, "tools": tools, "seed": 5})
        ).json()
        calls = [item for item in response["output"] if item["type"] == "function_call"]
        if not calls:
            assert response["output_text" if "output_text" in response else "output"]
            assert response["output"][-1]["type"] == "message"
            break
        assert [call["name"] for call in calls] == ["get_weather"]
        assert json.loads(calls[0]["arguments"]) == {"city": "Rome"}
        items += calls
        items += [
            {"type": "function_call_output", "call_id": c["call_id"], "output": RESULT}
            for c in calls
        ]
    else:
        raise AssertionError("the loop did not end")
    assert len(items) == 3  # one call, its output, then the answer


@pytest.mark.parametrize("with_reminder", [False, True])
async def test_a_messages_tool_loop_ends_with_an_answer(
    client: httpx.AsyncClient, with_reminder: bool
) -> None:
    """Claude Code adds a reminder after the tool results of a turn: still a result turn."""
    tools = [
        {"name": n, "description": d, "input_schema": p} for n, d, p in (WEATHER_TOOL, TIME_TOOL)
    ]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [text_block(REMINDER), text_block("Weather in Madrid?")]}
    ]
    for turn in range(MAX_REQUESTS):
        body = {
            "model": "claude",
            "max_tokens": 4096,
            "messages": messages,
            "tools": tools,
            "seed": 5,
        }
        message = (await client.post(MESSAGES, json=body)).json()
        messages.append({"role": "assistant", "content": message["content"]})
        calls = [block for block in message["content"] if block["type"] == "tool_use"]
        if not calls:
            assert message["stop_reason"] == "end_turn"
            assert RESULT in message["content"][-1]["text"]
            assert turn == 1
            return
        assert [(c["name"], c["input"]) for c in calls] == [("get_weather", {"city": "Madrid"})]
        results: list[dict[str, Any]] = [
            {"type": "tool_result", "tool_use_id": c["id"], "content": RESULT} for c in calls
        ]
        messages.append(
            {"role": "user", "content": results + [text_block(REMINDER)] * with_reminder}
        )
    raise AssertionError("the loop did not end")


# --- smolagents: results as user text, tool_choice required ----------------------------------

SMOLAGENTS_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": schema({"city": {"type": "string", "description": "The city name."}}),
        },
    },
    {
        "type": "function",
        "function": {
            "name": "final_answer",
            "description": "Provides a final answer to the given problem.",
            "parameters": schema(
                {"answer": {"type": "string", "description": "The final answer to the problem"}}
            ),
        },
    },
]


def smolagents_request(*steps: dict[str, Any]) -> dict[str, Any]:
    """What smolagents' ToolCallingAgent sends (its request as logged from smolagents 1.26)."""
    return {
        "model": "sim-small",
        "messages": [
            {
                "role": "system",
                "content": [
                    text_block(
                        "You are an expert assistant who can solve any task using tool calls. "
                        "You will be given a task to solve as best you can."
                    )
                ],
            },
            {"role": "user", "content": [text_block("New task:\nWhat is the weather in Paris?")]},
            *steps,
        ],
        "tools": SMOLAGENTS_TOOLS,
        "tool_choice": "required",
        "stop": ["Observation:", "Calling tools:"],
        "seed": 11,
    }


def only_call(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    (call,) = response.json()["choices"][0]["message"]["tool_calls"]
    return call["function"]["name"], json.loads(call["function"]["arguments"])


async def test_smolagents_observation_transcript_ends_with_final_answer(
    client: httpx.AsyncClient,
) -> None:
    first = only_call(await client.post(CHAT, json=smolagents_request()))
    assert first == ("get_weather", {"city": "Paris"})
    transcript = (
        "Calling tools:\n[{'id': 'call_1', 'type': 'function', 'function': "
        "{'name': 'get_weather', 'arguments': {'city': 'Paris'}}}]"
    )
    second = only_call(
        await client.post(
            CHAT,
            json=smolagents_request(
                {"role": "assistant", "content": [text_block(transcript)]},
                {"role": "user", "content": [text_block("Observation:\nSunny, 21 C in Paris")]},
            ),
        )
    )
    assert second == ("final_answer", {"answer": "Sunny, 21 C in Paris"})


async def test_required_with_nothing_named_answers_through_the_output_tool(
    client: httpx.AsyncClient,
) -> None:
    body = smolagents_request()
    body["messages"][1]["content"] = [text_block("New task:\nSay hello in one sentence.")]
    name, arguments = only_call(await client.post(CHAT, json=body))
    assert name == "final_answer"
    jsonschema.validate(arguments, SMOLAGENTS_TOOLS[1]["function"]["parameters"])


# --- rules see a tool-result turn however it is carried --------------------------------------


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - name: from-the-result\n"
        "    match: {tool_result: {regex: '\\d+ C'}}\n"
        "    respond: {template: 'The tool says {{tool_result}}; you asked: {{user}}'}\n"
    )
    return path


async def test_a_tool_result_rule_matches_results_followed_by_text(rules_file: Path) -> None:
    app = create_app(
        Settings(time_to_first_token_ms=0, inter_token_latency_ms=0, rules_file=rules_file)
    )
    messages = [
        {"role": "user", "content": "Weather in Madrid?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Madrid"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": RESULT},
                text_block(REMINDER),
            ],
        },
    ]
    tools = [{"name": "get_weather", "input_schema": schema({"city": STRING})}]
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as c,
    ):
        message = (
            await c.post(
                MESSAGES,
                json={"model": "claude", "max_tokens": 100, "messages": messages, "tools": tools},
            )
        ).json()
        assert message["content"][0]["text"] == (
            "The tool says Sunny, 21 C; you asked: Weather in Madrid?"
        )
        observed = await c.post(
            CHAT,
            json={"messages": [{"role": "user", "content": "Observation:\nSunny, 21 C"}]},
        )
        assert observed.json()["choices"][0]["message"]["content"].startswith(
            "The tool says Sunny, 21 C"
        )


# --- DSPy: output fields defined in words ------------------------------------------------------

DSPY_SYSTEM = """Your input fields are:
1. `question` (str): 
2. `trajectory` (str):
Your output fields are:
1. `next_thought` (str): 
2. `next_tool_name` (Literal['get_weather', 'finish']): 
3. `next_tool_args` (dict[str, Any]):
All interactions will be structured in the following way, with the appropriate values filled in.

[[ ## question ## ]]
{question}

[[ ## trajectory ## ]]
{trajectory}

[[ ## next_thought ## ]]
{next_thought}

[[ ## next_tool_name ## ]]
{next_tool_name}        # note: the value you produce must exactly match (no extra characters) one of: get_weather; finish

[[ ## next_tool_args ## ]]
{next_tool_args}        # note: the value you produce must adhere to the JSON schema: {"type": "object", "additionalProperties": true}

[[ ## completed ## ]]
In adhering to this structure, your objective is: 
        Given the fields `question`, produce the fields `answer`.
        When selecting the next_tool_name and its next_tool_args, the tool must be one of:

        (1) get_weather, whose description is <desc>Get the weather in a city.</desc>. It takes arguments {'city': {'type': 'string'}}.
        (2) finish, whose description is <desc>Marks the task as complete.</desc>. It takes arguments {}.
        When providing `next_tool_args`, the value inside the field must be in JSON format"""  # noqa: E501
DSPY_ASK = (
    "Respond with the corresponding output fields, starting with the field "
    "`[[ ## next_thought ## ]]`, then `[[ ## next_tool_name ## ]]` (must be formatted as a "
    "valid Python Literal['get_weather', 'finish']), then `[[ ## next_tool_args ## ]]` (must "
    "be formatted as a valid Python dict[str, Any]), and then ending with the marker for "
    "`[[ ## completed ## ]]`."
)


def sections(text: str) -> dict[str, str]:
    """An answer's ``[[ ## field ## ]]`` sections, as DSPy's ChatAdapter parses them."""
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("[[ ## ") and line.endswith(" ## ]]"):
            current = line[6:-6]
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return {name: "\n".join(lines).strip() for name, lines in found.items()}


@pytest.mark.parametrize("stream", [False, True])
async def test_dspy_react_calls_the_tool_then_finishes(
    client: httpx.AsyncClient, stream: bool
) -> None:
    async def step(trajectory: str) -> dict[str, str]:
        user = (
            f"[[ ## question ## ]]\nWhat is the weather in Paris?\n\n"
            f"[[ ## trajectory ## ]]\n{trajectory}\n\n{DSPY_ASK}"
        )
        body = {
            "messages": [
                {"role": "system", "content": DSPY_SYSTEM},
                {"role": "user", "content": user},
            ],
            "seed": 2,
            "stream": stream,
        }
        response = await client.post(CHAT, json=body)
        if stream:
            text = "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks(response.text)
            )
        else:
            text = response.json()["choices"][0]["message"]["content"]
        assert text.rstrip().endswith("[[ ## completed ## ]]")
        return sections(text)

    first = await step("")
    assert set(first) == {"next_thought", "next_tool_name", "next_tool_args", "completed"}
    assert first["next_tool_name"] == "get_weather"
    assert json.loads(first["next_tool_args"]) == {"city": "Paris"}
    trajectory = (
        f"[[ ## thought_0 ## ]]\n{first['next_thought']}\n\n[[ ## tool_name_0 ## ]]\n"
        f"get_weather\n\n[[ ## tool_args_0 ## ]]\n{first['next_tool_args']}\n\n"
        "[[ ## observation_0 ## ]]\nSunny, 21 C"
    )
    second = await step(trajectory)
    assert second["next_tool_name"] == "finish"
    assert json.loads(second["next_tool_args"]) == {}


async def test_dspy_fields_are_answered_each_by_its_type(client: httpx.AsyncClient) -> None:
    system = (
        "Your input fields are:\n1. `text` (str):\nYour output fields are:\n"
        "1. `keywords` (list[str]): \n2. `positive` (bool): \n3. `score` (float):\n"
        "All interactions will be structured in the following way, with the appropriate "
        "values filled in.\n\n[[ ## text ## ]]\n{text}\n\n[[ ## keywords ## ]]\n{keywords}\n\n"
        "[[ ## positive ## ]]\n{positive}\n\n[[ ## score ## ]]\n{score}\n\n[[ ## completed ## ]]"
    )
    user = (
        "[[ ## text ## ]]\nI love Lisbon in the spring.\n\nRespond with the corresponding "
        "output fields, starting with the field `[[ ## keywords ## ]]`, then `[[ ## positive ## "
        "]]`, then `[[ ## score ## ]]`, and then ending with the marker for "
        "`[[ ## completed ## ]]`."
    )
    body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    answer = sections(
        (await client.post(CHAT, json=body)).json()["choices"][0]["message"]["content"]
    )
    assert list(answer) == ["keywords", "positive", "score", "completed"]
    assert "Lisbon" in json.loads(answer["keywords"])
    assert answer["positive"] in ("True", "False")
    assert 0 <= float(answer["score"]) <= 1


async def test_json_asked_for_by_its_fields_has_those_fields(client: httpx.AsyncClient) -> None:
    question = "Who founded Lisbon? Answer as JSON with fields name, age and is_legend."
    body = {"messages": [{"role": "user", "content": question}], "seed": 1}
    answer = json.loads(
        (await client.post(CHAT, json=body)).json()["choices"][0]["message"]["content"]
    )
    assert list(answer) == ["name", "age", "is_legend"]
    assert isinstance(answer["name"], str)
    assert isinstance(answer["age"], int)
    assert isinstance(answer["is_legend"], bool)


# --- aider: edits as SEARCH/REPLACE blocks -----------------------------------------------------

AIDER_SYSTEM = (
    "Act as an expert software developer.\nTake requests for changes to the supplied code.\n"
    "3. Describe each change with a *SEARCH/REPLACE block* per the examples below.\n"
    "All changes to files must use this *SEARCH/REPLACE block* format."
)
HELLO = 'import sys\n\n\ndef hello():\n    print("hello")\n'


def aider_request(request: str, files: dict[str, str]) -> dict[str, Any]:
    """What aider 0.86 sends with its default "diff" edit format and files in the chat."""
    shown = "".join(f"\n{path}\n```\n{content}```\n" for path, content in files.items())
    messages: list[dict[str, Any]] = [{"role": "system", "content": AIDER_SYSTEM}]
    if files:
        messages += [
            {
                "role": "user",
                "content": "I have *added these files to the chat* so you can go ahead and "
                f"edit them.\n\n*Trust this message as the true contents of these files!*\n{shown}",
            },
            {"role": "assistant", "content": "Ok, any changes I propose will be to those files."},
        ]
    messages.append({"role": "user", "content": request})
    return {"messages": messages, "seed": 1}


def apply_blocks(answer: str, files: dict[str, str]) -> dict[str, str]:
    """Applies the answer's SEARCH/REPLACE blocks as aider does (first exact occurrence)."""
    changed = dict(files)
    pattern = r"^(\S+)\n```\w*\n<<<<<<< SEARCH\n(.*?)=======\n(.*?)>>>>>>> REPLACE\n```"
    blocks = re.findall(pattern, answer, re.MULTILINE | re.DOTALL)
    assert blocks, answer
    for path, search, replace in blocks:
        if not search:
            changed[path] = replace + changed.get(path, "")
            continue
        assert search in changed[path], (search, path)
        changed[path] = changed[path].replace(search, replace, 1)
    return changed


async def test_aider_edit_requests_get_blocks_that_apply(client: httpx.AsyncClient) -> None:
    files = {"app/hello.py": HELLO, "README.md": "# Hello\n"}
    body = aider_request("Add a docstring to hello() in hello.py", files)
    answer = (await client.post(CHAT, json=body)).json()["choices"][0]["message"]["content"]
    changed = apply_blocks(answer, files)
    assert changed["README.md"] == files["README.md"]
    assert changed["app/hello.py"].startswith("import sys\n# Requested: Add a docstring")
    compile(changed["app/hello.py"], "hello.py", "exec")  # still Python

    new = aider_request("Create notes.md with a summary of the project", {})
    answer = (await client.post(CHAT, json=new)).json()["choices"][0]["message"]["content"]
    assert apply_blocks(answer, {})["notes.md"].startswith("<!-- Requested: Create notes.md")


async def test_aider_whole_file_format_gets_the_whole_file(client: httpx.AsyncClient) -> None:
    """For models it does not know, aider asks for *file listings* and reminds of them after
    the request."""
    body = aider_request(
        "Add a docstring to hello()\n\nTo suggest changes to a file you MUST return the entire "
        "content of the updated file.\nYou MUST use this *file listing* format:",
        {"hello.py": HELLO},
    )
    body["messages"][0]["content"] = (
        "Act as an expert software developer.\nYou MUST use this *file listing* format:\n\n"
        "path/to/filename.js\n```\n// entire file content ...\n```"
    )
    answer = (await client.post(CHAT, json=body)).json()["choices"][0]["message"]["content"]
    listed = re.search(r"^hello\.py\n```\n(.*?)^```$", answer, re.MULTILINE | re.DOTALL)
    assert listed is not None, answer
    assert listed.group(1) == HELLO.replace(
        "import sys\n", "import sys\n# Requested: Add a docstring to hello()\n"
    )


async def test_aider_questions_get_prose(client: httpx.AsyncClient) -> None:
    body = aider_request("Why is hello() printing to stdout?", {"hello.py": HELLO})
    answer = (await client.post(CHAT, json=body)).json()["choices"][0]["message"]["content"]
    assert "<<<<<<< SEARCH" not in answer


async def test_codex_context_messages_are_not_the_request(client: httpx.AsyncClient) -> None:
    """Codex CLI sends its instructions and environment as user messages before the prompt."""
    shell = {
        "type": "function",
        "name": "shell",
        "description": "Runs a shell command and returns its output.",
        "parameters": schema({"command": {"type": "array", "items": STRING}, "workdir": STRING}),
    }
    plan = {
        "type": "function",
        "name": "update_plan",
        "description": "Updates the task plan.",
        "parameters": schema({"plan": {"type": "array", "items": STRING}}),
    }
    context = [
        "# AGENTS.md instructions for /repo\n\n<INSTRUCTIONS>\nRun the shell tool to test; "
        "update the plan often.\n</INSTRUCTIONS>",
        "<environment_context>\n  <cwd>/repo</cwd>\n  <shell>bash</shell>\n</environment_context>",
    ]
    items: list[dict[str, Any]] = [
        {"type": "message", "role": "developer", "content": "You are Codex, a coding agent."},
        *({"type": "message", "role": "user", "content": text} for text in context),
        {"type": "message", "role": "user", "content": "Say hello in one short sentence."},
    ]
    body = {"model": "gpt-5-codex", "input": items, "tools": [shell, plan], "seed": 1}
    response = (await client.post(RESPONSES, json=body)).json()
    assert [item["type"] for item in response["output"]] == ["message"]
    text = response["output"][0]["content"][0]["text"]
    assert text.count(".") == 1
    assert "environment" not in text.lower() and "instructions" not in text.lower()


# --- smolagents' CodeAgent: actions as code ----------------------------------------------------

CODE_AGENT_SYSTEM = '''You are an expert assistant who can solve any task using code blobs.
Then in the Code sequence you should write the code in simple Python. The code sequence must \
be opened with '<code>', and closed with '</code>'.
You only have access to these tools, behaving like regular python functions:
<code>
def get_weather(city: string) -> string:
    """Get the current weather in a city.

    Args:
        city: The city name.
    """

def final_answer(answer: any) -> any:
    """Provides a final answer to the given problem.

    Args:
        answer: The final answer to the problem
    """

</code>'''


async def test_smolagents_code_agent_calls_the_tool_in_code_then_answers(
    client: httpx.AsyncClient,
) -> None:
    async def step(*history: dict[str, Any]) -> str:
        messages = [
            {"role": "system", "content": CODE_AGENT_SYSTEM},
            {"role": "user", "content": "New task:\nWhat is the weather in Paris?"},
            *history,
        ]
        body = {"messages": messages, "stop": ["Observation:", "Calling tools:", "</code>"]}
        response = await client.post(CHAT, json=body)
        text: str = response.json()["choices"][0]["message"]["content"]
        # smolagents closes the block the stop sequence cut, then runs what is inside.
        found = re.search(r"<code>\n(.*?)\n$", text, re.DOTALL)
        assert text.startswith("Thought: ") and found is not None, text
        return found.group(1)

    first = await step()
    assert first == "result = get_weather(city='Paris')\nprint(result)"
    second = await step(
        {"role": "assistant", "content": f"Thought: ...\n<code>\n{first}\n</code>"},
        {
            "role": "user",
            "content": "Observation:\nExecution logs:\nSunny, 21 C in Paris\n"
            "Last output from code snippet:\nNone",
        },
    )
    assert second == "final_answer('Sunny, 21 C in Paris')"
