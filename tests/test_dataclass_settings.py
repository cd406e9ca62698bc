"""Settings dataclasses checked without pydantic (``stamen.dataclass_settings``): the same
declaration is enforced on its own and where pydantic validates it as a section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from stamen.client import PipelineSettings
from stamen.dataclass_settings import DataclassSettings
from stamen.errors import ConfigError
from stamen.models.mf.settings import LocalSettings


@dataclass(frozen=True)
class Example(DataclassSettings):
    count: int = field(default=3, metadata={"ge": 1, "description": "how many"})
    rate: float = field(default=0.5, metadata={"gt": 0, "le": 1})
    mode: Literal["a", "b"] = "a"
    name: str = "x"
    flag: bool = False
    cap: int | None = field(default=None, metadata={"ge": 1})
    table: dict[str, float] = field(default_factory=dict, metadata={"ge": 0})


class Holder(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    example: Example = Example()


def test_values_are_converted_as_declared() -> None:
    settings = Example(count=np.int64(4), rate=1, cap=2.0, table={"k": np.float32(2)})
    assert (settings.count, type(settings.count)) == (4, int)
    assert (settings.rate, type(settings.rate)) == (1.0, float)
    assert (settings.cap, type(settings.cap)) == (2, int)
    assert settings.table == {"k": 2.0} and type(settings.table["k"]) is float


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        Example(count=0, rate=float("nan"), mode="c", name=3, flag=1, cap=0.5, table={"k": -1})
    message = str(raised.value)
    for expected in (
        "count: must be >= 1 (got 0)",
        "rate: must be a number, not NaN",
        "mode: must be one of ['a', 'b'] (got 'c')",
        "name: must be a string (got 3)",
        "flag: must be true or false (got 1)",
        "cap: must be an integer (got 0.5)",
        "table: must be >= 0",
    ):
        assert expected in message
    with pytest.raises(ConfigError, match="count: must be an integer"):
        Example(count=True)


def test_validate_dump_and_copy() -> None:
    settings = Example.model_validate({"count": 5})
    assert Example.model_validate(settings) is settings
    assert settings.model_dump(include={"count", "mode"}) == {"count": 5, "mode": "a"}
    assert settings.model_copy(update={"rate": 1}).rate == 1.0
    with pytest.raises(ConfigError, match=r"unknown settings \['coutn'\]"):
        Example.model_validate({"coutn": 5})
    with pytest.raises(ConfigError, match="count: must be >= 1"):
        settings.model_copy(update={"count": 0})
    with pytest.raises(ConfigError, match="takes a mapping"):
        Example.model_validate([("count", 5)])
    fields = Example.model_fields
    assert list(fields) == ["count", "rate", "mode", "name", "flag", "cap", "table"]
    assert (fields["count"].default, fields["count"].description) == (3, "how many")
    assert fields["mode"].annotation == Literal["a", "b"] and fields["table"].default == {}


def test_pydantic_enforces_the_same_declaration_in_a_section() -> None:
    assert Holder.model_validate({"example": {"count": 2}}).example == Example(count=2)
    with pytest.raises(ValidationError) as raised:
        Holder.model_validate({"example": {"count": 0, "rate": 2, "spelt": 1}})
    where = {error["loc"] for error in raised.value.errors()}
    assert where == {("example", "count"), ("example", "rate"), ("example", "spelt")}
    assert Holder().model_dump()["example"]["count"] == 3


def test_the_serving_settings_are_dataclass_settings() -> None:
    assert isinstance(LocalSettings(), DataclassSettings)
    assert isinstance(PipelineSettings(), DataclassSettings)
    with pytest.raises(ConfigError, match=r"budgets: unknown candidate generators \['cff'\]"):
        PipelineSettings(budgets={"cff": 10})
    with pytest.raises(ConfigError, match="dim: must be > 0"):
        LocalSettings(dim=0)
