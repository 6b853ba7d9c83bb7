"""The values callers, the proxy, Envoy and the models must agree on, each defined once.

The gRPC service and method names come from the compiled descriptor of ``protos/``; the
detector's output tensors are the model contract every detection model follows (one BYTES
input of encoded images; these four outputs); the image limits are the proxy's defaults, and
Envoy's request limit in front of it is derived from them, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Final

from detect.v1 import detect_pb2, operations_pb2

DETECTOR: Final = detect_pb2.DESCRIPTOR.services_by_name["Detector"]
SERVICE: Final[str] = DETECTOR.full_name  # "detect.v1.Detector"
DETECT: Final[str] = DETECTOR.methods_by_name["Detect"].name
DETECT_BATCH: Final[str] = DETECTOR.methods_by_name["DetectBatch"].name
DETECT_STREAM: Final[str] = DETECTOR.methods_by_name["DetectStream"].name
LIST_MODELS: Final[str] = DETECTOR.methods_by_name["ListModels"].name
OPERATIONS: Final = operations_pb2.DESCRIPTOR.services_by_name["Operations"]
OPERATIONS_SERVICE: Final[str] = OPERATIONS.full_name  # "detect.v1.Operations"
DETECT_PATH: Final[str] = f"/{SERVICE}/{DETECT}"
DETECT_STREAM_PATH: Final[str] = f"/{SERVICE}/{DETECT_STREAM}"

# Request header in which DetectBatch and DetectStream declare how many images they carry:
# Envoy's rate limit charges that many tokens, and the proxy refuses a call carrying more.
DECLARED_IMAGES_HEADER: Final = "x-detect-images"

# Header naming the Triton group a call is for: the proxy sets it on calls to Envoy's egress,
# whose route for each group sends the call to that group's cluster.
GROUP_HEADER: Final = "x-detect-group"

# Caller identity set by Envoy's front (from the client certificate under mTLS).
CLIENT_ID_HEADER: Final = "x-client-id"

# Experiments: the key a caller's variant sticks to (else its client identity), and the
# variant a permitted client forces (tests, debugging).
ROUTING_KEY_HEADER: Final = "x-detect-routing-key"
VARIANT_HEADER: Final = "x-detect-variant"

# Model config parameter by which a detector that is not an ensemble (e.g. a Python-backend
# pipeline) asks to be exposed to callers by default: parameters { key: "expose" value: {
# string_value: "true" } }.
EXPOSE_PARAMETER: Final = "expose"

# Detector outputs: tensor name -> KServe v2 datatype. Row r of a batched answer is image r.
NUM_DETECTIONS: Final = "num_detections"
DETECTION_BOXES: Final = "detection_boxes"
DETECTION_SCORES: Final = "detection_scores"
DETECTION_CLASSES: Final = "detection_classes"
OUTPUTS: Final[dict[str, str]] = {
    NUM_DETECTIONS: "INT32",
    DETECTION_BOXES: "FP32",
    DETECTION_SCORES: "FP32",
    DETECTION_CLASSES: "INT32",
}
INPUT_DATATYPE: Final = "BYTES"

# Image limits (defaults of --max-image-bytes, --max-image-width, --max-image-height).
MAX_IMAGE_BYTES: Final = 8 * 1024 * 1024
MAX_IMAGE_WIDTH: Final = 4096
MAX_IMAGE_HEIGHT: Final = 4096

# Envoy refuses requests over max_image_bytes plus this much (gRPC framing, model name and
# the other fields); anything it forwards is judged by the proxy, whose message names the
# image limit.
REQUEST_HEADROOM_BYTES: Final = 1024 * 1024


def request_limit_bytes(max_image_bytes: int = MAX_IMAGE_BYTES) -> int:
    """Envoy's request body limit for a proxy accepting images up to ``max_image_bytes``."""
    return max_image_bytes + REQUEST_HEADROOM_BYTES
