"""Relaying a published OTLP JSON trace: protobuf bytes that keep every id, time, attribute and resource, over a
real OTLP receiver."""

from __future__ import annotations

import base64
import copy
from typing import Any

import httpx
import pytest
from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from stepscope.export.relay import RelayError, otlp_json_to_protobuf, otlp_json_to_request, spans_in
from stepscope.testing import OtlpReceiver, decode_request

TRACE = "5b8efff798038103d269b633813fc60c"
ROOT = "eee19b7ec3c1b174"
CHILD = "eee19b7ec3c1b173"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"

PUBLISHED: dict[str, Any] = {
    "resourceSpans": [
        {
            "resource": {
                "attributes": [
                    {"key": "service.name", "value": {"stringValue": "openai-agents"}},
                    {"key": "agent.type", "value": {"stringValue": "root"}},
                ]
            },
            "scopeSpans": [
                {
                    "scope": {"name": "openai.agents", "version": "1.0"},
                    "spans": [
                        {
                            "traceId": TRACE,
                            "spanId": ROOT,
                            "name": "turn",
                            "kind": 2,
                            "startTimeUnixNano": "1780000000123456789",
                            "endTimeUnixNano": "1780000030987654321",
                            "attributes": [
                                {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-5"}},
                                {"key": "tokens", "value": {"intValue": "150"}},
                                {"key": "ratio", "value": {"doubleValue": 0.25}},
                                {"key": "ok", "value": {"boolValue": True}},
                                {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}},
                                {"key": "blob", "value": {"bytesValue": base64.b64encode(b"\x00\x01").decode()}},
                            ],
                            "events": [
                                {
                                    "timeUnixNano": "1780000001000000000",
                                    "name": "step",
                                    "attributes": [{"key": "n", "value": {"intValue": "1"}}],
                                }
                            ],
                            "links": [{"traceId": OTHER_TRACE, "spanId": "b7ad6b7169203331"}],
                            "status": {"code": 2, "message": "failed"},
                            "flags": 257,
                        },
                        {
                            "traceId": TRACE,
                            "spanId": CHILD,
                            "parentSpanId": ROOT,
                            "name": "lookup",
                            "kind": 1,
                            "startTimeUnixNano": "1780000002000000000",
                            "endTimeUnixNano": "1780000003000000000",
                        },
                    ],
                }
            ],
        }
    ]
}


def back_to_otlp_json(data: bytes) -> dict[str, Any]:
    """Protobuf bytes -> OTLP JSON (hex ids, integer enums), the inverse of the relay for canonical input."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(data)
    out: dict[str, Any] = json_format.MessageToDict(request, use_integers_for_enums=True)

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else fix(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    fixed: dict[str, Any] = fix(out)
    return fixed


class TestRelay:
    def test_round_trip_is_exact(self) -> None:
        """JSON -> protobuf -> JSON gives back the published trace exactly, and the input is not modified."""
        before = copy.deepcopy(PUBLISHED)
        data = otlp_json_to_protobuf(PUBLISHED)
        assert before == PUBLISHED
        assert back_to_otlp_json(data) == PUBLISHED
        assert otlp_json_to_protobuf(PUBLISHED) == data  # deterministic bytes

    def test_received_by_a_real_otlp_receiver_unchanged(self) -> None:
        """The relayed bytes POSTed to a real OTLP receiver arrive with the published ids, times, attributes,
        events, status, flags and resource."""
        data = otlp_json_to_protobuf(PUBLISHED)
        with OtlpReceiver() as receiver:
            response = httpx.post(receiver.url, content=data, headers={"Content-Type": "application/x-protobuf"})
            assert response.status_code == 200
            assert receiver.wait_for(lambda spans: len(spans) == 2)
            received = list(receiver.spans)
        assert received == decode_request(data)
        root, child = received
        assert (root.trace_id, root.span_id, root.parent_span_id) == (TRACE, ROOT, "")
        assert (child.trace_id, child.span_id, child.parent_span_id) == (TRACE, CHILD, ROOT)
        assert (root.start_ns, root.end_ns) == (1780000000123456789, 1780000030987654321)
        assert (root.name, root.kind, root.status, root.flags) == ("turn", "server", "error", 257)
        assert root.attributes == {
            "gen_ai.request.model": "gpt-5",
            "tokens": 150,
            "ratio": 0.25,
            "ok": True,
            "tags": ["a"],
            "blob": b"\x00\x01",
        }
        assert root.events == (("step", 1780000001000000000, {"n": 1}),)
        assert root.resource == {"service.name": "openai-agents", "agent.type": "root"}
        assert spans_in(PUBLISHED) == 2

    def test_link_ids_converted(self) -> None:
        """Span links keep their hex trace and span ids."""
        request = otlp_json_to_request(PUBLISHED)
        link = request.resource_spans[0].scope_spans[0].spans[0].links[0]
        assert (link.trace_id.hex(), link.span_id.hex()) == (OTHER_TRACE, "b7ad6b7169203331")

    def test_numbers_and_unknown_fields_tolerated(self) -> None:
        """64-bit times as JSON numbers, snake_case keys and unknown fields are read as OTLP receivers must."""
        span = {"trace_id": TRACE, "span_id": ROOT, "name": "x", "startTimeUnixNano": 5, "futureField": {"a": 1}}
        otlp = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}], "schemaUrl": "s"}]}
        (got,) = decode_request(otlp_json_to_protobuf(otlp))
        assert (got.trace_id, got.span_id, got.start_ns) == (TRACE, ROOT, 5)

    def test_attribute_named_like_an_id_is_not_touched(self) -> None:
        """Only span and link ids are hex-decoded: an attribute key `traceId` elsewhere keeps its value."""
        otlp = {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "traceId", "value": {"stringValue": "not-hex"}}]},
                    "scopeSpans": [{"spans": [{"traceId": TRACE, "spanId": ROOT, "name": "x"}]}],
                }
            ]
        }
        (got,) = decode_request(otlp_json_to_protobuf(otlp))
        assert got.resource == {"traceId": "not-hex"}

    @pytest.mark.parametrize(
        ("otlp", "message"),
        [
            ({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "spanId": ROOT}]}]}]}, "traceId"),
            ({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": TRACE, "spanId": "abc"}]}]}]}, "spanId"),
            ({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 7, "spanId": ROOT}]}]}]}, "traceId"),
            ({"resourceSpans": "nope"}, "not OTLP JSON"),
            ({"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 3}]}]}]}, "not OTLP JSON"),
        ],
    )
    def test_bad_payload_is_one_line_error(self, otlp: dict[str, Any], message: str) -> None:
        """A malformed published trace raises RelayError with a one-line message naming the problem."""
        with pytest.raises(RelayError, match=message) as info:
            otlp_json_to_protobuf(otlp)
        assert "\n" not in str(info.value)
        assert spans_in(otlp) == 0
