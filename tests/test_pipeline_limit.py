"""The in-process pipeline limit of loadtest/ runs the ensemble's real steps and answers right."""

from __future__ import annotations

from pathlib import Path

from detect_loadtest import pipeline_limit
from detect_stack import reference_centerface as reference

TESTDATA = Path(__file__).resolve().parent.parent / "build" / "testdata"


def test_the_in_process_pipeline_finds_what_the_reference_finds():
    image = (TESTDATA / "astronaut.png").read_bytes()
    spent = dict.fromkeys(pipeline_limit.STEPS, 0.0)
    answer = pipeline_limit.Pipeline().run([image, image], spent)
    count = int(answer["num_detections"][0, 0])
    ref_boxes, _ = reference.detect(image)
    assert count == len(ref_boxes) == 1
    assert reference.iou(answer["detection_boxes"][0, 0], ref_boxes[0]) >= 0.9
    assert int(answer["num_detections"][1, 0]) == 1
    assert all(seconds > 0 for seconds in spent.values())


def test_measure_reports_each_step_and_a_limit_for_every_core():
    result = pipeline_limit.measure(TESTDATA / "phone-1mp.jpg", seconds=0.4, cores=2)
    steps = result["cpu_ms_per_image"]
    assert [layout["batch"] for layout in result["layouts"]] == [1, 8]
    assert result["images"] >= 2 * result["batch"]
    assert steps["network"] > steps["postprocess"] > 0
    assert steps["total"] >= steps["preprocess"] + steps["network"] + steps["postprocess"] - 0.01
    assert result["limit_images_per_s"] == round(2 * 1000 / steps["total"], 2)
