"""One typed description of a served model, read from the ONNX file wherever it can be.

A plain `yolo export` file needs nothing else: input/output shapes come from the graph and
`names`, `imgsz`, `stride`, `task` from its Ultralytics metadata. Anything else names a
preprocessing preset (`imagenet`, `letterbox`, `resize`) and, optionally, labels.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Literal

import onnx
from pydantic import BaseModel, Field

Task = Literal["detect", "classify"]


class Preprocessing(BaseModel):
    """How an image becomes the model's input tensor.

    `letterbox`: keep aspect, pad with `pad_value` to the input size (Ultralytics).
    `center_crop`: resize the shorter side to `resize_shorter`, crop the centre (ImageNet).
    `resize`: stretch to the input size.
    """

    mode: Literal["letterbox", "center_crop", "resize"]
    height: int
    width: int
    resize_shorter: int | None = None
    pad_value: int = 114
    channel_order: Literal["rgb", "bgr"] = "rgb"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: Literal["nchw", "nhwc"] = "nchw"


PRESETS = ("letterbox", "imagenet", "resize")
PRESET_METADATA_KEY = "visionray.preset"


def preset(name: str, height: int, width: int) -> Preprocessing:
    if name == "letterbox":
        return Preprocessing(mode="letterbox", height=height, width=width)
    if name == "imagenet":
        # torchvision's eval transform: resize 256, crop 224 (scaled for other sizes).
        return Preprocessing(
            mode="center_crop",
            height=height,
            width=width,
            resize_shorter=round(min(height, width) * 256 / 224),
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
        )
    if name == "resize":
        return Preprocessing(mode="resize", height=height, width=width)
    raise ValueError(f"unknown preprocessing preset {name!r}; choose one of {PRESETS}")


class ModelSpec(BaseModel):
    task: Task
    input_name: str
    input_shape: list[int | None] = Field(description="NCHW or NHWC; None for symbolic dims")
    input_dtype: str = "float32"
    output_name: str
    output_shape: list[int | None]
    preprocessing: Preprocessing
    labels: list[str]
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    top_k: int = 5

    @property
    def fixed_batch(self) -> int | None:
        """The exported batch size if the file fixes it, else None."""
        return self.input_shape[0]

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id)


class SpecError(ValueError):
    """The ONNX file and the options given do not describe a servable model."""


def _dims(value_info) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def _parse_names(raw: str) -> list[str]:
    names = ast.literal_eval(raw)
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names]


def read_labels_file(path: str | Path) -> list[str]:
    text = Path(path).read_text()
    if path.__str__().endswith(".json"):
        data = json.loads(text)
        return _parse_names(repr(data))
    return [line.strip() for line in text.splitlines() if line.strip()]


def spec_from_onnx(
    path: str | Path,
    task: Task | None = None,
    preset_name: str | None = None,
    labels: list[str] | None = None,
    overrides: dict | None = None,
) -> ModelSpec:
    """Build the spec from what the file says, then apply what the caller adds."""
    model = onnx.load(str(path), load_external_data=False)
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(inputs) != 1 or len(model.graph.output) < 1:
        raise SpecError(
            f"expected one image input and at least one output, got inputs {[i.name for i in inputs]}"
        )
    meta = {p.key: p.value for p in model.metadata_props}
    inp, out = inputs[0], model.graph.output[0]
    in_shape, out_shape = _dims(inp), _dims(out)
    if len(in_shape) != 4:
        raise SpecError(f"input {inp.name!r} has shape {in_shape}; expected 4-D NCHW or NHWC")
    elem = inp.type.tensor_type.elem_type
    input_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem).name

    task = task or meta.get("task") or _guess_task(out_shape)
    if task not in ("detect", "classify"):
        raise SpecError(f"task {task!r} is not served; use detect or classify")

    layout = "nhwc" if in_shape[3] == 3 and in_shape[1] != 3 else "nchw"
    h, w = (in_shape[1], in_shape[2]) if layout == "nhwc" else (in_shape[2], in_shape[3])
    if "imgsz" in meta and (h is None or w is None):
        h, w = ast.literal_eval(meta["imgsz"])
    if h is None or w is None:
        raise SpecError(f"input {inp.name!r} has a dynamic spatial size {in_shape}; export with a fixed imgsz")

    # `visionray.preset` lets a model file name its own preprocessing (our demo models do).
    preset_name = preset_name or meta.get(PRESET_METADATA_KEY) or ("letterbox" if task == "detect" else "imagenet")
    pre = preset(preset_name, h, w).model_copy(update={"layout": layout})

    if labels is None and "names" in meta:
        labels = _parse_names(meta["names"])
    n_classes = _class_count(task, out_shape)
    if labels is None:
        labels = [str(i) for i in range(n_classes or 0)]
    if n_classes is not None and len(labels) != n_classes:
        raise SpecError(f"{len(labels)} labels given but the model outputs {n_classes} classes")

    spec = ModelSpec(
        task=task,
        input_name=inp.name,
        input_shape=in_shape,
        input_dtype=input_dtype,
        output_name=out.name,
        output_shape=out_shape,
        preprocessing=pre,
        labels=labels,
    )
    check_output_shape(spec, out_shape)
    if overrides:
        spec = ModelSpec.model_validate({**spec.model_dump(), **overrides})
    return spec


def _guess_task(out_shape: list[int | None]) -> str:
    return "detect" if len(out_shape) == 3 else "classify"


def _class_count(task: str, out_shape: list[int | None]) -> int | None:
    if task == "detect" and len(out_shape) == 3 and out_shape[1]:
        return out_shape[1] - 4
    if task == "classify" and len(out_shape) == 2:
        return out_shape[1]
    return None


def check_output_shape(spec: ModelSpec, shape: list[int | None] | tuple[int, ...]) -> None:
    """Raise SpecError unless `shape` is what the task's decoder expects."""
    if spec.task == "detect":
        ok = len(shape) == 3 and (shape[1] is None or shape[1] == 4 + len(spec.labels))
        want = f"[batch, 4+{len(spec.labels)}, anchors]"
    else:
        ok = len(shape) == 2 and (shape[1] is None or shape[1] == len(spec.labels))
        want = f"[batch, {len(spec.labels)}]"
    if not ok:
        raise SpecError(f"{spec.task} model output has shape {list(shape)}; expected {want}")
