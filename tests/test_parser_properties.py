"""Property tests of the parameter parser: whatever a user types after ``--set name=`` (or puts in a
profile), for any parameter of any schema, either parses to a valid value, which checks as valid
again and unchanged, or fails with a one-line ParameterError that starts with the parameter's name."""
from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advbook.book.schemas import SCHEMAS, ParameterError

NAMES = sorted((experiment, name) for experiment, schema in SCHEMAS.items() for name in schema)
SPECIAL = ["nan", "NaN", "inf", "-inf", "+inf", "1e999", "-1e999", "1/0", "0/0", "1e308/1e-308", "8/255", "1/2/3",
           "8/", "/255", "", " ", ",", ",,", "true", "False", "yes", "no", "1", "0", "-0", "1_000", "0x10", "1e3",
           "١٢", "None", "[1, 2]", "pgd,pgd", "\n", "a\nb", "\u2028", "\x00", "é"]
NUMBERS = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.tuples(st.integers(-300, 300), st.integers(-300, 300)).map(lambda t: f"{t[0]}/{t[1]}"),
)
RELAXED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def texts_for(param) -> st.SearchStrategy[str]:
    """Text a user might type for ``param``: its choices, numbers near and beyond its range, lists
    of them, special values and arbitrary unicode."""
    choices = list(param.valid_choices() or ())
    bounds = [str(b) for b in (param.low, param.high) if b is not None]
    item = st.one_of(st.sampled_from(SPECIAL + bounds + choices), NUMBERS, st.text(max_size=12))
    return st.one_of(item, st.lists(item, max_size=4).map(",".join), st.text())


def assert_one_line_naming(message: str, name: str) -> None:
    assert message.startswith(f"{name}="), message
    assert len(message.splitlines()) == 1 and message == message.strip(), repr(message)


def assert_valid(param, name: str, value) -> None:
    again = param.check(name, value)
    assert again == value and type(again) is type(value)
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, float):
            assert math.isfinite(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and param.low is not None:
            assert param.low <= v <= param.high


@RELAXED
@given(data=st.data())
def test_any_text_parses_to_a_valid_value_or_fails_in_one_line_naming_the_parameter(data):
    experiment, name = data.draw(st.sampled_from(NAMES), label="parameter")
    param = SCHEMAS[experiment][name]
    text = data.draw(texts_for(param), label="text")
    try:
        value = param.check(name, text)
    except ParameterError as exc:
        assert_one_line_naming(str(exc), name)
    else:
        assert_valid(param, name, value)


VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                   st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=8)), max_size=3))


@RELAXED
@given(data=st.data())
def test_any_value_from_a_profile_or_a_notebook_is_valid_or_fails_in_one_line(data):
    experiment, name = data.draw(st.sampled_from(NAMES), label="parameter")
    param = SCHEMAS[experiment][name]
    value = data.draw(VALUES, label="value")
    try:
        checked = param.check(name, value)
    except ParameterError as exc:
        assert_one_line_naming(str(exc), name)
    else:
        assert_valid(param, name, checked)
