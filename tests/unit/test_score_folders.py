"""`facerestore score`: two folders matched by file stem, the bad pairs listed and never scored,
the figures those of the protocols called directly."""

import json

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from components.metrics.folders import score_folders
from components.metrics.protocols import CTCNET, EDGECONNECT, PROJECT
from components.metrics.report import format_cell
from pipelines.cli import app

SIZE = (56, 64)  # H, W: above edge-connect's 51 px SSIM window


def face(seed, size=SIZE):
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size[0], 0:size[1]]
    smooth = np.stack([120 + 80 * np.sin(xs / 9.0), 90 + 60 * np.cos(ys / 7.0), 60 + xs + ys / 2], axis=-1)
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


def write(path, rgb):
    """An RGB uint8 image written as the extension says (OpenCV writes BGR)."""
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)


def read(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture
def folders(tmp_path):
    """pred/, target/, masks/: pairs a (png/png) and b (png/jpg, matched by stem); c's mask is
    missing; one name on each side only; a size mismatch; an unreadable prediction; a target stem
    two files share; a text file that is not an image."""
    pred, target, masks = (tmp_path / name for name in ("pred", "target", "masks"))
    for folder in (pred, target, masks):
        folder.mkdir()
    for seed, stem in enumerate("abc"):
        truth = face(seed)
        write(target / (f"{stem}.jpg" if stem == "b" else f"{stem}.png"), truth)
        write(pred / f"{stem}.png", np.clip(truth.astype(int) + np.random.default_rng(10 + seed).integers(
            -30, 31, truth.shape), 0, 255).astype(np.uint8))
        if stem != "c":
            holes = np.zeros(SIZE, np.uint8)
            holes[10:30, 12 + 10 * seed:40 + 10 * seed] = 255
            write(masks / f"{stem}.png", holes)
    write(pred / "only_pred.png", face(5))
    write(target / "only_target.png", face(6))
    write(pred / "small.png", face(7, (40, 40)))
    write(target / "small.png", face(7))
    (pred / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    write(target / "broken.png", face(8))
    write(pred / "dup.png", face(9))
    write(target / "dup.png", face(9))
    write(target / "dup.jpg", face(9))
    (pred / "notes.txt").write_text("not an image")
    return pred, target, masks


def direct(protocol, pred_file, target_file, mask_file=None):
    """The protocol called on the two files as read here: {metric: value}."""
    pred, target = (torch.from_numpy(read(f)).permute(2, 0, 1)[None] for f in (pred_file, target_file))
    mask = None
    if mask_file is not None:
        mask = torch.from_numpy((cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE) > 127).astype(np.float32))[None, None]
    return {metric: values.item() for metric, values in protocol.score(pred, target, mask).items()}


def test_pairs_match_by_stem_and_every_bad_input_is_listed_never_scored(folders):
    pred, target, _ = folders
    result = score_folders(str(pred), str(target), "ctcnet")
    assert [(image.stem, image.pred, image.target) for image in result.images] == [
        ("a", "a.png", "a.png"), ("b", "b.png", "b.jpg"), ("c", "c.png", "c.png")]
    problems = {problem.name: problem.reason for problem in result.problems}
    assert set(problems) == {"dup.jpg, dup.png", "only_pred.png", "only_target.png", "broken.png / broken.png",
                             "small.png / small.png"}
    assert "ambiguous" in problems["dup.jpg, dup.png"]
    assert problems["only_pred.png"] == f"no target named only_pred.* in {target}"
    assert problems["only_target.png"] == f"no prediction named only_target.* in {pred}"
    assert problems["broken.png / broken.png"].startswith("cannot read broken.png: ")
    assert problems["small.png / small.png"] == "size mismatch: prediction 40x40, target 64x56"
    for image in result.images:
        assert image.values == pytest.approx(direct(CTCNET, pred / image.pred, target / image.target), abs=1e-9)


def test_masks_give_the_project_protocol_its_in_hole_scores_and_a_missing_mask_is_listed(folders):
    pred, target, masks = folders
    result = score_folders(str(pred), str(target), "project", mask_dir=str(masks))
    assert [image.stem for image in result.images] == ["a", "b"]
    assert {p.name: p.reason for p in result.problems}["c.png / c.png"] == f"no mask named c.* in {masks}"
    for image in result.images:
        expected = direct(PROJECT, pred / image.pred, target / image.target, masks / f"{image.stem}.png")
        assert set(image.values) == {"psnr", "ssim", "l1", "psnr_hole", "l1_hole"}
        assert image.values == pytest.approx(expected, abs=1e-6)
    means = result.means()
    assert means["psnr_hole"] == pytest.approx(np.mean([image.values["psnr_hole"] for image in result.images]))


def test_a_paper_protocol_does_not_read_the_masks_and_says_so(folders):
    pred, target, masks = folders
    result = score_folders(str(pred), str(target), "edgeconnect", mask_dir=str(masks))
    assert [image.stem for image in result.images] == ["a", "b", "c"]  # c has no mask: not needed here
    assert set(result.images[0].values) == {"psnr", "ssim", "mae"}
    assert any("--mask-dir is not read" in note for note in result.notes)


def test_the_json_holds_the_printed_figures_and_the_problems(folders):
    pred, target, _ = folders
    result = CliRunner().invoke(app, ["score", str(pred), str(target), "--protocol", "edgeconnect", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["protocol"], report["scored"]) == ("edgeconnect", 3)
    for image in report["images"]:
        expected = direct(EDGECONNECT, pred / image["pred"], target / image["target"])
        assert {m: image[m] for m in expected} == pytest.approx(expected, abs=1e-9)
    for metric in ("psnr", "ssim", "mae"):
        assert report["mean"][metric] == pytest.approx(np.mean([image[metric] for image in report["images"]]))
    assert {p["name"] for p in report["problems"]} >= {"only_pred.png", "only_target.png", "small.png / small.png"}


def test_the_table_prints_each_image_and_the_mean(folders):
    pred, target, _ = folders
    result = CliRunner().invoke(app, ["score", str(pred), str(target), "--protocol", "ctcnet"],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    scores = score_folders(str(pred), str(target), "ctcnet")
    lines = result.output.splitlines()
    for image in scores.images:
        row = next(line for line in lines if line.startswith(f"│ {image.stem} "))
        assert format_cell(image.values["psnr"], False) in row and format_cell(image.values["ssim"], False) in row
    mean_row = next(line for line in lines if "mean" in line and "│" in line)
    assert format_cell(scores.means()["psnr"], False) in mean_row
    assert "not scored only_pred.png: no target named only_pred.*" in result.output
    assert "scored 3 image pair(s)" in result.output


def test_nothing_to_score_exits_non_zero_and_a_missing_folder_or_protocol_is_a_usage_error(folders, tmp_path):
    pred, target, _ = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = CliRunner().invoke(app, ["score", str(empty), str(target), "--protocol", "panini", "--json"])
    assert nothing.exit_code == 1 and json.loads(nothing.output)["scored"] == 0
    missing = CliRunner().invoke(app, ["score", str(tmp_path / "nope"), str(target), "--protocol", "panini"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    unknown = CliRunner().invoke(app, ["score", str(pred), str(target), "--protocol", "psnr"], env={"COLUMNS": "250"})
    assert unknown.exit_code == 2 and "known: project, ctcnet, edgeconnect, panini" in unknown.output


def test_identical_images_score_inf_in_json_and_an_unscorable_ssim_is_null(tmp_path):
    pred, target = tmp_path / "pred", tmp_path / "target"
    pred.mkdir()
    target.mkdir()
    write(pred / "same.png", face(1))
    write(target / "same.png", face(1))
    write(pred / "tiny.png", face(2, (40, 40)))
    write(target / "tiny.png", face(3, (40, 40)))
    report = score_folders(str(pred), str(target), "edgeconnect").as_json()
    by_name = {image["name"]: image for image in report["images"]}
    assert by_name["same"]["psnr"] == "inf" and by_name["tiny"]["ssim"] is None
    assert report["mean"]["ssim"] == pytest.approx(by_name["same"]["ssim"])  # the one image it could score
    assert report["mean"]["psnr"] == "inf"
