import pytest

from components.data.mask_buckets import MASK_BUCKETS, mask_bucket


def test_buckets_run_in_steps_of_ten_percent_up_to_sixty_and_over():
    assert MASK_BUCKETS == ("0-10%", "10-20%", "20-30%", "30-40%", "40-50%", "50-60%", "60%+")


@pytest.mark.parametrize(
    "ratio, bucket",
    [
        (0.0, "0-10%"),
        (0.0999, "0-10%"),
        (0.1, "10-20%"),
        (0.15, "10-20%"),
        (0.3, "30-40%"),
        (0.5999, "50-60%"),
        (0.6, "60%+"),
        (0.65, "60%+"),
        (1.0, "60%+"),
    ],
)
def test_each_bucket_holds_its_lower_edge_and_not_its_upper(ratio, bucket):
    assert mask_bucket(ratio) == bucket


def test_ratios_outside_the_unit_interval_are_rejected():
    with pytest.raises(ValueError, match="1.5"):
        mask_bucket(1.5)
    with pytest.raises(ValueError):
        mask_bucket(-0.01)
