"""The installed `repfuse` package against real ONNX files and ONNX Runtime.

Run by scripts/test_python.sh in a fresh venv holding only the built wheel, onnx,
onnxruntime, numpy and pytest. Fixtures: the small PyTorch exports in
tests/data/fixtures, plus every model under $REPFUSE_MODELS when it is set.
"""

import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import repfuse

REPO = pathlib.Path(__file__).resolve().parents[2]


def fixtures():
    roots = [REPO / "tests/data/fixtures"]
    if os.environ.get("REPFUSE_MODELS"):
        roots.append(pathlib.Path(os.environ["REPFUSE_MODELS"]))
    seen = {}
    for root in roots:
        for p in sorted(root.glob("*/train.onnx")):
            seen.setdefault(p.parent.name, p)
    assert seen, f"no fixtures under {roots}"
    return sorted(seen.values())


DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def ort_run(model, feeds=None):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    if feeds is None:
        rng = np.random.default_rng(11)
        feeds = {i.name: rng.uniform(-1, 1, [d if isinstance(d, int) else 1 for d in i.shape]).astype(DTYPES[i.type]) for i in s.get_inputs()}
    return feeds, s.run(None, feeds)


def engine_bound(report):
    """The ONNX engine's tolerance from the report, relative to max|reference|:
    sigmas * unit, from the model's depth and float type (Tolerance::for_engine)."""
    tract = [v for v in report["verifications"] if v["engine"].startswith("tract")]
    assert tract, f"no ONNX engine check in {report['verifications']}"
    t = tract[0]["verification"]["outputs"][0][1]["tolerance"]
    return t["sigmas"] * t["unit"]


def assert_ort_agrees(original_path, fused, report, what):
    feeds, want = ort_run(str(original_path))
    _, got = ort_run(fused.SerializeToString() if isinstance(fused, onnx.ModelProto) else fused, feeds)
    bound = engine_bound(report)
    assert len(want) == len(got), what
    for a, b in zip(want, got):
        assert a.shape == b.shape, what
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        err, scale = float(np.abs(a64 - b64).max()), float(np.abs(a64).max())
        assert err <= bound * scale, f"{what}: ORT max abs error {err:.3e} over {bound:.2e} x max|y| {scale:.3g}"
    return err / (bound * scale) if scale else 0.0


@pytest.mark.parametrize("path", fixtures(), ids=lambda p: p.parent.name)
def test_every_fixture_fuses_through_the_api_and_onnx_runtime_agrees(path):
    model = onnx.load(str(path))
    before = model.SerializeToString()
    fused, report = repfuse.fuse(model, backend="cpu")
    assert isinstance(fused, onnx.ModelProto)
    assert model.SerializeToString() == before, "fuse changed its input"
    onnx.checker.check_model(fused, full_check=True)
    assert report["passed"] and report["verifications"], report["verification_skipped"]
    r = report["report"]
    assert r["fused"], f"{path.parent.name}: nothing fused"
    assert sum(r["ops_after"].values()) < sum(r["ops_before"].values())
    ratio = assert_ort_agrees(path, fused, report, path.parent.name)
    print(f"{path.parent.name:<32} nodes {sum(r['ops_before'].values()):>5} -> {sum(r['ops_after'].values()):>5}  ORT error at {ratio:.3f} of the bound")


def test_bytes_in_bytes_out_and_path_in_path_out(tmp_path):
    src = REPO / "tests/data/fixtures/z08_acnet/train.onnx"
    fused, report = repfuse.fuse(src.read_bytes(), backend="cpu")
    assert isinstance(fused, bytes)
    assert_ort_agrees(src, fused, report, "bytes")
    out = tmp_path / "deploy.onnx"
    written, report2 = repfuse.fuse(src, output=out)
    assert written == out and out.is_file()
    assert out.read_bytes() == fused, "path and bytes give different models"
    assert report2["report"]["ops_after"] == report["report"]["ops_after"]


