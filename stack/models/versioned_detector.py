"""A light detector whose versions answer differently, for tests of versions and experiments.

Every version finds one object, the same box, unless its number is listed in the config's
``shifted_versions`` (the box moves elsewhere: an answer that disagrees),
``failing_versions`` (every request fails, as a broken release would) or ``slow_versions``
(each execution takes SLOW_S longer).
"""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

BOX = (8.0, 8.0, 40.0, 40.0)
SHIFTED_BOX = (100.0, 100.0, 140.0, 140.0)
SCORE = 0.9
SLOW_S = 0.3


def _versions(config, key):
    text = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return {int(v) for v in text.split(",") if v.strip()}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version = int(args["model_version"])
        boxes = pb_utils.get_output_config_by_name(config, "detection_boxes")
        self.max_detections = int(boxes["dims"][0])
        self.box = SHIFTED_BOX if version in _versions(config, "shifted_versions") else BOX
        self.fails = version in _versions(config, "failing_versions")
        self.slow = version in _versions(config, "slow_versions")
        self.version = version

    def execute(self, requests):
        if self.slow:
            time.sleep(SLOW_S)
        responses = []
        for request in requests:
            if self.fails:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"version {self.version} is made to fail")))
                continue
            rows = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().shape[0]
            count = np.ones((rows, 1), dtype=np.int32)
            boxes = np.zeros((rows, self.max_detections, 4), dtype=np.float32)
            boxes[:, 0] = self.box
            scores = np.zeros((rows, self.max_detections), dtype=np.float32)
            scores[:, 0] = SCORE
            classes = np.zeros((rows, self.max_detections), dtype=np.int32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("num_detections", count),
                pb_utils.Tensor("detection_boxes", boxes),
                pb_utils.Tensor("detection_scores", scores),
                pb_utils.Tensor("detection_classes", classes),
            ]))
        return responses
