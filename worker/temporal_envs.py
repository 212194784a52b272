"""Temporal servers started in-process: the time-skipping test server (tests,
``billow simulate``) and the dev server with visibility (tests)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.testing import WorkflowEnvironment

from worker.binaries import temporal_cli, temporal_test_server
from workflows import search_attributes


async def register_search_attributes(
    client: Client, keys: Sequence[SearchAttributeKey[Any]] = search_attributes.ALL
) -> None:
    """Register billow's search attributes through the operator service.

    Unregistered attributes fail a workflow start or wedge its task, so every
    environment registers them before the first workflow runs.
    """
    request = AddSearchAttributesRequest(
        namespace=client.namespace,
        search_attributes={
            key.name: IndexedValueType.ValueType(key.indexed_value_type) for key in keys
        },
    )
    await client.operator_service.add_search_attributes(request)


def quiet_runtime() -> Runtime:
    """An SDK runtime whose core logs go through Python logging (stderr), not
    straight to stdout, where they would corrupt ``--json`` output."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"),
                forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
            )
        )
    )


async def start_time_skipping() -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal_test_server(),
        data_converter=pydantic_data_converter,
        runtime=quiet_runtime(),
    )
    await register_search_attributes(env.client)
    return env


async def start_dev_server(extra_args: Sequence[str] = ()) -> WorkflowEnvironment:
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        search_attributes=search_attributes.ALL,
        dev_server_extra_args=list(extra_args),
    )
