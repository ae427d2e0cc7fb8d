"""Rules: every match field, first match wins, templates, validation messages, reloading."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from streamapi.control.rules import Facts, RuleBook, RulesError, load_rules, parse_rules
from streamapi.engines.protocol import GenerationRequest, PromptMessage, ToolSpec


def facts(
    user: str | None = "What is the weather in Paris?",
    *,
    endpoint: str = "chat",
    model: str = "sim-small",
    system: str | None = None,
    tools: tuple[str, ...] = (),
    history: tuple[PromptMessage, ...] = (),
    after: tuple[PromptMessage, ...] = (),
    headers: dict[str, str] | None = None,
) -> Facts:
    messages = [*(() if system is None else (PromptMessage("system", system),)), *history]
    if user is not None:
        messages.append(PromptMessage("user", user))
    request = GenerationRequest(
        model=model,
        messages=(*messages, *after),
        tools=tuple(ToolSpec(name) for name in tools),
    )
    return Facts.of(endpoint, request, headers or {})


def book(*rules: dict[str, Any]) -> RuleBook:
    rule_book = RuleBook(None)
    rule_book.replace(parse_rules(list(rules), source="test"))
    return rule_book


def matched_name(rule_book: RuleBook, request_facts: Facts) -> str | None:
    matched = rule_book.match(request_facts)
    return None if matched is None else matched.rule.name


TOOL_TURN = (
    PromptMessage("user", "weather?"),
    PromptMessage("assistant", 'get_weather({"location": "Paris"})'),
)


@pytest.mark.parametrize(
    ("match", "hit", "miss"),
    [
        ({"endpoint": "messages"}, facts(endpoint="messages"), facts(endpoint="chat")),
        (
            {"endpoint": ["chat", "responses"]},
            facts(endpoint="responses"),
            facts(endpoint="completions"),
        ),
        ({"model": "gpt-4o"}, facts(model="gpt-4o"), facts(model="gpt-4o-mini")),
        ({"model": {"regex": "^gpt-"}}, facts(model="gpt-4o-mini"), facts(model="sim-small")),
        ({"user": "weather"}, facts("the weather today"), facts("the climate")),
        ({"user": {"equals": "hi"}}, facts("hi"), facts("hi there")),
        ({"user": {"regex": "(?i)^WEATHER"}}, facts("weather now"), facts("the weather")),
        ({"user": "x"}, facts("x"), facts(None)),
        ({"system": "pirate"}, facts(system="Talk like a pirate."), facts(system="Be brief.")),
        ({"tools": True}, facts(tools=("a",)), facts()),
        ({"tools": False}, facts(), facts(tools=("a",))),
        ({"tool_name": "get_weather"}, facts(tools=("get_weather",)), facts(tools=("get_time",))),
        (
            {"tool_result": "22"},
            facts(None, history=TOOL_TURN, after=(PromptMessage("tool", "22 C"),)),
            facts("new question", history=(*TOOL_TURN, PromptMessage("tool", "22 C"))),
        ),
        (
            {"headers": {"X-Test-Case": "checkout"}},
            facts(headers={"x-test-case": "checkout"}),
            facts(headers={"x-test-case": "checkout-2"}),
        ),
        ({"turn": 0}, facts(), facts(history=TOOL_TURN)),
        ({"turn": 1}, facts(history=TOOL_TURN), facts()),
    ],
)
def test_each_match_field(match: dict[str, Any], hit: Facts, miss: Facts) -> None:
    rules = book({"name": "r", "match": match})
    assert matched_name(rules, hit) == "r"
    assert matched_name(rules, miss) is None


def test_every_condition_must_hold() -> None:
    rules = book({"name": "r", "match": {"user": "weather", "endpoint": "chat", "tools": False}})
    assert matched_name(rules, facts()) == "r"
    assert matched_name(rules, facts(endpoint="messages")) is None
    assert matched_name(rules, facts(tools=("a",))) is None


def test_first_match_wins_and_no_match_is_none() -> None:
    rules = book(
        {"name": "first", "match": {"user": "weather"}},
        {"name": "second", "match": {"user": "Paris"}},
        {"name": "third"},
    )
    assert matched_name(rules, facts()) == "first"
    assert matched_name(rules, facts("Paris")) == "second"
    assert matched_name(rules, facts("anything")) == "third"
    assert matched_name(book({"match": {"user": "x"}}), facts("y")) is None


def test_sequence_counts_the_requests_that_meet_the_other_conditions() -> None:
    rules = book(
        {"name": "fail twice", "match": {"user": "flaky", "sequence": [1, 2]}},
        {"name": "fourth", "match": {"user": "flaky", "sequence": 4}},
        {"name": "otherwise", "match": {"user": "flaky"}},
    )
    names = [matched_name(rules, facts("flaky")) for _ in range(5)]
    assert names == ["fail twice", "fail twice", "otherwise", "fourth", "otherwise"]
    assert matched_name(rules, facts("steady")) is None
    rules.replace(rules.rules())
    assert matched_name(rules, facts("flaky")) == "fail twice"


def test_templates_fill_in_the_request() -> None:
    rules = book(
        {
            "name": "t",
            "match": {"user": {"regex": r"weather in (?P<city>\w+)"}},
            "respond": {
                "template": "{{match.city}}/{{ match.1 }}: {{user}} | {{model}} {{endpoint}} "
                "turn {{turn}} #{{sequence}} [{{header.x-trace}}] [{{system}}] [{{tool_result}}]"
            },
        }
    )
    matched = rules.match(facts(headers={"x-trace": "abc"}))
    assert matched is not None
    script = matched.script()
    assert script is not None
    assert script.text == (
        "Paris/Paris: What is the weather in Paris? | sim-small chat turn 0 #1 [abc] [] []"
    )


def test_tool_calls_and_json_answers_are_templated_too() -> None:
    rules = book(
        {
            "match": {"user": {"regex": r"in (\w+)"}},
            "respond": {
                "text": "{{not a template}}",
                "tool_calls": [
                    {"name": "get_weather", "arguments": {"city": "{{match.1}}", "days": [1]}},
                    {"name": "raw", "arguments": '{"broken": ', "id": "call_x"},
                ],
            },
        },
        {"match": {"user": "json"}, "respond": {"json": {"asked": "{{user}}", "n": 1.5}}},
    )
    first = rules.match(facts())
    assert first is not None
    script = first.script()
    assert script is not None
    assert script.text == "{{not a template}}"
    assert [(c.name, c.arguments, c.id) for c in script.tool_calls] == [
        ("get_weather", '{"city": "Paris", "days": [1]}', None),
        ("raw", '{"broken": ', "call_x"),
    ]
    second = rules.match(facts("json please"))
    assert second is not None
    scripted = second.script()
    assert scripted is not None
    assert json.loads(scripted.text) == {"asked": "json please", "n": 1.5}


def test_a_rule_without_words_leaves_them_to_the_engine() -> None:
    rules = book({"respond": {"fault": "drop,after=3"}, "timing": {"tokens_per_s": 50}})
    matched = rules.match(facts())
    assert matched is not None
    assert matched.script() is None
    assert matched.label == "#1"
    timing = matched.rule.timing
    assert timing is not None
    assert timing.inter_token_ms == 20


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"match": {"usr": "x"}}], "rule 1: match.usr: unknown field"),
        ([{"name": "w", "match": {"endpoint": "chats"}}], "rule 1 ('w'): match.endpoint[0]: "),
        ([{}, {"match": {"user": {"regex": "("}}}], "rule 2: match.user: invalid regular"),
        ([{"match": {"user": {"regex": "a", "contains": "b"}}}], "give exactly one of contains"),
        ([{"match": {"user": 5}}], "rule 1: match.user: Input should be a valid dictionary"),
        ([{"match": {"turn": -1}}], "rule 1: match.turn: Input should be greater than or equal"),
        ([{"match": {"sequence": [0]}}], "rule 1: match.sequence[0]: Input should be greater"),
        ([{"respond": {"text": "a", "json": {}}}], "give one of text, template or json"),
        ([{"respond": {"error": {"status": 200}}}], "respond.error.status: Input should be"),
        (
            [{"respond": {"error": {"status": 500}, "text": "a"}}],
            "error answers instead of the model; it excludes text",
        ),
        ([{"respond": {"fault": "explode"}}], "respond.fault: unknown fault 'explode'"),
        (
            [{"respond": {"fault": "status=429", "text": "a"}}],
            "fault 'status=429' answers before the stream; it excludes text",
        ),
        (
            [{"respond": {"tool_calls": [{"arguments": {}}]}}],
            "rule 1: respond.tool_calls[0].name: Field required",
        ),
        (
            [{"respond": {"tool_calls": [{"name": "f", "arguments": 3}]}}],
            "respond.tool_calls[0].arguments: must be an object, or a string",
        ),
        ([{"timing": {"itl_ms": 1, "tokens_per_s": 5}}], "give itl_ms or tokens_per_s, not both"),
        ([{"timing": {}}], "give at least one of ttft_ms"),
        (
            [{"name": "t", "respond": {"template": "{{usr}}"}}],
            "rule 1 ('t'): respond.template: {{usr}} is not a variable; the variables are",
        ),
        ([{"respond": {"template": "{{match.1}}"}}], "needs match.user to be a regex"),
        (
            [{"match": {"user": {"regex": "(a)"}}, "respond": {"template": "{{match.2}}"}}],
            "names a group that match.user's regex does not have",
        ),
        (
            [{"respond": {"tool_calls": [{"name": "f", "arguments": {"a": ["{{x}}"]}}]}}],
            "respond.tool_calls[0].arguments: {{x}} is not a variable",
        ),
        ({"rules": {}}, "rules: Input should be a valid list"),
        ({"rule": []}, "rule: unknown field"),
    ],
)
def test_invalid_rules_name_the_rule_and_the_field(rules: Any, message: str) -> None:
    with pytest.raises(RulesError) as raised:
        parse_rules(rules, source="rules.yaml")
    assert str(raised.value).startswith("rules.yaml: ")
    assert message in str(raised.value)


def test_several_problems_are_listed_together() -> None:
    with pytest.raises(RulesError) as raised:
        parse_rules([{"match": {"usr": 1}}, {"timing": {}}], source="f")
    assert str(raised.value).startswith("f: 2 problems:\n  rule 1: match.usr: unknown field\n")


# --- files ------------------------------------------------------------------------------------

YAML = """\
rules:
  - name: greeting
    match: {user: hello}
    respond: {text: "Hi!"}
