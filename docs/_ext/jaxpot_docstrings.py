"""Griffe extension used by the docs build (mkdocs.yml): adapt jaxpot's docstrings to Markdown.

jaxpot's docstrings follow STYLE.md §7: Google style with an ``Example:`` section of doctests,
and Sphinx-style roles such as :class:`~jaxpot.System`. Griffe treats ``Example:`` (singular) as
an admonition and shows roles verbatim, so this extension, for every object:

* renames a section header ``Example:`` to ``Examples:`` (doctests render as code), and
* turns ``:role:`~a.b.C``` into a code span ```C``` (```a.b.C``` without the tilde).
"""

from __future__ import annotations

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|py:\w+):`(~?)([^`]+)`")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class JaxpotDocstrings(griffe.Extension):
    """Rewrite ``Example:`` headers and Sphinx roles in every loaded docstring."""

    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            text = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_role, text)
