"""`facerestore restore` here: the output layout, the report, reruns, and what each bad input gets."""

import csv
import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from components.data.schema import decode_png, encode_png
from components.models import build_method
from components.models.files import save_model_dir
from components.restore import RestoreError, RestoreOptions, load_restorer, restore_here
from components.tasks import INPAINTING, RESTORATION
from pipelines.cli import app
from tests.unit.method_checks import TINY_CONFIGS

ALIGNED = RestoreOptions(aligned=True)


def save(method, directory, resolution=32, sr_factor=None):
    state, config = method.export()
    save_model_dir(str(directory), state, {**config, "data": {"resolution": resolution, "sr_factor": sr_factor}})
    return directory


@pytest.fixture
def baseline_dir(tmp_path):
    torch.manual_seed(0)
    return save(build_method("baseline", {"width": 8, "depth": 2}), tmp_path / "model")


@pytest.fixture
def inpainting_dir(tmp_path):
    torch.manual_seed(0)
    return save(build_method("cafin", {"width": 8, "depth": 2, "refine_width": 8, "residual_blocks": 1,
                                       "attention_heads": 2, "d_width": 8}), tmp_path / "cafin")


@pytest.fixture
def sr_dir(tmp_path):
    torch.manual_seed(0)
    method = build_method("ctcnet", {**TINY_CONFIGS["ctcnet"], "scale": 4})
    return save(method, tmp_path / "ctcnet", resolution=32, sr_factor=4)