"""


def test_files_load_as_yaml_or_json(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(YAML)
    (tmp_path / "rules.json").write_text(json.dumps([{"name": "j"}]))
    (tmp_path / "empty.yml").write_text("")
    assert [r.name for r in load_rules(tmp_path / "rules.yaml")] == ["greeting"]
    assert [r.name for r in load_rules(tmp_path / "rules.json")] == ["j"]
    assert load_rules(tmp_path / "empty.yml") == []


def test_unreadable_files_say_why(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read it"):
        load_rules(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("rules: [\n")
    with pytest.raises(RulesError, match=r"bad\.yaml: not valid YAML"):
        load_rules(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RulesError, match=r"bad\.json: not valid JSON"):
        load_rules(tmp_path / "bad.json")


def touch_later(path: Path, text: str) -> None:
    """Write ``text`` with a modification time surely different from the last one."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_the_file_is_reloaded_when_it_changes_and_a_bad_change_keeps_the_old(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(YAML)
    rules = RuleBook(path)
    assert matched_name(rules, facts("hello")) == "greeting"
    touch_later(path, YAML.replace("greeting", "renamed"))
    assert matched_name(rules, facts("hello")) == "renamed"
    touch_later(path, "rules: [{match: {usr: 1}}]")
    assert matched_name(rules, facts("hello")) == "renamed"
    assert rules.error is not None
    assert "rule 1: match.usr: unknown field" in rules.error
    touch_later(path, YAML)
    assert matched_name(rules, facts("hello")) == "greeting"
    assert rules.error is None


def test_rules_set_at_runtime_win_until_reverted(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(YAML)
    rules = RuleBook(path)
    rules.replace(parse_rules([{"name": "admin"}], source="admin"))
    assert (rules.source, matched_name(rules, facts("hello"))) == ("admin", "admin")
    rules.revert()
    assert (rules.source, matched_name(rules, facts("hello"))) == ("file", "greeting")


def test_an_invalid_file_at_start_up_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("- {match: {turn: x}}")
    with pytest.raises(RulesError, match=r"rule 1: match\.turn"):
        RuleBook(path)
