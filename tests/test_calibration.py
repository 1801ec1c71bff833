"""Calibration inputs: .npz/.npy files, image folders, noise, batching."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from conftest import make_model
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from spa_opt.calibration import Calibration, load_calibration, save_calibration
from spa_opt.errors import InputError
from spa_opt.noise import noise_calibration

F, I64, I32, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL


def passthrough(*inputs: tuple[str, int, list]) -> ir.Model:
    """Each input goes through an Identity to its own output."""
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name, _, _ in inputs]
    return ir.from_proto(make_model(
        nodes,
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(f"{n}_out", t, s) for n, t, s in inputs]))


def embedding(rows: int = 7, cast: bool = False) -> ir.Model:
    """ids [b, seq] -> (Cast ->) Gather(table[rows, 4]); mask [b, seq] and flag [b] pass."""
    table = numpy_helper.from_array(np.arange(rows * 4, dtype=np.float32).reshape(rows, 4), "t")
    nodes = [helper.make_node("Gather", ["t", "ids64" if cast else "ids"], ["emb"]),
             helper.make_node("Identity", ["mask"], ["mask_out"]),
             helper.make_node("Identity", ["flag"], ["flag_out"])]
    if cast:
        nodes.insert(0, helper.make_node("Cast", ["ids"], ["ids64"], to=I64))
    return ir.from_proto(make_model(
        nodes,
        [helper.make_tensor_value_info("ids", I32 if cast else I64, ["b", "seq"]),
         helper.make_tensor_value_info("mask", I64, ["b", "seq"]),
         helper.make_tensor_value_info("flag", B, ["b"])],
        [helper.make_tensor_value_info("emb", F, ["b", "seq", 4]),
         helper.make_tensor_value_info("mask_out", I64, ["b", "seq"]),
         helper.make_tensor_value_info("flag_out", B, ["b"])],
        [table]))


def conv(batch: int | str) -> ir.Model:
    """x [batch, 3, 4, 4] -> Conv 3x3 -> y."""
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    return ir.from_proto(make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", F, [batch, 3, 4, 4])],
        [helper.make_tensor_value_info("y", F, [batch, 2, 2, 2])], [w]))


def session(model: ir.Model) -> ort.InferenceSession:
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(),
                                providers=["CPUExecutionProvider"])


def error(call, *args, **kwargs) -> str:
    """The InputError's message, checked to be one line."""
    with pytest.raises(InputError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def png(path, size: tuple[int, int], color, mode: str = "RGB") -> None:
    Image.new(mode, size, color).save(path)


# ---- .npz / .npy ------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    model = embedding()
    calib = noise_calibration(model, 5, dims={"seq": 6})
    save_calibration(calib, tmp_path / "calib.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["calib.npz"]  # no staging file left
    loaded = load_calibration(tmp_path / "calib.npz", model)
    assert loaded.source == f"npz:{tmp_path / 'calib.npz'}" and loaded.samples == 5
    assert loaded.feeds.keys() == calib.feeds.keys()
    for name, array in calib.feeds.items():
        assert loaded.feeds[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded.feeds[name], array)


def test_save_any_input_name(tmp_path):
    model = passthrough(("file", F, ["n", 2]), ("allow_pickle", F, ["n", 2]))
    calib = noise_calibration(model, 3)
    save_calibration(calib, tmp_path / "c.npz")
    loaded = load_calibration(tmp_path / "c.npz", model)
    np.testing.assert_array_equal(loaded.feeds["file"], calib.feeds["file"])
    assert "must end in .npz" in error(save_calibration, calib, tmp_path / "c.npy")
    assert "no such folder" in error(save_calibration, calib, tmp_path / "nope" / "c.npz")


def test_npz_casts_floats_and_limits(tmp_path):
    model = passthrough(("x", F, ["n", 3]))
    data = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    np.savez(tmp_path / "c.npz", data)  # one input, one array saved without a name
    loaded = load_calibration(tmp_path / "c.npz", model, limit=2)
    assert loaded.feeds["x"].dtype == np.float32 and loaded.samples == 2
    np.testing.assert_array_equal(loaded.feeds["x"], data[:2].astype(np.float32))


def test_npz_keys_naming_no_input_are_refused_with_keys_and_inputs(tmp_path):
    """Issue 16: a file saved for another model was used silently."""
    model = passthrough(("x", F, ["n", 3]))
    np.savez(tmp_path / "c.npz", image=np.zeros((2, 3), np.float32))
    message = error(load_calibration, tmp_path / "c.npz", model)
    assert "no key matches an input name" in message
    assert "['image']" in message and "['x']" in message


def test_npz_integer_ids_cast_in_range(tmp_path):
    model = embedding(cast=True)  # ids are int32
    ids = np.array([[1, 2], [3, 4]], dtype=np.int64)
    feeds = {"ids": ids, "mask": np.ones((2, 2), np.int32), "flag": np.ones(2, bool)}
    np.savez(tmp_path / "c.npz", **feeds)
    loaded = load_calibration(tmp_path / "c.npz", model)
    assert loaded.feeds["ids"].dtype == np.int32 and loaded.feeds["mask"].dtype == np.int64
    np.testing.assert_array_equal(loaded.feeds["ids"], ids)
    np.savez(tmp_path / "big.npz", **{**feeds, "ids": ids + 2**40})
    message = error(load_calibration, tmp_path / "big.npz", model)
    assert "'ids'" in message and "outside the range of int32" in message


def test_npz_key_errors(tmp_path):
    model = passthrough(("x", F, ["n", 2]), ("y", F, ["n", 2]))
    np.savez(tmp_path / "c.npz", x=np.zeros((1, 2), np.float32), z=np.zeros((1, 2), np.float32))
    message = error(load_calibration, tmp_path / "c.npz", model)
    assert "['x', 'y']" in message and "missing ['y']" in message and "extra ['z']" in message


def test_npz_dtype_errors(tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3), np.int64))
    message = error(load_calibration, tmp_path / "c.npz", passthrough(("x", F, ["n", 3])))
    assert message == ("c.npz: 'x' has dtype int64, expected a float array for input 'x' "
                       "(float32)")
    message = error(load_calibration, tmp_path / "c.npz", passthrough(("x", B, ["n", 3])))
    assert "expected a bool array" in message
    np.savez(tmp_path / "f.npz", x=np.zeros((2, 3)))
    message = error(load_calibration, tmp_path / "f.npz", passthrough(("x", I64, ["n", 3])))
    assert "'x' has dtype float64, expected an integer array" in message
    np.savez(tmp_path / "nan.npz", x=np.array([[0.0, np.nan, 1.0]]))
    assert "NaN or inf" in error(load_calibration, tmp_path / "nan.npz",
                                 passthrough(("x", F, ["n", 3])))
    np.savez(tmp_path / "huge.npz", x=np.array([[0.0, 1e6, 1.0]]))
    message = error(load_calibration, tmp_path / "huge.npz",
                    passthrough(("x", TensorProto.FLOAT16, ["n", 3])))
    assert "NaN or inf values as float16" in message


