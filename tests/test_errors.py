"""The one table of error kinds (core/errors.py): what each kind answers, and that the code builds
errors only by kind. No Ray."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from core import errors
from core.errors import KINDS, DataPlaneError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "model_registry", "review", "deployments", "serve", "cluster", "visionray")

# kind -> (HTTP status, gRPC code, Retry-After header, a constructor call that builds it). What
# clients see: a change here is a change of the API.
EXPECTED = {
    "model_not_found": (404, "NOT_FOUND", None, lambda: errors.model_not_found("det", ["cls"])),
    "version_not_served": (404, "NOT_FOUND", None, lambda: errors.version_not_served("det", "7", ["1"])),
    "alias_not_served": (404, "NOT_FOUND", None, lambda: errors.alias_not_served("beta", ["production"])),
    "not_found": (404, "NOT_FOUND", None, lambda: errors.not_found("no file 'x'")),
    "review_disabled": (404, "NOT_FOUND", None, lambda: errors.review_disabled("off")),
    "method_not_allowed": (405, "INVALID_ARGUMENT", None,
                           lambda: errors.method_not_allowed("GET", "/v1/models/det/predict", ["POST"])),
    "bad_request": (400, "INVALID_ARGUMENT", None, lambda: errors.bad_request("malformed multipart body")),
    "missing_image": (400, "INVALID_ARGUMENT", None, lambda: errors.missing_image("no image")),
    "invalid_image": (400, "INVALID_ARGUMENT", None, lambda: errors.invalid_image("truncated")),
    "invalid_input": (400, "INVALID_ARGUMENT", None, lambda: errors.invalid_input("bad tensor")),
    "invalid_parameter": (422, "INVALID_ARGUMENT", None, lambda: errors.invalid_parameter("conf=2 is out of range")),
    "unsupported_media_type": (415, "INVALID_ARGUMENT", None, lambda: errors.unsupported_media_type("text/plain")),
    "payload_too_large": (413, "RESOURCE_EXHAUSTED", None, lambda: errors.payload_too_large("too big")),
    "request_timeout": (408, "DEADLINE_EXCEEDED", None, lambda: errors.request_timeout("too slow")),
    "overloaded": (503, "UNAVAILABLE", "1", lambda: errors.overloaded("busy")),
    "deadline_exceeded": (503, "UNAVAILABLE", "1", lambda: errors.deadline_exceeded("det", 0.25)),
    "stage_unavailable": (503, "UNAVAILABLE", "1", lambda: errors.stage_unavailable("no replica answered")),
    "too_many_connections": (503, "UNAVAILABLE", "1", lambda: errors.too_many_connections(256)),
    "model_loading": (503, "UNAVAILABLE", "5", lambda: errors.model_loading("det", "production")),
    "model_unavailable": (503, "UNAVAILABLE", "30",
                          lambda: errors.model_unavailable("det", "production", "abc", "no ONNX file")),
    "internal_error": (500, "INTERNAL", None, lambda: errors.internal_error("boom")),
}


def test_the_expected_kinds_are_the_table():
    assert set(EXPECTED) == set(KINDS)


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_each_kind_answers_its_status_grpc_code_and_retry_after(code):
    status, grpc_name, retry_after, build = EXPECTED[code]
    kind = KINDS[code]
    assert (kind.status, kind.grpc) == (status, grpc_name)
    assert kind.retry_after_s == (None if retry_after is None else int(retry_after))
    err = build()
    assert isinstance(err, DataPlaneError)
    assert (err.code, err.status, err.retry_after_s, err.grpc_code_name) == (code, status, retry_after, grpc_name)
    assert grpc.StatusCode[err.grpc_code_name] is not grpc.StatusCode.UNKNOWN


def test_each_kind_has_a_constructor_of_its_name():
    for code in KINDS:
        assert callable(getattr(errors, code, None)), code


def test_constructor_messages():
    err = errors.model_not_found("dett", ["cls", "det"], alias="staging")
    assert err.message == "no model named 'dett' is served under alias 'staging'; served: ['cls', 'det']"
    assert errors.model_not_found("x" * 100, []).message.startswith("no model named 'xxxx")
    assert "(100 chars)" in errors.model_not_found("x" * 100, []).message  # a long name is cut
    assert errors.version_not_served("det", "7", ["1", "2"]).message == (
        "version '7' of model 'det' is not served; served versions: ['1', '2'] (serve it by pointing an alias at it)")
    assert errors.alias_not_served("beta", ["production"]).message == (
        "alias 'beta' is not served; served aliases: ['production']")
    assert errors.deadline_exceeded("det", 0.25).message == (
        "model 'det' could not start within the 250 ms budget; retry later")
    assert errors.model_unavailable("det", "production", "abc", "no ONNX file").message == (
        "model 'det'@production version abc cannot serve: no ONNX file")
    assert errors.model_loading("det", "production").message == "model 'det'@production is loading"
    assert errors.stage_unavailable("gone").message == "a pipeline stage is unavailable: gone"
    assert errors.too_many_connections(4).message == (
        "more than 4 open connections from this client; close some or reuse them")
    err = errors.method_not_allowed("GET", "/v1/models/det/predict", ["POST", "PUT"])
    assert err.message == "GET is not allowed on '/v1/models/det/predict'; use POST, PUT"
    assert err.headers == {"Allow": "POST, PUT"}


def test_overloaded_says_the_measured_wait_in_whole_seconds_at_least_one():
    assert errors.overloaded("busy", 2.2).retry_after_s == "3"
    assert errors.overloaded("busy", 0.01).retry_after_s == "1"
    assert errors.overloaded("busy", 0).retry_after_s == "1"
    assert errors.overloaded("busy").retry_after_s == "1"


def test_kinds_without_retry_after_send_no_header():
    assert errors.invalid_image("bad").headers == {}


def _sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if "_pb2" not in p.name and p != ROOT / "core" / "errors.py"]


def test_the_codes_the_code_builds_are_the_tables_keys():
    """Every error is built by a constructor of the table (`errors.<kind>(`), every kind is used,
    and nothing builds a DataPlaneError from literals."""
    called, literal = set(), []
    for path in _sources():
        text = path.read_text()
        if "from core import errors" in text:
            called |= set(re.findall(r"\berrors\.([a-z_]+)\(", text))
        literal += [f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}"
                    for m in re.finditer(r"\bDataPlaneError\(", text)]
    assert called == set(KINDS)
    assert literal == []
