"""The mock server's schema-driven values: valid for the schemas pydantic and the openai SDK emit."""

from __future__ import annotations

import datetime
import enum
import uuid
from typing import Annotated, Any, Literal

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib._pydantic import to_strict_json_schema

from store_fs.testing._mock_schema import example_value
from store_fs.testing.mock_openai import judge_score


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(pydantic.BaseModel):
    street: str
    number: Annotated[int, pydantic.Field(ge=3, le=5)]


class Person(pydantic.BaseModel):
    name: Annotated[str, pydantic.Field(min_length=40, max_length=50)]
    code: Annotated[str, pydantic.Field(max_length=2)]
    age: Annotated[int, pydantic.Field(gt=200)]
    ratio: Annotated[float, pydantic.Field(lt=0)]
    colour: Colour
    kind: Literal["a", "b"]
    fixed: Literal["only"]
    home: Address
    others: list[Address]
    tags: Annotated[list[str], pydantic.Field(min_length=2, max_length=3)]
    nickname: str | None
    maybe: Address | None = None
    born: datetime.datetime
    day: datetime.date
    ident: uuid.UUID
    union: int | str
    extra: dict[str, int]


class Tree(pydantic.BaseModel):
    label: str
    children: list[Tree]
    parent: Tree | None


MODELS: list[type[pydantic.BaseModel]] = [Address, Person, Tree]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("strict", [False, True])
@settings(max_examples=30, deadline=None)
@given(text=st.text(max_size=30))
def test_values_validate(model: type[pydantic.BaseModel], strict: bool, text: str) -> None:
    schema = to_strict_json_schema(model) if strict else model.model_json_schema()
    value = example_value(schema, text)
    model.model_validate(value)
    assert example_value(schema, text) == value  # deterministic


def test_values_follow_the_text() -> None:
    value = example_value(Person.model_json_schema(), "hello")
    assert value["home"]["street"] == "hello"
    assert value["nickname"] == "hello"  # an optional value is filled when the schema allows a value
    assert value["others"] == [value["home"]]
    assert (value["colour"], value["kind"], value["fixed"]) == ("red", "a", "only")
    assert value["code"] == "he"
    assert value["name"].startswith("hello")
    assert value["age"] > 200
    assert value["ratio"] < 0
    # Numbers and booleans come from the text's score, or from the text itself when it is one.
    score = judge_score("hello")
    assert example_value({"type": "number"}, "hello") == score
    assert example_value({"type": "number"}, "0.25") == 0.25
    assert example_value({"type": "integer"}, "0.25") == 25
    assert example_value({"type": "boolean"}, "0.75") is True
    assert example_value({"type": ["null", "string"]}, "x") == "x"
    assert example_value({"type": "array", "items": {"type": "string"}, "maxItems": 0}, "x") == []
    assert example_value({"$ref": "#/$defs/missing"}, "x") == "x"  # an unresolved ref is "anything"


def test_recursive_schemas_terminate() -> None:
    value: Any = example_value(Tree.model_json_schema(), "t")
    depth = 0
    while value["children"]:
        value = value["children"][0]
        depth += 1
    assert 0 < depth < 10
