"""The generator port: what turns a request into a content structure or an expanded text."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from nexus.services.granulator.model import ExpandRequest, ExpandResult, GranulationInput, Structure

STRATEGIES = ("template", "term_focused", "question_driven")
"""Generation strategies, in the order the validation loop tries them.

``template`` outlines from the structure type's skeleton and the topic's domain facets;
``term_focused`` binds every section to the topic's own terms; ``question_driven`` builds the
outline around the validation questions the previous attempt left unanswered.
"""


def strategy_for(attempt: int) -> str:
    """The strategy of the ``attempt``-th generation (1-based): each retry tries another one."""
    return STRATEGIES[(attempt - 1) % len(STRATEGIES)]


@dataclass(frozen=True)
class OutlineRequest:
    """One generation attempt."""

    input: GranulationInput
    """The validated input; ``depth`` is a name (``brief`` … ``comprehensive``)."""
    strategy: str = "template"
    attempt: int = 1
    hints: tuple[str, ...] = ()
    """Questions the structure should answer (those the previous attempt missed)."""


class Generator(abc.ABC):
    """Produces structures and expansions.

    Raises (from every method):
        GeneratorUnavailableError: a transient failure; the caller may retry.
        GeneratorOutputError: the output is not valid; retrying the same call will not help.
    """

    name: str = ""

    @abc.abstractmethod
    async def outline(self, request: OutlineRequest) -> Structure:
        """Generate a content structure."""

    @abc.abstractmethod
    async def expand(self, request: ExpandRequest) -> ExpandResult:
        """Expand a text as the prompt asks."""

    async def close(self) -> None:  # noqa: B027 - most generators hold nothing to release
        """Release connections."""