def photo(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def report_rows(out):
    return list(csv.DictReader(io.StringIO((out / "restore_report.csv").read_text())))


def test_an_aligned_photo_of_any_size_comes_back_at_its_own_size_in_gfpgans_layout(baseline_dir, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "face.jpg").write_bytes(cv2.imencode(".jpg", photo(50, 70))[1].tobytes())
    assert load_restorer(baseline_dir).task is RESTORATION
    summary = restore_here(str(baseline_dir), [str(tmp_path / "in")], str(tmp_path / "out"), ALIGNED)
    out = tmp_path / "out"
    assert decode_png((out / "restored_imgs" / "in" / "face.png").read_bytes()).shape == (50, 70, 3)
    assert decode_png((out / "restored_faces" / "in" / "face_00.png").read_bytes()).shape == (32, 32, 3)
    assert decode_png((out / "cropped_faces" / "in" / "face_00.png").read_bytes()).shape == (32, 32, 3)
    assert decode_png((out / "cmp" / "in" / "face_00.png").read_bytes()).shape == (32, 64, 3)
    [row] = report_rows(out)
    assert row["status"] == "restored" and row["faces"] == "1" and row["input"].endswith("face.jpg")
    assert summary.count("restored") == 1 and not summary.failed


def test_photos_that_differ_only_in_suffix_keep_apart(baseline_dir, tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a.png", "a.jpg", "b.png"):
        (tmp_path / "in" / name).write_bytes(cv2.imencode(name[-4:], photo(32, 32))[1].tobytes())
    restore_here(str(baseline_dir), [str(tmp_path / "in")], str(tmp_path / "out"), ALIGNED)
    written = sorted(p.name for p in (tmp_path / "out" / "restored_imgs" / "in").iterdir())
    assert written == ["a.jpg.png", "a.png.png", "b.png"]


def test_a_rerun_skips_the_photos_already_written_and_restores_the_new_one(baseline_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(encode_png(photo(40, 40)))
    restore_here(str(baseline_dir), [str(folder)], str(tmp_path / "out"), ALIGNED)
    first = (tmp_path / "out" / "restored_imgs" / "photos" / "a.png").stat().st_mtime_ns
    (folder / "b.png").write_bytes(encode_png(photo(40, 40, seed=1)))
    summary = restore_here(str(baseline_dir), [str(folder)], str(tmp_path / "out"), ALIGNED)
    assert [(r.input.rpartition("/")[2], r.status) for r in summary.rows] == [("a.png", "already restored"),
                                                                              ("b.png", "restored")]
    assert (tmp_path / "out" / "restored_imgs" / "photos" / "a.png").stat().st_mtime_ns == first
    assert [r["status"] for r in report_rows(tmp_path / "out")] == ["already restored", "restored"]


def png_header_only(width, height):
    """A PNG whose header claims width x height, with no pixels behind it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def bad_inputs(folder):
    """Every kind of input the issue lists, and what a user should read about it."""
    from PIL import Image

    folder.mkdir()
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "huge.png").write_bytes(png_header_only(10_000, 10_000))
    Image.fromarray(photo(40, 40)).convert("CMYK").save(folder / "cmyk.jpg")
    (folder / "sixteen.png").write_bytes(cv2.imencode(".png", (photo(40, 40).astype(np.uint16) * 257))[1].tobytes())
    (folder / "grey.png").write_bytes(encode_png(photo(40, 40)[..., 0]))
    rgba = np.dstack([photo(40, 40), np.full((40, 40), 128, np.uint8)])
    (folder / "alpha.png").write_bytes(cv2.imencode(".png", rgba)[1].tobytes())
    (folder / "one_pixel.png").write_bytes(encode_png(photo(1, 1)))
    return {"corrupt.jpg": "decodable", "notes.txt": "decodable", "empty.png": "empty",
            "huge.png": "10000x10000 is over max_megapixels"}


def test_each_bad_input_gets_a_row_saying_why_and_the_convertible_ones_are_restored(baseline_dir, tmp_path):
    failing = bad_inputs(tmp_path / "bad")
    summary = restore_here(str(baseline_dir), [str(tmp_path / "bad"), str(tmp_path / "nowhere.png")],
                           str(tmp_path / "out"), ALIGNED)
    rows = {r.input.rpartition("/")[2]: r for r in summary.rows}
    for name, reason in failing.items():
        assert rows[name].status == "failed" and reason in rows[name].reason, (name, rows[name])
    assert rows["nowhere.png"].status == "missing"
    for name in ("cmyk.jpg", "sixteen.png", "grey.png", "alpha.png", "one_pixel.png"):
        assert rows[name].status == "restored", (name, rows[name])
        written = decode_png((tmp_path / "out" / "restored_imgs" / "bad" / f"{name.rsplit('.', 1)[0]}.png").read_bytes())
        assert written.ndim == 3 and written.shape[2] == 3
    assert len(report_rows(tmp_path / "out")) == len(rows)


def test_restore_command_exits_1_lists_the_file_it_could_not_restore_and_names_the_report(baseline_dir, tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    good.write_bytes(encode_png(photo(32, 32)))
    bad.write_bytes(b"\xff\xd8\xff truncated")
    result = CliRunner().invoke(app, ["restore", str(good), str(bad), "--model", str(baseline_dir), "--aligned",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "bad.jpg" in result.output and "restored 1 photo(s), 1 face(s)" in result.output
    assert "restore_report.csv" in result.output
    assert (tmp_path / "out" / "restored_imgs" / "good.png").exists()


def test_restore_command_names_a_missing_model_folder(tmp_path):
    result = CliRunner().invoke(app, ["restore", str(tmp_path), "--model", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "none" in result.output


def test_inpainting_keeps_every_known_pixel_of_the_full_size_photo(inpainting_dir, tmp_path):
    assert load_restorer(inpainting_dir).task is INPAINTING
    original = photo(60, 44)
    (tmp_path / "p.png").write_bytes(encode_png(original))
    holes = np.zeros((60, 44, 3), np.uint8)
    holes[20:35, 10:30] = 255
    (tmp_path / "mask.png").write_bytes(encode_png(holes))
    restore_here(str(inpainting_dir), [str(tmp_path / "p.png")], str(tmp_path / "out"), ALIGNED, str(tmp_path / "mask.png"))
    out = decode_png((tmp_path / "out" / "restored_imgs" / "p.png").read_bytes())
    known = holes[..., 0] == 0
    assert out.shape == original.shape and np.array_equal(out[known], original[known])
    assert not np.array_equal(out[~known], original[~known])


def test_an_inpainting_model_without_a_mask_is_refused_naming_the_option(inpainting_dir, tmp_path):
    with pytest.raises(RestoreError, match="--mask"):
        restore_here(str(inpainting_dir), [str(tmp_path)], str(tmp_path / "out"), ALIGNED)


def test_a_mask_of_another_size_fails_that_photo_naming_both_sizes(inpainting_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "fits.png").write_bytes(encode_png(photo(40, 40)))
    (folder / "other_size.png").write_bytes(encode_png(photo(48, 40)))
    mask = np.zeros((40, 40, 3), np.uint8)
    mask[10:20, 10:20] = 255
    (tmp_path / "mask.png").write_bytes(encode_png(mask))
    summary = restore_here(str(inpainting_dir), [str(folder)], str(tmp_path / "out"), ALIGNED, str(tmp_path / "mask.png"))
    assert [(r.input.rpartition("/")[2], r.status) for r in summary.rows] == [("fits.png", "restored"),
                                                                              ("other_size.png", "failed")]
    assert "the mask is 40x40 but the photo is 40x48" in summary.rows[1].reason


def test_a_mask_folder_gives_each_photo_its_own_mask_by_file_stem_and_a_photo_without_one_fails_alone(
        inpainting_dir, tmp_path):
    photos, masks = tmp_path / "photos", tmp_path / "masks"
    photos.mkdir(), masks.mkdir()
    holes = {}
    for k, name in enumerate(("a", "b", "c", "d")):
        (photos / f"{name}.jpg").write_bytes(cv2.imencode(".jpg", photo(40, 40, seed=k))[1].tobytes())
        holes[name] = np.zeros((40, 40), np.uint8)
        holes[name][5 + 5 * k:15 + 5 * k, 10:30] = 1  # each photo's holes elsewhere
    for name in ("a", "b"):
        (masks / f"{name}.png").write_bytes(encode_png(holes[name] * 255))
    (masks / "c.png").write_bytes(encode_png(holes["c"] * 255))
    (masks / "c.jpg").write_bytes(cv2.imencode(".jpg", holes["c"] * 255)[1].tobytes())  # two masks named c
    summary = restore_here(str(inpainting_dir), [str(photos)], str(tmp_path / "out"), ALIGNED, str(masks))
    rows = {r.input.rpartition("/")[2]: r for r in summary.rows}
    assert {name: row.status for name, row in rows.items()} == {"a.jpg": "restored", "b.jpg": "restored",
                                                                 "c.jpg": "failed", "d.jpg": "failed"}
    assert "masks c.jpg, c.png in" in rows["c.jpg"].reason and "ambiguous" in rows["c.jpg"].reason
    assert rows["d.jpg"].reason == f"no mask named d.* in {masks}"
    for name in ("a", "b"):  # the known pixels kept are those of that photo's own mask
        given = cv2.imdecode(np.frombuffer((photos / f"{name}.jpg").read_bytes(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        out = decode_png(Path(rows[f"{name}.jpg"].output).read_bytes())
        known = holes[name] == 0
        assert np.array_equal(out[known], given[known])
        assert not np.array_equal(out[holes[name] == 1], given[holes[name] == 1])


def test_an_sr_model_writes_sr_factor_times_larger_and_refuses_an_output_over_the_limit(sr_dir, tmp_path):
    restorer = load_restorer(sr_dir)
    assert restorer.sr_factor == 4 and restorer.input_side == 8
    (tmp_path / "small.png").write_bytes(encode_png(photo(12, 10)))
    (tmp_path / "big.png").write_bytes(encode_png(photo(60, 50)))
    summary = restore_here(str(sr_dir), [str(tmp_path / "small.png"), str(tmp_path / "big.png")], str(tmp_path / "out"),
                           RestoreOptions(aligned=True, max_output_pixels=10_000))
    assert decode_png((tmp_path / "out" / "restored_imgs" / "small.png").read_bytes()).shape == (48, 40, 3)
    assert summary.rows[1].status == "failed" and "200x240 (48,000 pixels)" in summary.rows[1].reason


def test_a_model_that_does_not_restore_photos_is_refused(tmp_path):
    state, config = build_method("dre", {"width": 4, "dim": 8, "queue_size": 8}).export()
    save_model_dir(str(tmp_path / "dre"), state, {**config, "data": {"resolution": 32}})
    with pytest.raises(RestoreError, match="does not restore photos"):
        load_restorer(tmp_path / "dre")


def test_the_default_device_is_cuda_where_there_is_one_and_a_device_that_is_not_there_is_refused(baseline_dir):
    with pytest.raises(RestoreError, match="--device gpu: use cpu or cuda"):
        load_restorer(baseline_dir, "gpu")
    if torch.cuda.is_available():
        assert load_restorer(baseline_dir).device == "cuda"
    else:
        with pytest.raises(RestoreError, match="--device cuda"):
            load_restorer(baseline_dir, "cuda")
        assert load_restorer(baseline_dir).device == "cpu"
    assert load_restorer(baseline_dir, "cpu").device == "cpu"


def test_faces_go_through_the_network_in_batches(baseline_dir, tmp_path):
    restorer = load_restorer(baseline_dir)
    sizes = []
    restore = restorer.model.restore
    restorer.model.restore = lambda batch: sizes.append(len(batch["lq"])) or restore(batch)
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(5):
        (folder / f"{k}.png").write_bytes(encode_png(photo(32, 32, seed=k)))
    from components.restore import PhotoRestorer

    results = list(PhotoRestorer(restorer, RestoreOptions(aligned=True, batch_size=2)).restore(
        [str(p) for p in sorted(folder.iterdir())]))
    assert sizes == [2, 2, 1] and [r.status for _, r in results] == ["restored"] * 5


def test_the_pyfunc_model_feeds_the_model_as_its_task_says(baseline_dir, inpainting_dir):
    from components.models.files import load_model_dir
    from components.tracking.pyfunc_model import _load_pyfunc

    lq = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    restored = _load_pyfunc(str(baseline_dir)).predict({"lq": lq})
    expected = load_model_dir(str(baseline_dir)).restore({"lq": torch.from_numpy(lq), "mask": torch.zeros(2, 1, 32, 32)})
    assert np.array_equal(restored, expected.numpy())
    with pytest.raises(ValueError, match="reads its image as 'lq'"):
        _load_pyfunc(str(baseline_dir)).predict({"lr": lq})
    with pytest.raises(ValueError, match="'inpainting' model needs the holes"):
        _load_pyfunc(str(inpainting_dir)).predict({"lq": lq})


def test_the_astronaut_photo_gets_its_face_found_restored_and_pasted_back_by_the_command(baseline_dir, tmp_path):
    from skimage import data

    astronaut = data.astronaut()
    (tmp_path / "astronaut.jpg").write_bytes(cv2.imencode(".jpg", astronaut[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1])
    (tmp_path / "empty_wall.png").write_bytes(encode_png(np.full((300, 400, 3), 200, np.uint8)))
    (tmp_path / "one_pixel.png").write_bytes(encode_png(photo(1, 1)))
    result = CliRunner().invoke(app, ["restore", str(tmp_path / "astronaut.jpg"), str(tmp_path / "empty_wall.png"),
                                      str(tmp_path / "one_pixel.png"), "--model", str(baseline_dir),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "restored 1 photo(s), 1 face(s)" in result.output and "2 with no face" in result.output
    out = tmp_path / "out"
    restored = decode_png((out / "restored_imgs" / "astronaut.png").read_bytes())
    jpeg = cv2.imdecode(np.frombuffer((tmp_path / "astronaut.jpg").read_bytes(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    changed = np.any(restored != jpeg, axis=2)
    rows, cols = np.nonzero(changed)
    # only the face changed: the region MTCNN finds (box about x 180-268, y 61-172), and its margin
    assert 120 < cols.min() and cols.max() < 330 and 0 <= rows.min() and rows.max() < 250
    assert changed[100:140, 200:250].mean() > 0.9  # the eyes and nose: the model wrote them
    assert decode_png((out / "restored_faces" / "astronaut_00.png").read_bytes()).shape == (32, 32, 3)
    assert np.array_equal(decode_png((out / "restored_imgs" / "empty_wall.png").read_bytes()),
                          np.full((300, 400, 3), 200, np.uint8))
    statuses = {r["input"].rpartition("/")[2]: (r["status"], r["reason"]) for r in report_rows(out)}
    assert statuses["empty_wall.png"] == ("no face", "no face found: written unchanged")
    assert statuses["one_pixel.png"][0] == "no face"
    # a ~90 px face through a 32 px model: the row says its detail is the model's
    status, reason = statuses["astronaut.jpg"]
    assert status == "restored" and reason.startswith("1 face(s) restored at the model's 32 px and enlarged back up to ")


def test_an_sr_model_enlarges_the_photo_by_lanczos_and_pastes_its_faces_from_the_model(sr_dir, tmp_path):
    from skimage import data

    small = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    (tmp_path / "small.png").write_bytes(encode_png(small))
    summary = restore_here(str(sr_dir), [str(tmp_path / "small.png")], str(tmp_path / "out"))
    assert summary.rows[0].faces == 1
    out = decode_png((tmp_path / "out" / "restored_imgs" / "small.png").read_bytes())
    lanczos = cv2.resize(small, (1024, 1024), interpolation=cv2.INTER_LANCZOS4)
    changed = np.any(out != lanczos, axis=2)
    rows, cols = np.nonzero(changed)
    # the face (about x 180-268, y 61-172 at 512 px: twice that here) and nothing else
    assert 240 < cols.min() and cols.max() < 660 and rows.max() < 500
    assert changed[220:260, 420:480].mean() > 0.9
    assert decode_png((tmp_path / "out" / "cmp" / "small_00.png").read_bytes()).shape == (32, 64, 3)
    # its ~44 px face (~170 px of photo around it) through a 16 -> 32 px model: named by its output side
    assert summary.rows[0].reason.startswith("1 face(s) restored at the model's 32 px and enlarged back up to ")


def test_only_faces_enlarged_over_4x_get_the_note_with_the_largest_enlargement():
    from components.restore.alignment import FaceRegion
    from components.restore.photos import enlarged_faces_note

    def region(scale):
        return FaceRegion(np.eye(2, 3) / scale, np.eye(2, 3) * scale, 32, (0, 0, 1, 1))

    assert enlarged_faces_note([region(1.0), region(3.9)], 64) == []
    assert enlarged_faces_note([region(2.0), region(4.5), region(6.3)], 64) == [
        "2 face(s) restored at the model's 64 px and enlarged back up to 6.3x: a model trained at a larger "
        "resolution keeps more of their detail"]


# -- the onnxruntime backend ---------------------------------------------------------------------
def test_the_onnxruntime_backend_restores_a_photo_as_torch_does_without_running_torchs_network(baseline_dir, tmp_path,
                                                                                              monkeypatch):
    from skimage import data

    from components.export.onnx import export_onnx
    from components.models.baseline import Baseline

    (tmp_path / "astronaut.png").write_bytes(encode_png(data.astronaut()))
    by_torch = restore_here(str(baseline_dir), [str(tmp_path / "astronaut.png")], str(tmp_path / "torch"))
    export_onnx(str(baseline_dir))

    def not_torch(self, batch):
        raise AssertionError("the torch network ran")

    monkeypatch.setattr(Baseline, "restore", not_torch)
    assert load_restorer(baseline_dir, backend="onnxruntime").backend == "onnxruntime"
    by_onnx = restore_here(str(baseline_dir), [str(tmp_path / "astronaut.png")], str(tmp_path / "onnx"),
                           backend="onnxruntime")
    assert [r.faces for r in by_onnx.rows] == [r.faces for r in by_torch.rows] == [1]
    for folder in ("restored_imgs", "restored_faces"):
        for written in (tmp_path / "torch" / folder).iterdir():
            a = decode_png(written.read_bytes()).astype(int)
            b = decode_png((tmp_path / "onnx" / folder / written.name).read_bytes()).astype(int)
            assert a.shape == b.shape and np.abs(a - b).max() <= 1, (folder, written.name)


def test_the_onnxruntime_backend_keeps_every_known_pixel_of_an_inpainted_photo(inpainting_dir, tmp_path):
    from components.export.onnx import export_onnx

    export_onnx(str(inpainting_dir))
    original = photo(40, 40)
    (tmp_path / "p.png").write_bytes(encode_png(original))
    holes = np.zeros((40, 40, 3), np.uint8)
    holes[10:25, 12:30] = 255
    (tmp_path / "mask.png").write_bytes(encode_png(holes))
    outs = {}
    for backend in ("torch", "onnxruntime"):
        restore_here(str(inpainting_dir), [str(tmp_path / "p.png")], str(tmp_path / backend), ALIGNED,
                     str(tmp_path / "mask.png"), backend=backend)
        outs[backend] = decode_png((tmp_path / backend / "restored_imgs" / "p.png").read_bytes()).astype(int)
    known = holes[..., 0] == 0
    assert np.array_equal(outs["onnxruntime"][known], original[known])
    assert np.abs(outs["onnxruntime"] - outs["torch"]).max() <= 1


def test_the_onnxruntime_backend_without_model_onnx_says_how_to_export_it(baseline_dir):
    with pytest.raises(RestoreError, match=r"no model.onnx: run `facerestore export .* --format onnx`"):
        load_restorer(baseline_dir, backend="onnxruntime")
    with pytest.raises(RestoreError, match="--backend tensorrt: use torch or onnxruntime"):
        load_restorer(baseline_dir, backend="tensorrt")
