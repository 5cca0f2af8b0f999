"""The Open Inference Protocol v2 (KServe v2 / Triton) over the data plane, transport-free.

serve/protocols/oip_rest.py and oip_grpc.py turn their wire formats into an `InferRequest` and
an `InferResponse` back; everything OIP means is here, once, and pure where it can be (tensors
to images, results to tensors; unit-tested without Ray in tests/test_oip_tensors.py).

Tensors, per task (also in `GET /v2/models/{name}` and docs/oip.md):
  input  `image`  BYTES [N]          N encoded images (JPEG/PNG); in JSON, base64 strings
         or      UINT8 [N, H, W, 3]  N decoded RGB images, for clients that decode themselves
  detect outputs  boxes FP32 [N, K, 4] (x1, y1, x2, y2 in the image's pixels), scores FP32 [N, K],
                  classes INT32 [N, K], labels BYTES [N, K], num_detections INT32 [N],
                  image_size INT32 [N, 2] (width, height). K = the most detections of any image
                  of the request; rows past an image's num_detections are padding (score 0,
                  class -1, label "").
  classify outputs scores FP32 [N, k], classes INT32 [N, k], labels BYTES [N, k], image_size;
                  Triton's classification extension: an output requested with parameter
                  `classification: k` comes back as BYTES [N, k] "score:class_id:label".
Request parameters `conf`, `iou`, `max_det`, `top_k` are the /v1 query's.
"""

from __future__ import annotations

import base64
import binascii
import struct
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import numpy as np

from core import errors
from core.errors import DataPlaneError
from core.image_codec import sniff_format
from core.predict_params import predict_params
from deployments.dataplane import DataPlane, ImageInput, RequestRecord

SERVER_NAME = "visionray"
EXTENSIONS = ["binary_tensor_data", "classification"]
PLATFORM = "onnxruntime_onnx"

DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}
IMAGE_INPUT = "image"
# A batch bigger than this in one request is refused: it could not be one trip anyway.
MAX_IMAGES_PER_REQUEST = 64


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray  # BYTES: an object array of bytes
    parameters: dict = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # REST: per output; None: the request's binary_data_output
    classification: int | None = None


@dataclass
class InferRequest:
    model: str
    version: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    id: str = ""
    binary_outputs: bool = False  # REST: outputs not named are sent as binary data (binary_data_output)


@dataclass
class InferResponse:
    model: str
    version: str
    outputs: list[Tensor]
    id: str = ""
    parameters: dict = field(default_factory=dict)


def server_version() -> str:
    try:
        return package_version("visionray")
    except PackageNotFoundError:
        return "0"


# -- BYTES tensors (Triton's binary layout: 4-byte little-endian length, then the bytes) ----------
def serialize_bytes(items) -> bytes:
    out = bytearray()
    for item in items:
        item = item.encode() if isinstance(item, str) else bytes(item)
        out += struct.pack("<I", len(item)) + item
    return bytes(out)


def deserialize_bytes(buf: bytes | memoryview) -> list[bytes]:
    view, items, at = memoryview(buf), [], 0
    while at < len(view):
        if at + 4 > len(view):
            raise errors.invalid_input("BYTES tensor data is truncated (a length prefix is cut)")
        (n,) = struct.unpack_from("<I", view, at)
        at += 4
        if at + n > len(view):
            raise errors.invalid_input("BYTES tensor data is truncated (an element is shorter than its length)")
        items.append(bytes(view[at:at + n]))
        at += n
    return items


def tensor_from_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> Tensor:
    if datatype not in DTYPES:
        raise errors.invalid_input(f"input {name!r}: unknown datatype {datatype!r}")
    if any(d < 0 for d in shape):
        raise errors.invalid_input(f"input {name!r}: shape {shape} has a negative dimension")
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES":
        items = deserialize_bytes(raw)
        if len(items) != count:
            raise errors.invalid_input(f"input {name!r}: shape {shape} needs {count} elements, "
                                       f"the data has {len(items)}")
        data = np.empty(count, dtype=object)
        data[:] = items
        return Tensor(name, datatype, shape, data.reshape(shape))
    dtype = np.dtype(DTYPES[datatype])
    if len(raw) != count * dtype.itemsize:
        raise errors.invalid_input(f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
                                   f"got {len(raw)}")
    return Tensor(name, datatype, shape, np.frombuffer(raw, dtype=dtype).reshape(shape))


