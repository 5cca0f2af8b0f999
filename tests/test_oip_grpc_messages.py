"""visionray's gRPC messages beside tritonclient's, without a server: both import in one process,
each parses the other's bytes, and request/response conversion and error codes hold."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from core.errors import DataPlaneError
from serve.protocols import inference_pb2 as pb
from serve.protocols.oip import InferResponse, Tensor, serialize_bytes
from serve.protocols.oip_grpc import encode_response, grpc_code, parse_request

tpb = pytest.importorskip("tritonclient.grpc.service_pb2")


def test_a_tritonclient_request_parses_here_and_our_answer_parses_there():
    theirs = tpb.ModelInferRequest(model_name="det", model_version="3", id="r1")
    theirs.inputs.add(name="image", datatype="BYTES", shape=[2])
    theirs.raw_input_contents.append(serialize_bytes([b"\xff\xd8\xffa", b"\xff\xd8\xffb"]))
    theirs.parameters["conf"].double_param = 0.4
    out = theirs.outputs.add(name="scores")
    out.parameters["classification"].int64_param = 2
    req = parse_request(pb.ModelInferRequest.FromString(theirs.SerializeToString()))
    assert (req.model, req.version, req.id) == ("det", "3", "r1")
    assert list(req.inputs[0].data) == [b"\xff\xd8\xffa", b"\xff\xd8\xffb"]
    assert req.parameters == {"conf": 0.4} and req.outputs[0].classification == 2

    answer = InferResponse("det", "3", [Tensor("scores", "FP32", [1, 2], np.array([[0.5, 0.25]], np.float32))],
                           id="r1", parameters={"alias": "production", "total_ms": 4.5})
    back = tpb.ModelInferResponse.FromString(encode_response(answer).SerializeToString())
    assert back.outputs[0].name == "scores" and list(back.outputs[0].shape) == [1, 2]
    assert np.frombuffer(back.raw_output_contents[0], np.float32).tolist() == [0.5, 0.25]
    assert back.parameters["alias"].string_param == "production"
    assert back.parameters["total_ms"].double_param == 4.5


def test_raw_contents_must_match_the_inputs():
    msg = pb.ModelInferRequest(model_name="det")
    msg.inputs.add(name="a", datatype="BYTES", shape=[1])
    msg.inputs.add(name="b", datatype="BYTES", shape=[1])
    msg.raw_input_contents.append(serialize_bytes([b"x"]))
    with pytest.raises(DataPlaneError, match="raw_input_contents"):
        parse_request(msg)


@pytest.mark.parametrize("status, code, expected", [
    (404, "model_not_found", grpc.StatusCode.NOT_FOUND),
    (404, "version_not_served", grpc.StatusCode.NOT_FOUND),
    (400, "invalid_image", grpc.StatusCode.INVALID_ARGUMENT),
    (422, "invalid_parameter", grpc.StatusCode.INVALID_ARGUMENT),
    (413, "payload_too_large", grpc.StatusCode.RESOURCE_EXHAUSTED),
    (503, "overloaded", grpc.StatusCode.UNAVAILABLE),
    (503, "stage_unavailable", grpc.StatusCode.UNAVAILABLE),
    (408, "request_timeout", grpc.StatusCode.DEADLINE_EXCEEDED),
    (500, "internal_error", grpc.StatusCode.INTERNAL),
])
def test_every_error_kind_has_a_grpc_code_and_none_is_unknown(status, code, expected):
    assert grpc_code(DataPlaneError(status, code, "m")) == expected
