"""Class names as prompts see them: names that normalise to the same prompt text are refused at every entry, with
one line listing the colliding groups (the catalogue covers the command line; these are the helpers)."""

from __future__ import annotations

import pytest

from rlptune.data.common import check_unique_classnames, prompt_key, read_class_list
from rlptune.errors import RlptuneError


@pytest.mark.parametrize(
    "a, b", [("red", "RED"), ("dark_blue", "Dark  Blue"), (" sea  lion", "sea_lion "), ("Straße", "STRASSE")]
)
def test_prompt_key_equates_what_prompts_cannot_tell_apart(a, b):
    assert prompt_key(a) == prompt_key(b)


def test_distinct_names_pass_and_collisions_list_every_group():
    check_unique_classnames(["red", "green", "dark blue", "blue"], "src")
    with pytest.raises(RlptuneError) as info:
        check_unique_classnames(["red", "Red", "green", "dark_blue", "dark blue", "RED"], "src")
    line = str(info.value)
    assert "\n" not in line
    assert "'red' = 'Red' = 'RED'" in line and "'dark_blue' = 'dark blue'" in line


def test_read_class_list_from_text_file_and_long_lists(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("cat\n\ndog\n")
    assert read_class_list(str(path)) == ["cat", "dog"]
    many = [f"class number {i}" for i in range(5000)]
    assert read_class_list(",".join(many)) == many  # far longer than a file name: read as a list, no OSError
    assert read_class_list("a\0b,c") == ["a\0b", "c"]  # a NUL byte cannot name a file either


@pytest.mark.parametrize(
    "value, message",
    [
        ("red,Red", "classes collide after prompt normalisation"),
        ("cat,dog,cat", "class 'cat' is listed more than once"),
        (" , ", "expected a comma-separated list"),
    ],
)
def test_read_class_list_errors_are_one_line(value, message):
    with pytest.raises(RlptuneError, match=message) as info:
        read_class_list(value)
    assert "\n" not in str(info.value)


def test_long_value_is_shortened_in_the_message():
    value = ",".join(["x"] * 3000)
    with pytest.raises(RlptuneError) as info:
        read_class_list(value)
    assert len(str(info.value)) < 200
