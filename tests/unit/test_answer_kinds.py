"""Votes by answer kind: JSON in canonical form against a schema, tool calls by the
hierarchical vote, free text by Universal Self-Consistency's selection call."""

from __future__ import annotations

import pytest

from strategies.protocol import ToolCall
from strategies.shared.answer_kinds import (
    JsonAnswers,
    Response,
    number_key,
    parse_usc_choice,
    usc_messages,
    vote,
    vote_tool_calls,
)

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def said(*texts: str) -> list[Response]:
    return [Response(t) for t in texts]


def calls(*pairs: tuple[str, str]) -> Response:
    return Response("", tuple(ToolCall(name=name, arguments=args) for name, args in pairs))


def test_json_answers_vote_in_canonical_form_and_invalid_ones_do_not_vote() -> None:
    kind = JsonAnswers(PERSON)
    verdict = vote(
        said(
            '{"name": "Ada", "age": -3}',  # against the schema
            "Ada is 36.",  # not JSON
            '{"age": 36, "name": "Ada"}',
            '```json\n{"name":"Ada","age":36}\n```',  # fenced, other key order
            '{"name": "Bob", "age": 40}',
        ),
        kind.key,
    )
    assert verdict.index == 2
    assert verdict.key == '{"age":36,"name":"Ada"}'
    assert verdict.levels[0].counts == {'{"age":36,"name":"Ada"}': 2, '{"age":40,"name":"Bob"}': 1}


def test_a_json_problem_names_where_it_is() -> None:
    kind = JsonAnswers(PERSON)
    assert kind.problem('{"name": "Ada", "age": 36}') is None
    assert kind.problem('{"name": "Ada", "age": -3}') == "age: -3 is less than the minimum of 0"
    problem = kind.problem("Ada is 36.")
    assert problem is not None and problem.startswith("not JSON")
    assert JsonAnswers().key("[1, 2]") == "[1,2]"  # json_object mode: any JSON value


def test_an_invalid_schema_is_refused_with_its_reason() -> None:
    with pytest.raises(ValueError, match="invalid JSON schema"):
        JsonAnswers({"type": "objekt"})


def test_tool_calls_vote_first_on_acting_then_function_then_arguments() -> None:
    responses = [
        calls(("get_weather", '{"city": "Paris", "unit": "C"}')),
        Response("It is sunny."),
        calls(("get_weather", '{"unit":"C","city":"Paris"}')),  # same call, other spelling
        calls(("get_weather", '{"city": "Lyon", "unit": "C"}')),
        calls(("get_time", '{"city": "Paris"}')),
    ]
    verdict = vote_tool_calls(responses)
    assert verdict.index == 0
    assert [level.name for level in verdict.levels] == ["call_or_answer", "functions", "arguments"]
    assert verdict.levels[0].counts == {"call": 4, "answer": 1}
    assert verdict.levels[1].counts == {"get_weather": 3, "get_time": 1}
    assert verdict.levels[2].chosen == 'get_weather({"city":"Paris","unit":"C"})'
    assert verdict.levels[2].counts[verdict.levels[2].chosen] == 2


def test_answering_wins_when_most_responses_answer() -> None:
    responses = [Response("Paris."), calls(("search", '{"q": "capital"}')), Response("paris")]
    verdict = vote_tool_calls(responses)
    assert verdict.index == 0 and verdict.key == "paris"
    assert verdict.levels[0].counts == {"answer": 2, "call": 1}


def test_excluded_arguments_and_call_order_do_not_split_the_vote() -> None:
    responses = [
        calls(("a", '{"x": 1, "request_id": "r1"}'), ("b", "{}")),
        calls(("b", "{}"), ("a", '{"x": 1, "request_id": "r2"}')),
        calls(("a", '{"x": 2, "request_id": "r3"}'), ("b", "{}")),
    ]
    verdict = vote_tool_calls(responses, exclude_args=["request_id"])
    assert verdict.index == 0
    assert verdict.levels[1].counts == {"a,b": 3}
    assert verdict.levels[2].counts[verdict.levels[2].chosen] == 2


def test_calls_that_cannot_be_executed_never_win() -> None:
    responses = [
        calls(("add", '{"x": 1')),  # truncated JSON
        calls(("add", "[1, 2]")),  # not an object
        calls(("add", '{"x": 1}')),
    ]
    verdict = vote_tool_calls(responses)
    assert verdict.index == 2
    assert verdict.levels[0].counts == {"call": 1}
    assert vote_tool_calls([calls(("add", "nope"))]).index is None


def test_number_answers_vote_as_before() -> None:
    verdict = vote(said("The answer is 18.", "#### 18.00", "It is 17."), number_key)
    assert verdict.index == 0 and verdict.key == "18"


def test_usc_names_a_response_in_range_or_none() -> None:
    (message,) = usc_messages("Name a fruit.", ["An apple.", "Apple", "A pear."])
    assert "Response 2:\nA pear." in message["content"]
    assert message["content"].startswith("I have generated the following responses")
    assert parse_usc_choice("The most consistent response is Response 1.", 3) == 1
    assert parse_usc_choice("The most consistent response is **Response 0**", 3) == 0
    assert parse_usc_choice("The most consistent response is Response 7", 3) is None
    assert parse_usc_choice("They all agree.", 3) is None
