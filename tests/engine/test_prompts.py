"""Prompt templates are parsed, never formatted: exactly one ``{}`` slot, no other brace."""

from __future__ import annotations

import pytest

from app.engine.prompts import (
    TemplateError,
    is_path_hostile,
    render_prompt,
    split_template,
    validate_labels,
    validate_templates,
)
from app.errors import InvalidInput


@pytest.mark.parametrize(
    ("template", "parts"),
    [("a photo of a {}.", ("a photo of a ", ".")), ("{}", ("", "")), ("{} and more", ("", " and more"))],
)
def test_one_slot_templates_split(template: str, parts: tuple[str, str]) -> None:
    assert split_template(template) == parts


@pytest.mark.parametrize(
    "template",
    [
        "{{}}{0:x>20000000}",
        "{}{}",
        "{0.__class__}{}",
        "{0}",
        "{label}",
        "no slot",
        "{} }",
        "{{}}",
        "{ }",
        "}{}",
    ],
)
def test_anything_else_is_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        split_template(template)
    with pytest.raises(InvalidInput) as err:
        validate_templates([template], [])
    assert isinstance(err.value, InvalidInput) and len(err.value.message) < 200


def test_labels_are_spliced_in_verbatim() -> None:
    assert render_prompt("a photo of a {}.", "{0.__class__} {}") == "a photo of a {0.__class__} {}."


@pytest.mark.parametrize("label", ["../../victim", "..", ".", "a/b", "a\\b", "..."])
def test_path_hostile_labels_are_refused(label: str) -> None:
    assert is_path_hostile(label)
    with pytest.raises(InvalidInput) as err:
        validate_labels(["cat", label], max_count=10, max_length=200)
    assert isinstance(err.value, InvalidInput)


def test_ordinary_labels_pass_and_case_duplicates_do_not() -> None:
    assert validate_labels(
        [" a cat ", "cat?x", "t-shirt", "1.5 litre bottle"], max_count=10, max_length=200
    ) == [
        "a cat",
        "cat?x",
        "t-shirt",
        "1.5 litre bottle",
    ]
    with pytest.raises(InvalidInput) as err:
        validate_labels(["Cat", "cat"], max_count=10, max_length=200)
    assert err.value.code == "duplicate_labels"
    with pytest.raises(InvalidInput) as err:
        validate_labels(["cat", "x" * 5_000_000], max_count=10, max_length=200)
    assert len(err.value.message) < 200