def test_npz_shape_errors(tmp_path):
    model = passthrough(("x", F, ["n", 3, 4]))
    np.savez(tmp_path / "rank.npz", x=np.zeros((2, 12), np.float32))
    assert error(load_calibration, tmp_path / "rank.npz", model) == (
        "rank.npz: 'x' has shape (2, 12), expected rank 3 [n, 3, 4] for input 'x'")
    np.savez(tmp_path / "dim.npz", x=np.zeros((2, 3, 5), np.float32))
    assert error(load_calibration, tmp_path / "dim.npz", model) == (
        "dim.npz: 'x' has shape (2, 3, 5), expected [n, 3, 4] with dim 2 = 4")


def test_npz_sample_counts_and_shared_dims(tmp_path):
    model = passthrough(("a", F, ["n", "seq"]), ("b", F, ["n", "seq"]))
    np.savez(tmp_path / "n.npz", a=np.zeros((2, 3), np.float32), b=np.zeros((3, 3), np.float32))
    assert "differ in samples along axis 0 (a=2, b=3)" in error(
        load_calibration, tmp_path / "n.npz", model)
    np.savez(tmp_path / "s.npz", a=np.zeros((2, 3), np.float32), b=np.zeros((2, 4), np.float32))
    assert "'b' has shape (2, 4), expected [n, seq] with dim 1 = 3" in error(
        load_calibration, tmp_path / "s.npz", model)
    assert "dim 1 = 5" in error(load_calibration, tmp_path / "s.npz", model, dims={"seq": 5})