def tensor_from_json(name: str, datatype: str, shape: list[int], data) -> Tensor:
    """An input given as JSON `data` (nested or flat, row-major); BYTES elements are strings:
    base64 for images (JSON cannot carry raw bytes)."""
    if datatype not in DTYPES:
        raise errors.invalid_input(f"input {name!r}: unknown datatype {datatype!r}")
    if datatype == "BYTES":
        flat = np.array(data, dtype=object).reshape(-1)
        items = np.empty(len(flat), dtype=object)
        items[:] = [_json_bytes(name, v) for v in flat]
        arr = items
    else:
        try:
            arr = np.asarray(data, dtype=DTYPES[datatype]).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise errors.invalid_input(f"input {name!r}: data is not {datatype}: {exc}") from None
    count = int(np.prod(shape)) if shape else 1
    if arr.size != count:
        raise errors.invalid_input(f"input {name!r}: shape {shape} needs {count} elements, the data has {arr.size}")
    return Tensor(name, datatype, shape, arr.reshape(shape))


def _json_bytes(name: str, value) -> bytes:
    if not isinstance(value, str):
        raise errors.invalid_input(f"input {name!r}: BYTES elements in JSON must be strings")
    raw = value.encode("utf-8", "surrogateescape")
    if sniff_format(raw) is not None:  # not base64: an image sent as a (lossy) string as is
        return raw
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise errors.invalid_input(f"input {name!r}: a BYTES element in JSON must be a base64-encoded image "
                                   "(or send it as binary data)") from None


def raw_bytes(tensor: Tensor) -> bytes:
    """A tensor's binary wire form (raw_output_contents / the binary extension)."""
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.data.reshape(-1))
    return np.ascontiguousarray(tensor.data, dtype=DTYPES[tensor.datatype]).tobytes()


def json_data(tensor: Tensor) -> list:
    """A tensor's JSON `data`: flat, row-major; BYTES as UTF-8 strings."""
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    if tensor.datatype == "FP32":
        # The shortest decimal that reads back as the same float32 (261.02, not 261.0199890136719).
        return [float(str(v)) for v in flat]
    return flat.tolist()


# -- tensors -> images, results -> tensors (pure) ------------------------------------------------
def images_from_inputs(inputs: list[Tensor]) -> list[ImageInput]:
    if len(inputs) != 1:
        raise errors.invalid_input(f"one input tensor is expected ({IMAGE_INPUT!r}), got {len(inputs)}")
    tensor = inputs[0]
    if tensor.datatype == "BYTES":
        images = [bytes(v) for v in tensor.data.reshape(-1)]
    elif tensor.datatype == "UINT8":
        if tensor.data.ndim == 3:
            tensor.data = tensor.data[None]
        if tensor.data.ndim != 4 or tensor.data.shape[3] != 3:
            raise errors.invalid_input(f"input {tensor.name!r}: UINT8 images must be [N, H, W, 3] RGB, got shape "
                                       f"{list(tensor.shape)}")
        images = list(tensor.data)
    else:
        raise errors.invalid_input(f"input {tensor.name!r}: datatype must be BYTES (encoded images) or UINT8 "
                                   f"([N, H, W, 3] RGB), got {tensor.datatype}")
    if not images:
        raise errors.invalid_input(f"input {tensor.name!r} holds no image")
    if len(images) > MAX_IMAGES_PER_REQUEST:
        raise errors.invalid_input(f"{len(images)} images in one request; the limit is {MAX_IMAGES_PER_REQUEST}")
    return images


def output_tensors(task: str, results: list[dict]) -> list[Tensor]:
    """The per-image result dicts of the data plane (the /v1 fields) as OIP tensors."""
    n = len(results)
    rows = [r["detections"] if task == "detect" else r["classes"] for r in results]
    k = max((len(r) for r in rows), default=0)
    scores = np.zeros((n, k), np.float32)
    classes = np.full((n, k), -1, np.int32)
    labels = np.full((n, k), b"", dtype=object)
    for i, row in enumerate(rows):
        for j, item in enumerate(row):
            scores[i, j], classes[i, j], labels[i, j] = item["score"], item["class_id"], item["label"].encode()
    sizes = np.array([[r["image"]["width"], r["image"]["height"]] for r in results], np.int32).reshape(n, 2)
    out = []
    if task == "detect":
        boxes = np.zeros((n, k, 4), np.float32)
        for i, row in enumerate(rows):
            for j, item in enumerate(row):
                boxes[i, j] = item["box"]
        out.append(Tensor("boxes", "FP32", [n, k, 4], boxes))
    out += [Tensor("scores", "FP32", [n, k], scores), Tensor("classes", "INT32", [n, k], classes),
            Tensor("labels", "BYTES", [n, k], labels)]
    if task == "detect":
        out.append(Tensor("num_detections", "INT32", [n], np.array([len(r) for r in rows], np.int32)))
    out.append(Tensor("image_size", "INT32", [n, 2], sizes))
    return out


