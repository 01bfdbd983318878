import torch

from components.networks.inputs import ALL_MISSING_FILL, fill_holes, model_input


def batch_with_hole():
    torch.manual_seed(0)
    lq = torch.rand(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 3:7] = 1.0
    return lq, mask


def test_fill_holes_keeps_known_pixels():
    lq, mask = batch_with_hole()
    filled = fill_holes(lq, mask)
    known = (mask == 0).expand_as(lq)
    assert torch.equal(filled[known], lq[known])


def test_fill_holes_fills_holes_with_each_images_known_pixel_mean_per_channel():
    lq, mask = batch_with_hole()
    filled = fill_holes(lq, mask)
    for n in range(lq.shape[0]):
        known = mask[n, 0] == 0
        for c in range(3):
            expected = lq[n, c][known].mean()
            assert torch.allclose(filled[n, c][~known], expected.expand(int((~known).sum())), atol=1e-6)


def test_an_all_masked_image_is_filled_with_mid_grey_and_no_nan():
    lq = torch.rand(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[0] = 1.0
    filled = fill_holes(lq, mask)
    assert not torch.isnan(filled).any()
    assert torch.all(filled[0] == ALL_MISSING_FILL)
    assert torch.equal(filled[1], lq[1])


def test_model_input_is_filled_rgb_then_mask():
    lq, mask = batch_with_hole()
    x = model_input({"lq": lq, "mask": mask})
    assert x.shape == (2, 4, 8, 8)
    assert torch.equal(x[:, :3], fill_holes(lq, mask))
    assert torch.equal(x[:, 3:], mask)


def test_paste_known_keeps_known_pixels_and_takes_only_the_holes_from_the_output():
    from components.networks.inputs import paste_known

    image, output = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 3:6] = 1
    pasted = paste_known(output, image, mask)
    hole = mask.bool().expand_as(image)
    assert torch.equal(pasted[~hole], image[~hole]) and torch.equal(pasted[hole], output[hole])