def test_npy_single_input_only(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 2), np.float32))
    loaded = load_calibration(tmp_path / "x.npy", passthrough(("x", F, ["n", 2])))
    assert loaded.samples == 3 and loaded.source.startswith("npy:")
    model = passthrough(("x", F, ["n", 2]), ("y", F, ["n", 2]))
    assert "use a .npz keyed by input name" in error(load_calibration, tmp_path / "x.npy", model)


def test_path_errors(tmp_path):
    model = passthrough(("x", F, ["n", 2]))
    assert "does not exist" in error(load_calibration, tmp_path / "none.npz", model)
    (tmp_path / "c.csv").write_text("1,2\n")
    assert "expected a folder of images" in error(load_calibration, tmp_path / "c.csv", model)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert "cannot read calibration data" in error(load_calibration, tmp_path / "bad.npz", model)
    np.savez(tmp_path / "c.npz", x=np.zeros((1, 2), np.float32))
    assert "mean/std apply to image folders" in error(
        load_calibration, tmp_path / "c.npz", model, mean=[0.5])
    assert "limit must be at least 1" in error(load_calibration, tmp_path / "c.npz", model,
                                               limit=0)


# ---- batches -----------------------------------------------------------------------------


def test_batch1_model_feeds_one_sample_at_a_time(tmp_path):
    model = conv(1)
    data = np.random.default_rng(0).standard_normal((5, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=data)
    calib = load_calibration(tmp_path / "c.npz", model)
    batches = list(calib.batches(model, 4))
    assert [b["x"].shape for b in batches] == [(1, 3, 4, 4)] * 5
    sess = session(model)
    outputs = [sess.run(None, b)[0] for b in batches]
    dynamic = conv("n")
    stacked = [session(dynamic).run(None, b)[0] for b in calib.batches(dynamic, 2)]
    assert [s.shape[0] for s in stacked] == [2, 2, 1]
    np.testing.assert_allclose(np.concatenate(outputs), np.concatenate(stacked), rtol=1e-6)


def test_fixed_batch_drops_remainder():
    model = passthrough(("x", F, [2, 3]))
    calib = noise_calibration(model, 5)
    assert [b["x"].shape[0] for b in calib.batches(model, 8)] == [2, 2]
    assert "batches of exactly 2" in error(lambda: list(noise_calibration(model, 1)
                                                        .batches(model, 8)))
    assert "at least 1" in error(lambda: list(calib.batches(model, 0)))
    other = passthrough(("y", F, ["n", 3]))
    assert "no data for input(s) y" in error(lambda: list(calib.batches(other, 1)))


def test_subset_copies_first_samples():
    calib = noise_calibration(passthrough(("x", F, ["n", 3])), 6, kind="white")
    part = calib.subset(4, seed=1)
    assert part.samples == 4 and not np.shares_memory(part.feeds["x"], calib.feeds["x"])
    np.testing.assert_array_equal(part.feeds["x"], calib.feeds["x"][:4])
    assert part.source == "noise:white (first 4 of 6)"
    assert calib.subset(10, seed=0).samples == 6


# ---- symbolic dims -----------------------------------------------------------------------


def test_symbolic_dims_need_dims():
    model = passthrough(("x", F, ["n", "seq", 8]))
    message = error(noise_calibration, model, 2)
    assert message == ("input 'x' [n, seq, 8] dim 1 is symbolic: give its size with "
                       "dims={'seq': N}")
    assert noise_calibration(model, 2, dims={"seq": 5}).feeds["x"].shape == (2, 5, 8)
    anonymous = passthrough(("x", F, ["n", None, 8]))
    assert "dims={'x:1': N}" in error(noise_calibration, anonymous, 2)
    assert noise_calibration(anonymous, 3, dims={"x:1": 4}).feeds["x"].shape == (3, 4, 8)
    assert "positive integer" in error(noise_calibration, model, 2, dims={"seq": 0})


# ---- image folders -----------------------------------------------------------------------


def test_images_nchw_gray(tmp_path):
    for name in ["b.png", "a.PNG", "c.jpg"]:
        png(tmp_path / name, (10, 7), 51, mode="L")
    (tmp_path / "notes.txt").write_text("not an image")
    model = passthrough(("x", F, ["n", 1, 6, 5]))
    calib = load_calibration(tmp_path, model)
    assert calib.feeds["x"].shape == (3, 1, 6, 5) and calib.feeds["x"].dtype == np.float32
    assert calib.source == f"images:{tmp_path} (3 files)"
    np.testing.assert_allclose(calib.feeds["x"][:2], np.float32(51 / 255), rtol=1e-6)
    assert load_calibration(tmp_path, model, limit=2).samples == 2


def test_images_sorted_by_name(tmp_path):
    png(tmp_path / "b.png", (4, 4), 200, mode="L")
    png(tmp_path / "a.png", (4, 4), 100, mode="L")
    calib = load_calibration(tmp_path, passthrough(("x", F, ["n", 1, 4, 4])), limit=1)
    np.testing.assert_allclose(calib.feeds["x"], np.float32(100 / 255), rtol=1e-6)


def test_images_nchw_rgb_with_mean_std(tmp_path):
    png(tmp_path / "red.png", (9, 9), (255, 0, 51))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    calib = load_calibration(tmp_path, passthrough(("x", F, ["n", 3, 4, 4])), mean=mean, std=std)
    want = (np.array([255, 0, 51]) / 255 - np.array(mean)) / np.array(std)
    got = calib.feeds["x"][0]
    assert got.shape == (3, 4, 4)
    for channel in range(3):
        np.testing.assert_allclose(got[channel], want[channel], rtol=1e-6)


def test_images_nhwc_with_mean_std(tmp_path):
    png(tmp_path / "c.png", (3, 5), (10, 20, 30))
    calib = load_calibration(tmp_path, passthrough(("x", F, ["n", 4, 4, 3])), mean=[0.5],
                             std=[0.5, 0.25, 0.125])
    got = calib.feeds["x"]
    assert got.shape == (1, 4, 4, 3)
    want = (np.array([10, 20, 30]) / 255 - 0.5) / np.array([0.5, 0.25, 0.125])
    np.testing.assert_allclose(got, np.broadcast_to(want, (1, 4, 4, 3)), rtol=1e-6)


def test_images_symbolic_size_needs_dims(tmp_path):
    png(tmp_path / "a.png", (8, 8), (1, 2, 3))
    model = passthrough(("x", F, ["n", 3, "h", "w"]))
    assert "dims={'h': N}" in error(load_calibration, tmp_path, model)
    calib = load_calibration(tmp_path, model, dims={"h": 2, "w": 3})
    assert calib.feeds["x"].shape == (1, 3, 2, 3)


def test_image_folder_errors(tmp_path):
    model = passthrough(("x", F, ["n", 3, 4, 4]))
    assert "has no images" in error(load_calibration, tmp_path, model)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    message = error(load_calibration, tmp_path, model)
    assert message.startswith(f"cannot read image '{tmp_path / 'broken.png'}'")
    assert "one float input of rank 4" in error(
        load_calibration, tmp_path, passthrough(("x", F, ["n", 3])))
    assert "cannot tell the channel axis" in error(
        load_calibration, tmp_path, passthrough(("x", F, ["n", 8, 4, 4])))
    assert error(load_calibration, tmp_path, model, mean=[0.1, 0.2]) == (
        "mean has 2 values for input 'x': it has 3 channels, give 1 or 3")
    assert "std must be finite and positive" in error(load_calibration, tmp_path, model,
                                                      std=[0.0])


# ---- noise -------------------------------------------------------------------------------


def low_frequency_share(images: np.ndarray) -> float:
    """Share of the spectral power (DC excluded) below 0.1 cycles per pixel."""
    height, width = images.shape[-2:]
    centred = images - images.mean(axis=(-2, -1), keepdims=True)
    power = (np.abs(np.fft.fft2(centred)) ** 2).mean(axis=(0, 1))
    freq = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :])
    return float(power[(freq > 0) & (freq < 0.1)].sum() / power.sum())


