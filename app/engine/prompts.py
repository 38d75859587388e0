"""Prompt templates: a template is text with exactly one ``{}`` slot for the label and no other brace.
Parsed by hand and rendered by splicing, never with ``str.format`` on user text (a format spec such as
``{0:x>20000000}`` would allocate on demand, ``{0.__class__}`` would reach attributes)."""

from __future__ import annotations

SLOT = "{}"


class TemplateError(ValueError):
    """A template that is not text with exactly one ``{}`` slot."""


def split_template(template: str) -> tuple[str, str]:
    """``(prefix, suffix)`` around the one ``{}`` slot; ``TemplateError`` for anything else: no slot, two
    slots, a lone or escaped brace (``{{``, ``}}``), a named or numbered field or a format spec."""
    slot = template.find(SLOT)
    if slot < 0:
        raise TemplateError("needs one '{}' slot for the label")
    prefix, suffix = template[:slot], template[slot + len(SLOT) :]
    if any(brace in part for part in (prefix, suffix) for brace in "{}"):
        raise TemplateError("may hold exactly one '{}' slot and no other '{' or '}'")
    return prefix, suffix


def render_prompt(template: str, label: str) -> str:
    """The prompt for ``label`` (the template must pass ``split_template``)."""
    prefix, suffix = split_template(template)
    return f"{prefix}{label}{suffix}"
