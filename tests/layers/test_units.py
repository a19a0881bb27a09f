"""Sizes and durations written by people (layers/units.py): the one parser of each."""

from __future__ import annotations

import pytest

from mapstream.layers.errors import BadInputError
from mapstream.layers.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("150ms", 0.15), ("0.2s", 0.2), ("2", 2.0), (" 1.5 s ", 1.5), (".5", 0.5), ("0", 0.0),
        (0.25, 0.25), (3, 3.0),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["soon", "", "-1s", "1h", "1.2.3s", "ms", -0.5, float("inf"), float("nan")]
)
def test_a_bad_duration_is_bad_input_and_a_value_error(text):
    with pytest.raises(BadInputError) as info:
        parse_duration(text)
    assert isinstance(info.value, ValueError)  # the CLI's option types turn it into a usage error


def test_the_demo_and_the_cli_share_one_parser():
    from mapstream.app.cli.params import DURATION
    from mapstream.demo import services

    assert services.parse_duration is parse_duration
    assert DURATION.convert("150ms", None, None) == parse_duration("150ms")


@pytest.mark.parametrize("text", ["lots", "-5M", "5X", "1.2.3G", ""])
def test_a_bad_size_names_the_setting(text):
    with pytest.raises(BadInputError, match=r"^--prune=.* is not a size"):
        parse_size(text, name="--prune")
