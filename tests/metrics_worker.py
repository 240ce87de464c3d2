"""A stand-in for one ``--workers`` process: routes requests, counts them, exits.

Run as ``python -m tests.metrics_worker CONFIG COUNT`` with ``PROMETHEUS_MULTIPROC_DIR``
set, as a worker pool's parent would start it.
"""

from __future__ import annotations

import asyncio
import json
import sys

from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
)

from ext_proc.telemetry.metrics import use_multiprocess_dir


def chat_messages(model: str | None) -> list[ProcessingRequest]:
    """A chat request as Envoy's routing filter sends it: headers, then the body."""
    headers = HeaderMap(
        headers=[
            HeaderValue(key=":method", raw_value=b"POST"),
            HeaderValue(key=":path", raw_value=b"/v1/chat/completions"),
            HeaderValue(key="content-type", raw_value=b"application/json"),
        ]
    )
    payload: dict[str, object] = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        payload["model"] = model
    return [
        ProcessingRequest(request_headers=HttpHeaders(headers=headers)),
        ProcessingRequest(
            request_body=HttpBody(body=json.dumps(payload).encode(), end_of_stream=True)
        ),
    ]


async def _route(config_path: str, count: int) -> None:
    from ext_proc.config import load_config
    from ext_proc.routing.resolve import build_routing_table
    from ext_proc.server.routing_stream import RoutingProcessor

    table = build_routing_table(load_config(config_path))
    for _ in range(count):
        processor = RoutingProcessor(table)
        for message in chat_messages(None):
            await processor.handle(message)
    processor = RoutingProcessor(table)
    for message in chat_messages("no-such-model"):
        await processor.handle(message)


def main() -> None:
    # Before any metric exists, as `archway serve` does.
    use_multiprocess_dir()
    asyncio.run(_route(sys.argv[1], int(sys.argv[2])))


if __name__ == "__main__":
    main()