def test_pink_noise_mean_std_per_channel():
    mean, std = (0.5, -1.0, 2.0), (0.1, 2.0, 3.0)
    x = noise_calibration(passthrough(("x", F, ["n", 3, 32, 24])), 4, mean=mean,
                          std=std).feeds["x"]
    assert x.shape == (4, 3, 32, 24) and x.dtype == np.float32
    np.testing.assert_allclose(x.mean(axis=(2, 3)), np.broadcast_to(mean, (4, 3)), atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(2, 3)), np.broadcast_to(std, (4, 3)), rtol=1e-5)
    nhwc = noise_calibration(passthrough(("x", F, ["n", 16, 16, 3])), 2, mean=mean,
                             std=std).feeds["x"]
    np.testing.assert_allclose(nhwc.std(axis=(1, 2)), np.broadcast_to(std, (2, 3)), rtol=1e-5)


def test_pink_has_more_low_frequency_power_than_white():
    model = passthrough(("x", F, ["n", 3, 64, 64]))
    pink = noise_calibration(model, 8, kind="pink").feeds["x"]
    white = noise_calibration(model, 8, kind="white").feeds["x"]
    assert abs(white.mean()) < 0.02 and abs(white.std() - 1) < 0.02
    assert low_frequency_share(white) < 0.05  # ~ the disc's share of the plane, 3 %
    assert low_frequency_share(pink) > 0.5


