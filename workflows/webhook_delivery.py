"""One workflow per webhook endpoint: deliver its events in order, forever.

``webhook-endpoint:<id>`` loops: wait (an activity that polls the outbox and
heartbeats) until the endpoint has events after its cursor, then deliver them
(an activity that POSTs them one by one). A delivery that fails is retried by
Temporal with exponential backoff until ``give_up_after_seconds`` (three
days) have passed; then the endpoint is disabled and ops are told (error log,
``billow_webhook_endpoints_disabled_total``). The workflow then waits for a
replay through the API, which re-enables the endpoint, and delivers again. It
used to end there, and a replay sent while it was ending found it running,
started none, and left the endpoint enabled with nothing delivering it
(``disabled-endpoint-waits``; old runs keep their ending on replay). Only a
deleted endpoint ends its workflow.

The cursor lives in the database, not here: the workflow carries nothing but
the endpoint id and its options, so continue-as-new and a restart lose
nothing.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from models.events import (
        DeliverEventsRequest,
        DeliverEventsResult,
        DisableEndpointRequest,
        EndpointDeliveryInput,
        WaitForEventsRequest,
        WaitForEventsResult,
    )
    from models.operations import ActivityName

__all__ = ["WebhookEndpointWorkflow", "endpoint_workflow_id"]

# Loops per run before continue-as-new (each adds ~10 history events).
LOOPS_PER_RUN = 200


def endpoint_workflow_id(endpoint_id: str) -> str:
    return f"webhook-endpoint:{endpoint_id}"


def _waits_when_disabled() -> bool:
    return workflow.patched("disabled-endpoint-waits")


@workflow.defn(name="WebhookEndpoint")
class WebhookEndpointWorkflow:
    @workflow.run
    async def run(self, inp: EndpointDeliveryInput) -> str:
        o = inp.options
        for _ in range(LOOPS_PER_RUN):
            waited: WaitForEventsResult = await workflow.execute_activity(
                ActivityName.WAIT_FOR_EVENTS.value,
                WaitForEventsRequest(endpoint_id=inp.endpoint_id, poll_seconds=o.poll_seconds,
                                     max_wait_seconds=o.max_wait_seconds),
                result_type=WaitForEventsResult,
                start_to_close_timeout=timedelta(seconds=o.max_wait_seconds + 60),
                heartbeat_timeout=timedelta(seconds=max(30.0, o.poll_seconds * 5)),
                # A database outage is waited out, never a reason to stop.
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
                summary="wait for events",
            )
            if waited.status == "disabled" and _waits_when_disabled():
                continue
            if waited.status != "enabled":
                return waited.status
            if not waited.pending:
                continue
            try:
                await workflow.execute_activity(
                    ActivityName.DELIVER_EVENTS.value,
                    DeliverEventsRequest(endpoint_id=inp.endpoint_id, batch=o.batch,
                                         request_timeout_seconds=o.request_timeout_seconds),
                    result_type=DeliverEventsResult,
                    start_to_close_timeout=timedelta(
                        seconds=o.batch * (o.request_timeout_seconds + 5)),
                    heartbeat_timeout=timedelta(seconds=o.request_timeout_seconds + 30),
                    schedule_to_close_timeout=timedelta(seconds=o.give_up_after_seconds),
                    retry_policy=RetryPolicy(
                        initial_interval=timedelta(seconds=o.initial_retry_seconds),
                        backoff_coefficient=2.0,
                        maximum_interval=timedelta(seconds=o.max_retry_seconds),
                    ),
                    summary="deliver events",
                )
            except ActivityError as exc:
                reason = (f"deliveries failed for {timedelta(seconds=o.give_up_after_seconds)} "
                          f"({exc.cause or exc})")
                await workflow.execute_activity(
                    ActivityName.DISABLE_ENDPOINT.value,
                    DisableEndpointRequest(endpoint_id=inp.endpoint_id, reason=reason),
                    start_to_close_timeout=timedelta(seconds=30),
                    summary="disable endpoint",
                )
                if not _waits_when_disabled():
                    return "disabled"
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp)
