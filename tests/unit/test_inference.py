import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from components.data.schema import decode_png, encode_png
from components.inference import RestoreError, load_restorer, read_mask, restore_paths, restore_photo
from components.models import build_method
from components.models.files import save_model_dir
from components.tasks import INPAINTING, RESTORATION
from pipelines.cli import app


@pytest.fixture
def baseline_dir(tmp_path):
    torch.manual_seed(0)
    method = build_method("baseline", {"width": 8, "depth": 2})
    state, config = method.export()
    save_model_dir(str(tmp_path / "model"), state, {**config, "data": {"resolution": 32, "sr_factor": None}})
    return tmp_path / "model"


@pytest.fixture
def inpainting_dir(tmp_path):
    torch.manual_seed(0)
    method = build_method("cafin", {"width": 8, "depth": 2, "refine_width": 8, "residual_blocks": 1,
                                    "attention_heads": 2, "d_width": 8})
    state, config = method.export()
    save_model_dir(str(tmp_path / "cafin"), state, {**config, "data": {"resolution": 32, "sr_factor": None}})
    return tmp_path / "cafin"


def photo(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_a_photo_of_any_size_comes_back_at_its_own_size(baseline_dir):
    restorer = load_restorer(baseline_dir)
    assert restorer.resolution == 32 and restorer.task is RESTORATION
    assert restore_photo(restorer, photo(50, 70)).shape == (50, 70, 3)


def test_a_folder_with_a_bad_file_restores_the_rest_and_names_the_bad_one(baseline_dir, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(encode_png(photo(40, 40)))
    (folder / "sub" / "b.png").write_bytes(encode_png(photo(36, 48, seed=1)))
    (folder / "notes.txt").write_text("not an image")
    report = restore_paths(load_restorer(baseline_dir), [folder], tmp_path / "out")
    assert sorted(p.name for p, _ in report.written) == ["a.png", "b.png"]
    assert [(p.name, "decodable" in reason) for p, reason in report.failed] == [("notes.txt", True)]
    assert decode_png((tmp_path / "out" / "photos" / "sub" / "b.png").read_bytes()).shape == (36, 48, 3)


def test_a_missing_model_and_a_model_that_is_no_restorer_are_named(tmp_path):
    with pytest.raises(RestoreError, match=str(tmp_path / "nowhere")):
        load_restorer(tmp_path / "nowhere")


def test_a_mask_of_the_wrong_size_is_named_with_both_sizes(tmp_path):
    (tmp_path / "m.png").write_bytes(encode_png(np.zeros((10, 12, 3), np.uint8)))
    with pytest.raises(RestoreError, match=r"m.png is 12x10 but the photo is 20x20"):
        read_mask(tmp_path / "m.png", (20, 20))


def test_restore_command_exits_1_and_lists_the_file_it_could_not_restore(baseline_dir, tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    good.write_bytes(encode_png(photo(32, 32)))
    bad.write_bytes(b"\xff\xd8\xff truncated")
    result = CliRunner().invoke(app, ["restore", str(good), str(bad), "--model", str(baseline_dir),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "bad.jpg" in result.output and "restored 1 photo(s)" in result.output
    assert (tmp_path / "out" / "good.png").exists()


def test_restore_command_names_a_missing_model_folder(tmp_path):
    result = CliRunner().invoke(app, ["restore", str(tmp_path), "--model", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "none" in result.output


def test_inpainting_keeps_every_known_pixel_of_the_full_size_photo(inpainting_dir, tmp_path):
    restorer = load_restorer(inpainting_dir)
    assert restorer.task is INPAINTING
    original = photo(60, 44)
    holes = np.zeros((60, 44), np.uint8)
    holes[20:35, 10:30] = 1
    out = restore_photo(restorer, original, holes)
    assert out.shape == original.shape
    assert np.array_equal(out[holes == 0], original[holes == 0])


def test_an_inpainting_model_without_a_mask_is_refused_naming_the_option(inpainting_dir, tmp_path):
    with pytest.raises(RestoreError, match="--mask"):
        restore_paths(load_restorer(inpainting_dir), [tmp_path], tmp_path / "out")


def test_a_folder_with_one_mask_restores_the_photos_of_its_size_and_names_the_others(inpainting_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "fits.png").write_bytes(encode_png(photo(40, 40)))
    (folder / "other_size.png").write_bytes(encode_png(photo(48, 40)))
    mask = np.zeros((40, 40, 3), np.uint8)
    mask[10:20, 10:20] = 255
    (tmp_path / "mask.png").write_bytes(encode_png(mask))
    report = restore_paths(load_restorer(inpainting_dir), [folder], tmp_path / "out", tmp_path / "mask.png")
    assert [p.name for p, _ in report.written] == ["fits.png"]
    assert [(p.name, "40x40" in reason) for p, reason in report.failed] == [("other_size.png", True)]


def test_a_model_that_does_not_restore_photos_is_refused(tmp_path):
    state, config = build_method("dre", {"width": 4, "dim": 8, "queue_size": 8}).export()
    save_model_dir(str(tmp_path / "dre"), state, {**config, "data": {"resolution": 32}})
    with pytest.raises(RestoreError, match="does not restore photos"):
        load_restorer(tmp_path / "dre")


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
