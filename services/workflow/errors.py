"""The workflow service's errors: each names what is wrong, by path, so callers can show it."""

from __future__ import annotations

from collections.abc import Iterable

Problem = tuple[str, str]
"""One problem: (JSON path of the offending value, what is wrong with it)."""


class WorkflowError(Exception):
    """Base of every error the workflow engine raises on purpose."""


class ProblemsError(WorkflowError, ValueError):
    """A document was refused; ``problems`` lists every (path, message) found, not just the first."""

    what = "document"

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        listed = "; ".join(f"{path}: {message}" for path, message in self.problems)
        super().__init__(f"invalid {self.what}: {listed}")

    def to_json(self) -> dict[str, object]:
        """The body of a 400 answer: an error line and the problems by path."""
        return {
            "error": f"invalid {self.what}",
            "problems": [{"path": path, "message": message} for path, message in self.problems],
        }


class DefinitionError(ProblemsError):
    """A workflow or schema definition was refused."""

    what = "definition"


class InputValidationError(ProblemsError):
    """An execution's input does not match the workflow's input schema (nothing was started)."""

    what = "input"


class OutputValidationError(ProblemsError):
    """An execution's output does not match the workflow's output schema."""

    what = "output"


class ExpressionError(WorkflowError, ValueError):
    """A JSONPath, template or condition is malformed or cannot be evaluated.

    Attributes:
        problems: (where, message) of each malformed part, when the error lists several.
        paths: (where, JSONPath) of the well-formed paths of a mapping, still checked by the
            caller so that one answer names every problem.
    """

    def __init__(
        self, message: str, *, problems: list[tuple[str, str]] | None = None, paths: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.problems = problems or []
        self.paths = paths or []


class UnknownWorkflowError(WorkflowError, LookupError):
    """No workflow (or no such version of it) is registered."""

    def __init__(self, workflow_id: str, version: int | None = None) -> None:
        which = f"{workflow_id!r}" if version is None else f"{workflow_id!r} version {version}"
        super().__init__(f"workflow {which} is not registered")
        self.workflow_id = workflow_id
        self.version = version


class InactiveWorkflowError(WorkflowError):
    """The workflow is registered with ``active: false``; it cannot be started."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id!r} is not active")
        self.workflow_id = workflow_id


class UnknownSchemaError(WorkflowError, LookupError):
    """No schema with this id is registered."""

    def __init__(self, schema_id: str) -> None:
        super().__init__(f"schema {schema_id!r} is not registered")
        self.schema_id = schema_id


class UnknownExecutionError(WorkflowError, LookupError):
    """No execution with this id exists."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"execution {execution_id!r} does not exist")
        self.execution_id = execution_id
