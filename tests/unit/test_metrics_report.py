import csv
import io

import numpy as np

from components.metrics.report import Report


def sample_report():
    report = Report(split="test", samples=4)
    report.add_task("inpainting", {"mean_fill": {"psnr": 20.0, "l1": 0.1}, "train_cafin": {"psnr": 25.0, "l1": 0.05}},
                    "mask_bucket", {"0-10%": {"mean_fill": {"psnr": 22.0, "l1": 0.08},
                                              "train_cafin": {"psnr": 27.0, "l1": 0.04}}}, models=["train_cafin"])
    report.grids["inpainting"] = np.zeros((8, 24, 3), np.uint8)
    return report


def test_markdown_marks_the_best_value_per_metric_lower_l1_being_better():
    text = sample_report().markdown()
    assert "| train_cafin | **25.00** | **0.0500** |" in text
    assert "| mean_fill | 20.00 | 0.1000 |" in text and "### 0-10% (mask_bucket)" in text


def test_csv_has_a_row_per_task_group_name_and_metric():
    rows = list(csv.DictReader(io.StringIO(sample_report().csv())))
    assert len(rows) == 8
    assert {"task": "inpainting", "breakdown": "mask_bucket", "group": "0-10%", "name": "train_cafin",
            "metric": "psnr", "value": "27"} in rows


def test_files_hold_the_three_formats_and_the_grid_the_html_page_shows():
    files = sample_report().files()
    assert set(files) == {"report.md", "report.csv", "report.html", "grid_inpainting.png"}
    assert b"<img src='grid_inpainting.png'>" in files["report.html"]


def test_flat_metrics_are_what_the_register_stage_looks_up():
    assert sample_report().flat_metrics()["train_cafin/psnr"] == 25.0


def test_a_metric_without_weights_is_printed_unavailable_and_never_logged_as_a_number():
    report = Report(split="test", samples=2)
    report.add_task("restoration", {"input": {"psnr": 20.0, "lpips": None, "fid": None}}, None, {}, models=[])
    assert "| input | **20.00** | unavailable | unavailable |" in report.markdown()
    assert report.flat_metrics() == {"input/psnr": 20.0}
    assert "unavailable" in report.csv()
