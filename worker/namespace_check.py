"""Before a worker takes tasks: is the namespace ready for billow's workflows?

A contract workflow upserts billow's search attributes (workflows/
search_attributes.py). If one is not registered on the namespace, or has
another type, that upsert fails the workflow task on every attempt: the
contract stops, exactly what must never happen. So a worker refuses to start
on such a namespace, naming each attribute and the command that adds it,
instead of starting and wedging contracts one by one. (`billow up` and the
deploy scripts register them; a release that adds one says so.)
"""

from __future__ import annotations

import logging

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from workflows import search_attributes

log = logging.getLogger("billow.worker")

_CLI_TYPES = {
    IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD: "Keyword",
    IndexedValueType.INDEXED_VALUE_TYPE_TEXT: "Text",
    IndexedValueType.INDEXED_VALUE_TYPE_BOOL: "Bool",
    IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE: "Double",
    IndexedValueType.INDEXED_VALUE_TYPE_INT: "Int",
    IndexedValueType.INDEXED_VALUE_TYPE_DATETIME: "Datetime",
    IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST: "KeywordList",
}


class NamespaceNotReady(RuntimeError):
    """The namespace lacks search attributes billow's workflows write."""


async def missing_search_attributes(client: Client) -> list[str]:
    """``Name (Type)`` of each billow attribute the namespace lacks or types otherwise.

    Empty when the namespace cannot be inspected (a key without operator
    rights, as on some Temporal Cloud setups): that is logged, not fatal.
    """
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace))
    except RPCError as exc:
        if exc.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED):
            log.warning("cannot list the namespace's search attributes (%s); make sure "
                        "billow's are registered (deploy/README.md)", exc.message)
            return []
        raise
    have = dict(listed.custom_attributes)
    missing = []
    for key in search_attributes.ALL:
        wanted = IndexedValueType.ValueType(key.indexed_value_type)
        if have.get(key.name) != wanted:
            missing.append(f"{key.name} ({_CLI_TYPES.get(wanted, str(wanted))})")
    return missing


async def check_namespace(client: Client) -> None:
    missing = await missing_search_attributes(client)
    if missing:
        commands = "; ".join(
            f"temporal operator search-attribute create --namespace {client.namespace} "
            f"--name {m.split(' ')[0]} --type {m.split('(')[1].rstrip(')')}" for m in missing)
        raise NamespaceNotReady(
            f"namespace {client.namespace!r} lacks search attributes billow's workflows "
            f"write: {', '.join(missing)}. Contracts would stop at their first upsert. "
            f"Add them first: {commands}")