def test_a_path_without_output_writes_beside_it(tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes((REPO / "tests/data/fixtures/z01_conv_bn/train.onnx").read_bytes())
    written, _ = repfuse.fuse(str(src), verify=False)
    assert written == str(tmp_path / "m.deploy.onnx") and os.path.isfile(written)


def test_external_data_resolves_beside_the_path():
    src = REPO / "tests/data/fixtures/v03_external_data_dbb/train.onnx"
    info = repfuse.inspect(src)
    assert info["report"]["fused"]
    fused, report = repfuse.fuse(onnx.load(str(src)))
    assert_ort_agrees(src, fused, report, "external data")


def test_verify_and_inspect():
    src = REPO / "tests/data/fixtures/z14_dbb_block/train.onnx"
    model = onnx.load(str(src))
    info = repfuse.inspect(model)
    assert info["nodes"] == len(model.graph.node) and info["report"]["fused"]
    fused, _ = repfuse.fuse(model)
    v = repfuse.verify(model, fused)
    assert v["passed"] and {c["engine"].split(",")[0] for c in v["verifications"]} >= {"CPU reference"}
    # A weight changed by 1e-3 relative: far above f32 rounding, so verify must fail.
    w = next(t for t in fused.graph.initializer if len(t.dims) == 4)
    arr = onnx.numpy_helper.to_array(w) * np.float32(1 + 1e-3)
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    assert not repfuse.verify(model, fused)["passed"]


def test_a_fusion_over_tolerance_raises_and_returns_nothing(tmp_path):
    src = REPO / "tests/data/fixtures/z08_acnet/train.onnx"
    out = tmp_path / "never.onnx"
    with pytest.raises(repfuse.VerificationError, match="over tolerance") as e:
        repfuse.fuse(src, output=out, _inject_fault=True)
    assert not e.value.report["passed"] and not out.exists()
    assert isinstance(e.value, repfuse.RepfuseError)


def test_bad_input_raises_python_exceptions():
    good = (REPO / "tests/data/fixtures/z01_conv_bn/train.onnx").read_bytes()
    with pytest.raises(repfuse.RepfuseError, match="not a valid ONNX model|truncated"):
        repfuse.fuse(good[: len(good) // 2])
    with pytest.raises(repfuse.RepfuseError, match="no-such-file.onnx"):
        repfuse.fuse("/nonexistent/no-such-file.onnx")
    with pytest.raises(TypeError, match="ModelProto, ONNX bytes or a path"):
        repfuse.fuse(42)
    with pytest.raises(ValueError, match="backend"):
        repfuse.fuse(good, backend="tpu")
    model = onnx.load_model_from_string(good)
    var = next(t for t in model.graph.initializer if "running_var" in t.name)
    var.CopyFrom(onnx.numpy_helper.from_array(-np.ones_like(onnx.numpy_helper.to_array(var)), var.name))
    with pytest.raises(repfuse.RepfuseError, match="running_var"):
        repfuse.fuse(model)


def repvgg_chain(blocks, channels, size, seed=0):
    """A training-form RepVGG chain built with onnx.helper: per block a 3x3 conv+BN,
    a 1x1 conv+BN and an identity BN, summed, then ReLU."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "input"

    def param(name, arr):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def bn(prefix, inp, out):
        c = channels
        names = [param(f"{prefix}.{k}", v) for k, v in
                 [("weight", rng.uniform(0.5, 1.5, c)), ("bias", rng.normal(0, 0.1, c)), ("running_mean", rng.normal(0, 0.1, c)), ("running_var", rng.uniform(0.5, 1.5, c))]]
        nodes.append(helper.make_node("BatchNormalization", [inp, *names], [out], name=prefix, epsilon=1e-5))

    for i in range(blocks):
        branches = []
        for k in (3, 1):
            w = param(f"b{i}.conv{k}.weight", rng.normal(0, (channels * k * k) ** -0.5, (channels, channels, k, k)))
            nodes.append(helper.make_node("Conv", [x, w], [f"b{i}.c{k}"], name=f"b{i}.conv{k}", kernel_shape=[k, k], pads=[k // 2] * 4))
            bn(f"b{i}.bn{k}", f"b{i}.c{k}", f"b{i}.y{k}")
            branches.append(f"b{i}.y{k}")
        bn(f"b{i}.bn_id", x, f"b{i}.yid")
        nodes.append(helper.make_node("Sum", [*branches, f"b{i}.yid"], [f"b{i}.sum"], name=f"b{i}.sum"))
        nodes.append(helper.make_node("Relu", [f"b{i}.sum"], [f"b{i}.out"], name=f"b{i}.relu"))
        x = f"b{i}.out"
    nodes.append(helper.make_node("Identity", [x], ["output"], name="out"))
    shape = [1, channels, size, size]
    g = helper.make_graph(nodes, "repvgg_chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_model_built_in_python_fuses_to_one_conv_per_block():
    model = repvgg_chain(4, 16, 24)
    onnx.checker.check_model(model, full_check=True)
    fused, report = repfuse.fuse(model)
    assert [n.op_type for n in fused.graph.node].count("Conv") == 4
    assert not any(n.op_type in ("BatchNormalization", "Sum", "Add") for n in fused.graph.node)
    feeds, want = ort_run(model.SerializeToString())
    _, got = ort_run(fused.SerializeToString(), feeds)
    assert np.abs(want[0] - got[0]).max() <= engine_bound(report) * np.abs(want[0]).max()


def test_the_gil_is_released_while_fusing():
    model = repvgg_chain(8, 32, 48)
    t = time.perf_counter()
    repfuse.fuse(model, backend="cpu")
    alone = time.perf_counter() - t
    assert alone > 0.05, f"the workload ({alone * 1e3:.0f} ms) is too short to show a stall"
    done = []
    worker = threading.Thread(target=lambda: done.append(repfuse.fuse(model, backend="cpu")))
    ticks = [time.perf_counter()]
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
    ticks.append(time.perf_counter())
    assert done, "fuse failed in the thread"
    # Holding the GIL for the whole call would stall this loop for all of it.
    stall = float(np.diff(ticks).max())
    assert stall < alone / 3, f"this thread stalled {stall * 1e3:.0f} ms during a {alone * 1e3:.0f} ms fuse"


def test_python_dash_m_runs_the_same_command(tmp_path):
    src = REPO / "tests/data/fixtures/z08_acnet/train.onnx"
    out = tmp_path / "d.onnx"
    r = subprocess.run([sys.executable, "-m", "repfuse", "fuse", str(src), "-o", str(out), "--verify", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["passed"] is True
    assert out.is_file()
    r = subprocess.run([sys.executable, "-m", "repfuse", "fuse", str(src), "-o", str(out), "--inject-fault", "--verify", "-q"], capture_output=True, text=True)
    assert r.returncode == 2, "over tolerance must exit 2"


def test_the_console_script_is_the_same_command(tmp_path):
    exe = pathlib.Path(sys.executable).with_name("repfuse")
    assert subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.startswith("repfuse ")
    src = REPO / "tests/data/fixtures/z08_acnet/train.onnx"
    out = tmp_path / "d.onnx"
    r = subprocess.run([str(exe), "fuse", str(src), "-o", str(out), "--verify", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.is_file()
    r = subprocess.run([str(exe), "fuse", str(src), "-o", str(out), "--inject-fault", "--verify", "-q"], capture_output=True, text=True)
    assert r.returncode == 2, "over tolerance must exit 2"
