"""A worker refuses a namespace without billow's search attributes, naming them,
instead of starting and stopping every contract at its first upsert."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from worker.binaries import temporal_cli
from worker.namespace_check import NamespaceNotReady, check_namespace, missing_search_attributes
from worker.temporal_envs import register_search_attributes
from workflows import search_attributes


async def test_a_namespace_without_billows_search_attributes_is_refused_naming_them() -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(), data_converter=pydantic_data_converter)
    try:
        missing = await missing_search_attributes(env.client)
        assert missing == [f"{k.name} ({_type(k)})" for k in search_attributes.ALL]
        with pytest.raises(NamespaceNotReady) as refused:
            await check_namespace(env.client)
        message = str(refused.value)
        assert "--name ContractStatus --type Keyword" in message
        assert all(k.name in message for k in search_attributes.ALL)

        await register_search_attributes(env.client, search_attributes.ALL[:1])
        assert len(await missing_search_attributes(env.client)) == len(search_attributes.ALL) - 1
        await register_search_attributes(env.client)
        await check_namespace(env.client)  # ready: no error
    finally:
        await env.shutdown()


def _type(key: SearchAttributeKey[Any]) -> str:
    return key.indexed_value_type.name.title().replace("_", "")