def classification_tensor(name: str, scores: Tensor, classes: Tensor, labels: Tensor, k: int) -> Tensor:
    """Triton's classification extension: BYTES [N, k] of "score:class_id:label"."""
    n = scores.data.shape[0]
    k = min(k, scores.data.shape[1])
    data = np.empty((n, k), dtype=object)
    for i in range(n):
        for j in range(k):
            data[i, j] = f"{scores.data[i, j]:f}:{classes.data[i, j]}:{labels.data[i, j].decode()}".encode()
    return Tensor(name, "BYTES", [n, k], data)


def select_outputs(tensors: list[Tensor], requested: list[RequestedOutput]) -> list[Tensor]:
    """The requested outputs, in the requested order (all, when none is named)."""
    if not requested:
        return tensors
    by_name = {t.name: t for t in tensors}
    out = []
    for req in requested:
        if req.name not in by_name:
            raise errors.invalid_input(f"unknown output {req.name!r}; this model's outputs: {list(by_name)}")
        tensor = by_name[req.name]
        if req.classification:
            tensor = classification_tensor(req.name, by_name["scores"], by_name["classes"], by_name["labels"],
                                           req.classification)
        out.append(tensor)
    return out


def model_metadata(name: str, task: str | None, versions: list[str]) -> dict:
    k = -1
    outputs = [{"name": "boxes", "datatype": "FP32", "shape": [-1, k, 4]}] if task == "detect" else []
    outputs += [{"name": "scores", "datatype": "FP32", "shape": [-1, k]},
                {"name": "classes", "datatype": "INT32", "shape": [-1, k]},
                {"name": "labels", "datatype": "BYTES", "shape": [-1, k]}]
    if task == "detect":
        outputs.append({"name": "num_detections", "datatype": "INT32", "shape": [-1]})
    outputs.append({"name": "image_size", "datatype": "INT32", "shape": [-1, 2]})
    return {"name": name, "versions": versions, "platform": PLATFORM,
            "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}], "outputs": outputs}


# -- the protocol over the data plane ----------------------------------------------------------
class Oip:
    """What both OIP transports ask of the data plane."""

    def __init__(self, plane: DataPlane, cfg):
        self.plane, self.cfg = plane, cfg

    def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        return (await self.plane.readiness())["ready"]

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        self.plane.catalog.require(name)
        return await self.plane.model_ready(name, version)

    def metadata(self, name: str, version: str | None = None) -> dict:
        meta = self.plane.catalog.metadata(name, version)
        return model_metadata(meta["name"], meta["task"], meta["versions"])

    def resolve(self, name: str, version: str | None, record: RequestRecord):
        """The version this request is answered by, read once, and its admission before any body."""
        resolved, alias = self.plane.catalog.serving_version(name, version)
        record.model, record.version, record.alias, record.resolved = name, resolved.version, alias, True
        return resolved

    async def infer(self, req: InferRequest, resolved, budget_s: float, record: RequestRecord,
                    t0: float | None = None) -> InferResponse:
        spec = resolved.spec
        params = predict_params(req.parameters, spec, len(spec.labels))
        images = images_from_inputs(req.inputs)
        try:
            results = await self.plane.predict(resolved, images, params, budget_s, record, t0 or time.perf_counter())
        except DataPlaneError as err:
            if err.code == "unsupported_media_type":  # not the request's type: a tensor element that is no image
                raise errors.invalid_image(err.message) from None
            raise
        outputs = select_outputs(output_tensors(spec.task, results), req.outputs)
        timings = results[0]["timings_ms"]
        return InferResponse(model=req.model, version=resolved.version, outputs=outputs, id=req.id,
                             parameters={"alias": record.alias, "total_ms": float(timings["total_ms"])})
