"""Process logging for ``billow worker`` and ``billow api``.

``BILLOW_LOG_FORMAT=text`` (default) prints one readable line per record;
``json`` prints one JSON object per line for log shippers, with the billing
context as fields of its own:

- ``contract_id`` and ``invoice_key``: from ``extra={"contract_id": ...,
  "invoice_key": ...}`` when the caller gives them, else derived from the
  Temporal workflow id of the activity or workflow that logged
  (``contract:<id>``, ``invoice:<contract id>:<invoice key>``);
- ``workflow_id``, ``run_id``, ``activity_type``, ``attempt``: from the
  ``temporal_activity`` / ``temporal_workflow`` extras that the SDK's
  ``activity.logger`` and ``workflow.logger`` attach.

Reconfiguring is idempotent: the handler this module installs replaces the
one it installed before, and handlers others added (pytest's) stay.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s%(billow_context)s"
_MARK = "_billow_handler"
# Attributes every LogRecord has; anything else came in through ``extra``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__
) | {"message", "asctime", "billow_context", "taskName", "color_message"}
_TEMPORAL_KEYS = ("temporal_activity", "temporal_workflow")


def billing_context(record: logging.LogRecord) -> dict[str, Any]:
    """The contract/invoice/Temporal fields of ``record`` (empty if it has none)."""
    out: dict[str, Any] = {}
    for key in _TEMPORAL_KEYS:
        details = getattr(record, key, None)
        if isinstance(details, Mapping):
            for src, dst in (("workflow_id", "workflow_id"), ("run_id", "run_id"),
                             ("workflow_run_id", "run_id"), ("activity_type", "activity_type"),
                             ("workflow_type", "workflow_type"), ("attempt", "attempt")):
                if details.get(src) is not None:
                    out.setdefault(dst, details[src])
    workflow_id = out.get("workflow_id")
    if isinstance(workflow_id, str):
        kind, _, rest = workflow_id.partition(":")
        if kind == "contract" and rest:
            out["contract_id"] = rest
        elif kind == "invoice" and rest:
            contract_id, _, invoice_key = rest.partition(":")
            out["contract_id"] = contract_id
            if invoice_key:
                out["invoice_key"] = invoice_key
    for key in ("contract_id", "invoice_key"):
        value = getattr(record, key, None)
        if value is not None:
            out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, billing context."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(billing_context(record))
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _TEMPORAL_KEYS and key not in doc \
                    and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The plain line, with ``contract=... invoice=...`` appended when known."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        ctx = billing_context(record)
        parts = [f"contract={ctx['contract_id']}"] if "contract_id" in ctx else []
        if "invoice_key" in ctx:
            parts.append(f"invoice={ctx['invoice_key']}")
        record.billow_context = (" [" + " ".join(parts) + "]") if parts else ""
        return super().format(record)


def configure_logging(log_format: LogFormat = "text", level: str | int = "INFO") -> None:
    """Install billow's handler on the root logger (replacing a previous one)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _MARK, True)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    if log_format == "json":
        # The Temporal context is a field of its own: don't repeat it in the message.
        from temporalio import activity, workflow

        activity.logger.activity_info_on_message = False
        workflow.logger.workflow_info_on_message = False
        # uvicorn installs its own text handlers; route its records through ours.
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            lg = logging.getLogger(name)
            lg.handlers.clear()
            lg.propagate = True


def configure_from_settings() -> None:
    """``configure_logging`` from ``BILLOW_LOG_FORMAT`` / ``BILLOW_LOG_LEVEL``."""
    from worker.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
