"""A scripted answer (``GenerationRequest.script``) is planned like the simulator's own words."""

from __future__ import annotations

import json

from streamapi.engines.planner import Planner
from streamapi.engines.protocol import (
    GenerationRequest,
    PromptMessage,
    Script,
    ScriptedToolCall,
    ToolSpec,
)


def request(**fields: object) -> GenerationRequest:
    return GenerationRequest(
        model="m",
        messages=(PromptMessage("user", "What is the weather in Paris?"),),
        **fields,  # type: ignore[arg-type]
    )


def test_scripted_text_is_said_exactly_and_ends_with_stop() -> None:
    plan = Planner().plan(request(script=Script(text="It is sunny in Paris.")))
    assert plan.text == "It is sunny in Paris."
    assert plan.finish_reason == "stop"
    assert all(d.channel == "content" for d in plan.deltas)


def test_max_tokens_cuts_a_script_with_length() -> None:
    plan = Planner().plan(request(script=Script(text="one two three four five"), max_tokens=2))
    assert plan.text == "one two"
    assert plan.finish_reason == "length"


def test_a_stop_sequence_cuts_a_script() -> None:
    plan = Planner().plan(request(script=Script(text="Hello. END more"), stop=("END",)))
    assert plan.text == "Hello. "
    assert plan.deltas[-1].matched_stop == "END"


def test_scripted_tool_calls_follow_the_text_and_end_with_tool_calls() -> None:
    calls = (
        ScriptedToolCall("get_weather", json.dumps({"location": "Paris"}), id="call_1"),
        ScriptedToolCall("get_time", "not json on purpose"),
    )
    plan = Planner(seed=1).plan(request(script=Script(text="Checking.", tool_calls=calls)))
    assert plan.text == "Checking."
    starts = [d.tool_call for d in plan.deltas if d.tool_call is not None]
    assert [(s.index, s.name) for s in starts] == [(0, "get_weather"), (1, "get_time")]
    assert starts[0].id == "call_1"
    assert starts[1].id.startswith("call_")
    arguments = [
        "".join(d.text for d in plan.deltas if d.tool_index == i and d.channel == "tool_call")
        for i in (0, 1)
    ]
    assert arguments == ['{"location": "Paris"}', "not json on purpose"]
    assert plan.finish_reason == "tool_calls"


def test_a_script_overrides_the_tool_rule() -> None:
    # The simulator's own rule would call get_weather: the script answers instead.
    plan = Planner().plan(
        request(tools=(ToolSpec("get_weather"),), script=Script(text="No tools today."))
    )
    assert plan.text == "No tools today."
    assert plan.finish_reason == "stop"


def test_scripted_reasoning_comes_first_and_plain_scripts_keep_the_engines_own() -> None:
    given = Planner().plan(request(script=Script(text="42", reasoning="Let me think.")))
    assert "".join(d.text for d in given.deltas if d.channel == "reasoning") == "Let me think."
    assert given.deltas[0].channel == "reasoning"
    own = Planner(seed=3).plan(request(reasoning=True, script=Script(text="42")))
    assert own.deltas[0].channel == "reasoning"
    assert own.text == "42"


def test_an_empty_script_is_one_empty_delta_with_a_finish_reason() -> None:
    plan = Planner().plan(request(script=Script(text="")))
    assert plan.tokens == []
    assert plan.finish_reason == "stop"


def test_long_runs_of_one_character_are_streamed_whole() -> None:
    # A plan keeps its tokens' lengths, a byte each: the tokenizer cuts long pieces.
    text = "Rule: " + "-" * 300 + " end." + " " * 400 + "x" + "é" * 700
    plan = Planner().plan(request(script=Script(text=text)))
    assert max(map(len, plan.tokens)) <= 8
    assert "".join(d.text for d in plan.deltas) == text
    assert len(plan.deltas) == plan.total == plan.token_count


def test_a_plan_is_read_a_delta_at_a_time_and_read_again_the_same() -> None:
    plan = Planner(seed=1).plan(request(max_tokens=20, logprobs=2))
    reader = iter(plan)
    first = next(reader)
    assert first.logprob is not None and len(first.top_logprobs) == 2
    rest = list(reader)
    assert [first, *rest] == plan.deltas
    assert len(rest) == plan.total - 1 == 19
    assert rest[-1].finish_reason == "length"