def test_pink_falls_back_to_white_off_images():
    model = passthrough(("x", F, ["n", 5, 7]))
    pink = noise_calibration(model, 3, kind="pink", seed=4).feeds["x"]
    white = noise_calibration(model, 3, kind="white", seed=4).feeds["x"]
    np.testing.assert_array_equal(pink, white)
    assert "it is not an image, give 1" in error(noise_calibration, model, 3, mean=[0, 1])


@pytest.mark.parametrize("cast", [False, True])
def test_integer_ids_bounded_by_embedding(cast):
    model = embedding(rows=7, cast=cast)
    calib = noise_calibration(model, 64, dims={"seq": 16})
    ids, mask, flag = calib.feeds["ids"], calib.feeds["mask"], calib.feeds["flag"]
    assert ids.dtype == (np.int32 if cast else np.int64)
    assert ids.min() == 0 and ids.max() == 6
    assert set(np.unique(mask)) == {0, 1} and mask.dtype == np.int64
    assert flag.dtype == np.bool_ and flag.all() and flag.shape == (64,)
    for batch in calib.batches(model, 16):
        session(model).run(None, batch)  # every id indexes the table


def test_noise_seeds_reproducible():
    model = embedding()
    a = noise_calibration(model, 4, seed=3, dims={"seq": 5})
    b = noise_calibration(model, 4, seed=3, dims={"seq": 5})
    c = noise_calibration(model, 4, seed=4, dims={"seq": 5})
    for name in a.feeds:
        np.testing.assert_array_equal(a.feeds[name], b.feeds[name])
    assert not np.array_equal(a.feeds["ids"], c.feeds["ids"])
    image = passthrough(("x", F, ["n", 3, 8, 8]))
    np.testing.assert_array_equal(noise_calibration(image, 2, seed=9).feeds["x"],
                                  noise_calibration(image, 2, seed=9).feeds["x"])
    assert not np.array_equal(noise_calibration(image, 2, seed=9).feeds["x"],
                              noise_calibration(image, 2, seed=10).feeds["x"])


def test_noise_argument_errors():
    model = passthrough(("x", F, ["n", 3]))
    assert "at least 1" in error(noise_calibration, model, 0)
    assert "'white' or 'pink'" in error(noise_calibration, model, 2, kind="brown")
    scalar = passthrough(("t", F, []), ("x", F, ["n", 3]))
    calib = noise_calibration(scalar, 4)
    assert calib.feeds["t"].shape == () and calib.samples == 4
    assert all(b["t"].shape == () for b in calib.batches(scalar, 3))


def test_calibration_built_by_hand():
    calib = Calibration({"x": np.zeros((3, 2), np.float32)}, "test")
    assert calib.samples == 3
