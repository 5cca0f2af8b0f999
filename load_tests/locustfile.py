"""locust scenarios against a running visionray (FastHttpUser: a cheap client, so the
load generator takes little of the CPU the server needs).

    locust -f load_tests/locustfile.py --headless -u 8 -r 8 -t 60s -H http://127.0.0.1:8000 \\
           --csv load_tests/results/run --html load_tests/results/run.html

User classes (pick some by name after the options; default: all of them):
  Detect     POSTs detector images, a mix of sizes and formats (JPEG and PNG)
  Classify   POSTs classifier images
Options: --detect-model / --classify-model (default: the demo models), --image FILE
(repeatable; replaces the image mix, e.g. bus.jpg for the benchmark). A ramp:
`-f load_tests/locustfile.py,load_tests/ramp.py`.
"""

from __future__ import annotations

import random
from pathlib import Path

import cv2
from locust import FastHttpUser, constant, events, task

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = PROJECT_ROOT / "demo_models" / "samples"
SHARED_BUS = PROJECT_ROOT.parent / "shared" / "models" / "images" / "bus.jpg"


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--detect-model", default="shapes-detector", help="detector to load")
    parser.add_argument("--classify-model", default="shapes-classifier", help="classifier to load")
    parser.add_argument("--image", action="append", default=[], help="image file to send (repeatable)")


def _payload(path: Path) -> tuple[bytes, str]:
    kind = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    return path.read_bytes(), kind


def image_mix(kind: str) -> list[tuple[bytes, str]]:
    """Sizes and formats a camera fleet sends: the demo samples as JPEG and re-encoded as PNG."""
    if kind == "detect":
        files = sorted(SAMPLES.glob("shapes_*.jpg")) + ([SHARED_BUS] if SHARED_BUS.is_file() else [])
    else:
        files = [p for p in sorted(SAMPLES.glob("*.jpg")) if not p.name.startswith("shapes_")]
    mix = [_payload(p) for p in files]
    for path in files:
        mix.append((cv2.imencode(".png", cv2.imread(str(path)))[1].tobytes(), "image/png"))
    return mix


class VisionUser(FastHttpUser):
    abstract = True
    # Closed loop: each user sends its next request when the previous answers, so
    # `-u N` is exactly concurrency N.
    wait_time = constant(0)
    kind = ""

    def on_start(self):
        options = self.environment.parsed_options
        self.model = options.detect_model if self.kind == "detect" else options.classify_model
        files = options.image
        self.images = [_payload(Path(f)) for f in files] if files else image_mix(self.kind)

    def predict(self):
        data, content_type = random.choice(self.images)
        with self.client.post(f"/v1/models/{self.model}/predict", data=data, headers={"content-type": content_type},
                              name=f"{self.kind} {self.model}", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif response.json().get("task") != self.kind:
                response.failure(f"unexpected answer: {response.text[:200]}")


class Detect(VisionUser):
    kind = "detect"

    @task
    def detect(self):
        self.predict()


class Classify(VisionUser):
    kind = "classify"

    @task
    def classify(self):
        self.predict()
