import pytest
import torch
import torch.nn.functional as F

from components import baselines
from components.metrics.image_quality import psnr
from tests.unit.method_checks import face_batch


@pytest.fixture(scope="module")
def faces():
    return face_batch(n=6, size=32, columns=("hq", "mask", "lr"), super_resolution={"factor": 4})


@pytest.mark.parametrize("inpaint", [baselines.telea, baselines.navier_stokes, baselines.mean_fill])
def test_inpainting_baselines_keep_every_known_pixel_exactly(faces, inpaint):
    out = inpaint(faces["hq"], faces["mask"])
    known = ~faces["mask"].bool().expand_as(out)
    assert out.shape == faces["hq"].shape and torch.equal(out[known], faces["hq"][known])


@pytest.mark.parametrize("inpaint", [baselines.telea, baselines.navier_stokes])
def test_opencv_inpainting_beats_the_mean_colour_inside_the_holes_of_faces(faces, inpaint):
    hq, mask = faces["hq"], faces["mask"]
    ours = torch.nanmean(psnr(inpaint(hq, mask), hq, mask=mask))
    mean = torch.nanmean(psnr(baselines.mean_fill(hq, mask), hq, mask=mask))
    assert ours > mean


def test_opencv_inpainting_ignores_what_lies_under_the_holes(faces):
    hq, mask = faces["hq"], faces["mask"]
    scribbled = torch.where(mask.bool(), torch.rand_like(hq), hq)
    assert torch.equal(baselines.telea(hq, mask), baselines.telea(scribbled, mask))


def test_bicubic_upsamples_by_the_factor_and_beats_nearest_neighbour(faces):
    out = baselines.bicubic(faces["lr"], 4)
    nearest = F.interpolate(faces["lr"], scale_factor=4, mode="nearest")
    assert out.shape == faces["hq"].shape and 0 <= out.min() and out.max() <= 1
    assert psnr(out, faces["hq"]).mean() > psnr(nearest, faces["hq"]).mean()
