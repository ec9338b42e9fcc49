"""Workflow and schema definitions, versioned, recorded as events and folded back from the log.

A registration appends ``nexus.workflow.definition.registered`` to stream ``workflow-<id>``
(``nexus.workflow.schema.registered`` to ``schema-<id>``) with the stream's version as
``expected_version``, so two replicas registering at once get distinct versions. Every replica
folds those events (at start, then from the log's tail) into the same registry.

Definitions live in namespaces: the platform's (bundled, read-only to clients; streams
``workflow-<id>``) and one per client (streams ``workflow-<client>.<id>``; ids have no dots). A
client sees its own and the platform's, its own first; it cannot register an id the platform
has, so a name always means the same definition to everyone who can see it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nexus.eventlog import ConcurrencyError, EventLog
from nexus.proto import PLATFORM_TENANT, CloudEvent, new_event
from nexus.proto.events.workflow import SchemaRegistered, WorkflowRegistered
from nexus.services.workflow.definitions import (
    SchemaDefinition,
    WorkflowDefinition,
    load_document,
    parse_schema,
    parse_workflow,
)
from nexus.services.workflow.errors import DefinitionError

__all__ = ["REGISTRATION_TYPES", "WorkflowRegistry"]

logger = logging.getLogger("nexus.workflow.registry")

WORKFLOW_REGISTERED = "nexus.workflow.definition.registered"
SCHEMA_REGISTERED = "nexus.workflow.schema.registered"
REGISTRATION_TYPES = (WORKFLOW_REGISTERED, SCHEMA_REGISTERED)
SOURCE = "nexus/workflow"


def _canonical(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)


def _stream(kind: str, tenant: str, item_id: str) -> str:
    # The platform's streams keep the names they had before namespaces existed.
    return f"{kind}-{item_id}" if tenant == PLATFORM_TENANT else f"{kind}-{tenant}.{item_id}"


Key = tuple[str, str]
"""(tenant, id) of a definition."""


class WorkflowRegistry:
    """The registry of workflows and schemas (implements ``context.Registry``).

    Args:
        log: Where registrations are recorded.
        services: Names ``api_call`` steps may use (a definition naming another is refused).
    """

    def __init__(self, log: EventLog, services: Mapping[str, str] | Callable[[str], bool]) -> None:
        self.log = log
        self._known_service = services if callable(services) else (lambda name: name in services)
        self._workflows: dict[Key, list[WorkflowDefinition]] = {}
        self._schemas: dict[Key, list[SchemaDefinition]] = {}

    # -- folding ----------------------------------------------------------------------------

    async def load(self) -> int:
        """Fold every registration in the log (at start); returns how many were read."""
        count = 0
        async for batch in self.log.iter_all(types=REGISTRATION_TYPES):
            for event in batch:
                self.apply(event)
                count += 1
        return count

    def apply(self, event: CloudEvent) -> None:
        """Fold one registration event (others are ignored; one already folded changes nothing)."""
        data = event.data if isinstance(event.data, dict) else {}
        tenant = str(data.get("tenant") or PLATFORM_TENANT)
        try:
            if event.type == WORKFLOW_REGISTERED:
                versions = self._workflows.setdefault((tenant, data["workflow_id"]), [])
                if data["version"] <= len(versions):
                    return
                # A definition accepted once stays valid: services and schemas are not re-checked.
                versions.append(parse_workflow(data["document"], version=data["version"], registered_at=event.time))
            elif event.type == SCHEMA_REGISTERED:
                schema_versions = self._schemas.setdefault((tenant, data["schema_id"]), [])
                if data["version"] <= len(schema_versions):
                    return
                schema_versions.append(
                    parse_schema(data["document"], version=data["version"], registered_at=event.time)
                )
        except (DefinitionError, KeyError) as exc:
            logger.error("registration event %s cannot be folded: %s", event.id, exc)

    # -- workflows --------------------------------------------------------------------------

    def _parse_workflow(self, doc: Mapping[str, Any], version: int, tenant: str) -> WorkflowDefinition:
        return parse_workflow(
            doc,
            version=version,
            known_services=self._known_service,
            known_schemas=lambda s: self.get_schema(s, tenant=tenant) is not None,
        )

    def _refuse_platform_id(self, kind: str, item_id: str, tenant: str) -> None:
        table: Mapping[Key, list[Any]] = self._workflows if kind == "workflow" else self._schemas
        if tenant != PLATFORM_TENANT and table.get((PLATFORM_TENANT, item_id)):
            raise DefinitionError(
                [("$.id", f"{kind} id {item_id!r} belongs to the platform and cannot be replaced; choose another id")]
            )

    async def register_workflow(
        self,
        document: str | bytes | Mapping[str, Any],
        *,
        source: str = "api",
        only_if_changed: bool = False,
        tenant: str = PLATFORM_TENANT,
    ) -> WorkflowDefinition:
        """Validate and record a new version of a workflow in ``tenant``'s namespace.

        Args:
            document: YAML or JSON text, or a mapping.
            source: Recorded with the event (``api``, ``command``, ``bundled:<file>``).
            only_if_changed: Return the latest version unchanged when its document is the same
                (bundled definitions at every start).
            tenant: The namespace: the registering client, or the platform.

        Raises:
            DefinitionError: every problem, by path (also: a client naming a platform workflow).
        """
        doc = load_document(document, "workflow")
        self._refuse_platform_id("workflow", str(doc.get("id")), tenant)
        for _ in range(5):
            current = self._workflows.get((tenant, str(doc.get("id"))), [])
            definition = self._parse_workflow(doc, len(current) + 1, tenant)
            if only_if_changed and current and _canonical(current[-1].document) == _canonical(definition.document):
                return current[-1]
            event = new_event(
                WORKFLOW_REGISTERED,
                WorkflowRegistered(
                    workflow_id=definition.id,
                    version=definition.version,
                    document=definition.document,
                    source=source,
                    tenant=tenant,
                ),
                source=SOURCE,
                tenant=tenant,
            )
            stream = _stream("workflow", tenant, definition.id)
            try:
                stored = await self.log.append(stream, [event], expected_version=len(current))
            except ConcurrencyError:
                # Another replica registered a version meanwhile: fold it and number ours after it.
                for earlier in await self.log.read_stream(stream, len(current) + 1):
                    self.apply(earlier)
                continue
            self.apply(stored[0])
            return self._workflows[(tenant, definition.id)][-1]
        raise DefinitionError([("$.id", "the workflow is being registered concurrently too often; try again")])

    def workflow_tenant(self, workflow_id: str, tenant: str = PLATFORM_TENANT) -> str | None:
        """The namespace ``workflow_id`` resolves to for ``tenant``: its own, else the platform's."""
        for namespace in (tenant, PLATFORM_TENANT):
            if self._workflows.get((namespace, workflow_id)):
                return namespace
        return None

    def get_workflow(
        self, workflow_id: str, version: int | None = None, *, tenant: str = PLATFORM_TENANT
    ) -> WorkflowDefinition | None:
        """The latest version (or ``version``) of ``workflow_id`` as ``tenant`` sees it: its own
        namespace first, then the platform's."""
        namespace = self.workflow_tenant(workflow_id, tenant)
        versions = self._workflows.get((namespace, workflow_id)) if namespace else None
        if not versions:
            return None
        if version is None:
            return versions[-1]
        if 1 <= version <= len(versions):
            return versions[version - 1]
        return None

    def list_workflows(self, tenant: str | None = None) -> list[WorkflowDefinition]:
        """The latest version of every workflow ``tenant`` sees (None: every namespace)."""
        return [definition for _, definition in self.workflow_entries(tenant)]

    def workflow_entries(self, tenant: str | None = None) -> list[tuple[str, WorkflowDefinition]]:
        """(namespace, latest version) of every workflow ``tenant`` sees (None: every namespace)."""
        return [
            (namespace, versions[-1])
            for (namespace, _), versions in sorted(self._workflows.items())
            if versions and (tenant is None or namespace in (tenant, PLATFORM_TENANT))
        ]

    def workflow_versions(self, workflow_id: str, *, tenant: str = PLATFORM_TENANT) -> list[WorkflowDefinition]:
        namespace = self.workflow_tenant(workflow_id, tenant)
        return list(self._workflows.get((namespace, workflow_id), ())) if namespace else []

    # -- schemas ----------------------------------------------------------------------------

    async def register_schema(
        self,
        document: str | bytes | Mapping[str, Any],
        *,
        source: str = "api",
        only_if_changed: bool = False,
        tenant: str = PLATFORM_TENANT,
    ) -> SchemaDefinition:
        """Validate and record a new version of a schema in ``tenant``'s namespace.

        Raises:
            DefinitionError: every problem, by path (also: a client naming a platform schema).
        """
        doc = load_document(document, "schema")
        self._refuse_platform_id("schema", str(doc.get("id")), tenant)
        for _ in range(5):
            current = self._schemas.get((tenant, str(doc.get("id"))), [])
            schema = parse_schema(doc, version=len(current) + 1)
            if only_if_changed and current and _canonical(current[-1].document) == _canonical(schema.document):
                return current[-1]
            event = new_event(
                SCHEMA_REGISTERED,
                SchemaRegistered(
                    schema_id=schema.id, version=schema.version, document=schema.document, source=source, tenant=tenant
                ),
                source=SOURCE,
                tenant=tenant,
            )
            stream = _stream("schema", tenant, schema.id)
            try:
                stored = await self.log.append(stream, [event], expected_version=len(current))
            except ConcurrencyError:
                for earlier in await self.log.read_stream(stream, len(current) + 1):
                    self.apply(earlier)
                continue
            self.apply(stored[0])
            return self._schemas[(tenant, schema.id)][-1]
        raise DefinitionError([("$.id", "the schema is being registered concurrently too often; try again")])

    def get_schema(self, schema_id: str, *, tenant: str = PLATFORM_TENANT) -> SchemaDefinition | None:
        """The latest version of ``schema_id`` as ``tenant`` sees it (its own, else the platform's)."""
        versions = self._schemas.get((tenant, schema_id)) or self._schemas.get((PLATFORM_TENANT, schema_id))
        return versions[-1] if versions else None

    def list_schemas(self, tenant: str | None = None) -> list[SchemaDefinition]:
        """The latest version of every schema ``tenant`` sees (None: every namespace)."""
        return [schema for _, schema in self.schema_entries(tenant)]

    def schema_entries(self, tenant: str | None = None) -> list[tuple[str, SchemaDefinition]]:
        """(namespace, latest version) of every schema ``tenant`` sees (None: every namespace)."""
        return [
            (namespace, versions[-1])
            for (namespace, _), versions in sorted(self._schemas.items())
            if versions and (tenant is None or namespace in (tenant, PLATFORM_TENANT))
        ]

    # -- bundled ----------------------------------------------------------------------------

    async def register_directory(self, directory: Path) -> list[str]:
        """Register ``schemas/*.yaml`` then ``workflows/*.yaml`` under ``directory`` (unchanged ones are skipped).

        Raises:
            DefinitionError: a file is refused (its name is in the first problem's path).
        """
        registered: list[str] = []
        for kind in ("schemas", "workflows"):
            for path in sorted((directory / kind).glob("*.y*ml")) + sorted((directory / kind).glob("*.json")):
                try:
                    if kind == "schemas":
                        item: Any = await self.register_schema(
                            path.read_bytes(), source=f"bundled:{path.name}", only_if_changed=True
                        )
                    else:
                        item = await self.register_workflow(
                            path.read_bytes(), source=f"bundled:{path.name}", only_if_changed=True
                        )
                except DefinitionError as exc:
                    raise DefinitionError([(f"{path.name}:{p}", m) for p, m in exc.problems]) from None
                registered.append(item.id)
        return registered
