"""object_detector version 2: NanoDet-g at 320x320, running nanodet version 2.

Everything but the input size is shared by the versions, in ../detector.py.
"""

import os
import types

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "detector.py")
_detector = types.ModuleType("object_detector_detector")
_detector.__file__ = _PATH
with open(_PATH) as _source:
    # Compiled here, not imported: an import would leave a __pycache__ folder in the model's
    # folder, where Triton looks for versions.
    exec(compile(_source.read(), _PATH, "exec"), _detector.__dict__)


class TritonPythonModel(_detector.ObjectDetector):
    network_input_size = 320
