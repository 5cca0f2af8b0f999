"""`visionray stream VIDEO_OR_DEVICE --model NAME`: a camera or video file through ModelStreamInfer.

Frames are read with cv2.VideoCapture (a file, a device number such as 0, or an RTSP/HTTP
URL), JPEG-encoded and sent on one gRPC stream; results come back in order, and frames the
server found stale are dropped there (latest frame wins) and counted in each answer. A file is
sent at its own frame rate, as a camera would (`--rate 0`: as fast as it reads).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time

DEFAULT_GRPC = "127.0.0.1:8002"


def add_stream_command(commands) -> None:
    p = commands.add_parser("stream", help="send a video file or camera to a served model over gRPC, print results")
    p.add_argument("source", help="video file, camera device number (0), or stream URL")
    p.add_argument("--model", "-m", required=True)
    p.add_argument("--grpc", default=DEFAULT_GRPC, help=f"the platform's gRPC address (default {DEFAULT_GRPC})")
    p.add_argument("--version", default="", help="a served version (default: the serving alias's)")
    p.add_argument("--rate", type=float, default=None,
                   help="frames per second to send (default: the file's own rate; 0: as fast as read)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0: all)")
    p.add_argument("--conf", type=float)
    p.add_argument("--jsonl", help="also write one JSON line per answered frame to this file")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.set_defaults(run=run_stream)


def _frames(source: str, rate: float | None, max_frames: int, out: queue.Queue) -> None:
    """Reader thread: encoded frames onto `out` at the pace asked, then None."""
    import cv2

    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    try:
        if not capture.isOpened():
            out.put(RuntimeError(f"cannot open {source!r} (not a video file, device or stream cv2 can read)"))
            return
        if rate is None:
            rate = capture.get(cv2.CAP_PROP_FPS) if not source.isdigit() else 0.0
        interval = 1.0 / rate if rate and rate > 0 else 0.0
        sent, next_at = 0, time.monotonic()
        while not max_frames or sent < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            if interval:
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
            out.put(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
            sent += 1
    finally:
        capture.release()
        out.put(None)


def run_stream(args: argparse.Namespace) -> int:
    import grpc

    from serve.protocols import inference_pb2 as pb
    from serve.protocols import inference_pb2_grpc as pb_grpc
    from serve.protocols.oip import serialize_bytes

    frames: queue.Queue = queue.Queue(maxsize=64)
    threading.Thread(target=_frames, args=(args.source, args.rate, args.max_frames, frames), daemon=True).start()
    errors: list[Exception] = []

    def requests():
        i = 0
        while (frame := frames.get()) is not None:
            if isinstance(frame, Exception):
                errors.append(frame)
                return
            msg = pb.ModelInferRequest(model_name=args.model, model_version=args.version, id=f"frame-{i}")
            msg.inputs.add(name="image", datatype="BYTES", shape=[1])
            msg.raw_input_contents.append(serialize_bytes([frame]))
            if args.conf is not None:
                msg.parameters["conf"].double_param = args.conf
            yield msg
            i += 1

    out = open(args.jsonl, "w") if args.jsonl else None  # noqa: SIM115 - closed below
    answered, failed, last, started = 0, 0, {}, time.monotonic()
    try:
        with grpc.insecure_channel(args.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for answer in stub.ModelStreamInfer(requests()):
                if answer.error_message:
                    failed += 1
                    print(f"{answer.infer_response.id}: error: {answer.error_message}", file=sys.stderr)
                    continue
                answered += 1
                line = _frame_line(answer.infer_response)
                last = line["stream"]
                if out:
                    out.write(json.dumps(line) + "\n")
                if not args.quiet:
                    print(f"{line['id']:>12}  {len(line['detections']):2d} objects  "
                          f"{last['frame_latency_ms']:6.1f} ms  {last['stream_fps']:5.1f} fps  "
                          f"dropped {last['frames_dropped']}  "
                          + ", ".join(f"{d['label']} {d['score']:.2f}" for d in line["detections"][:5]))
    except grpc.RpcError as err:
        print(f"error: gRPC {err.code().name}: {err.details()} ({args.grpc}; is the platform up? make up)",
              file=sys.stderr)
        return 1
    finally:
        if out:
            out.close()
    if errors:
        print(f"error: {errors[0]}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"{answered} frames answered in {elapsed:.1f} s ({answered / elapsed if elapsed else 0:.1f} fps), "
          f"{last.get('frames_dropped', 0)} dropped as stale, {failed} failed", file=sys.stderr)
    return 0 if failed == 0 else 1


def _frame_line(msg) -> dict:
    """One answered frame as a dict: its id, detections (or classes) and the stream's counters."""
    import numpy as np

    from serve.protocols.oip import deserialize_bytes

    tensors = {}
    for tensor, raw in zip(msg.outputs, msg.raw_output_contents):
        if tensor.datatype == "BYTES":
            tensors[tensor.name] = [b.decode() for b in deserialize_bytes(raw)]
        else:
            dtype = {"FP32": np.float32, "INT32": np.int32}[tensor.datatype]
            tensors[tensor.name] = np.frombuffer(raw, dtype).reshape(list(tensor.shape)).tolist()
    stream = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in msg.parameters.items()}
    n = tensors["num_detections"][0] if "num_detections" in tensors else len(tensors.get("labels", []))
    items = [{"label": tensors["labels"][j], "score": round(tensors["scores"][0][j], 4),
              **({"box": tensors["boxes"][0][j]} if "boxes" in tensors else {})} for j in range(n)]
    return {"id": msg.id, "detections": items, "stream": stream}
