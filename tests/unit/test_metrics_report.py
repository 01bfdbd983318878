import csv
import io

import numpy as np
import pytest
import torch

from components.metrics.report import Report, image_grid, text_width, wrap_label


def sample_report(paper_protocol=False):
    report = Report(split="test", samples=4)
    report.add_task("inpainting", {"mean_fill": {"psnr": 20.0, "l1": 0.1}, "train_cafin": {"psnr": 25.0, "l1": 0.05}},
                    "mask_bucket", {"0-10%": {"mean_fill": {"psnr": 22.0, "l1": 0.08},
                                              "train_cafin": {"psnr": 27.0, "l1": 0.04}}}, models=["train_cafin"])
    if paper_protocol:
        report.add_task("inpainting", {"mean_fill": {"psnr": 21.0, "ssim": 0.7, "mae": 0.06},
                                       "train_cafin": {"psnr": 26.0, "ssim": None, "mae": 0.03}},
                        None, {}, models=["train_cafin"], protocol="edgeconnect")
    report.grids["inpainting"] = np.zeros((8, 24, 3), np.uint8)
    return report


def test_markdown_marks_the_best_value_per_metric_lower_l1_being_better():
    text = sample_report().markdown()
    assert "| train_cafin | **25.00** | **0.0500** |" in text
    assert "| mean_fill | 20.00 | 0.1000 |" in text and "### 0-10% (mask_bucket; protocol: project)" in text
    assert "## inpainting (protocol: project)" in text


def test_csv_has_a_row_per_task_group_name_and_metric():
    rows = list(csv.DictReader(io.StringIO(sample_report().csv())))
    assert len(rows) == 8
    assert {"task": "inpainting", "protocol": "project", "breakdown": "mask_bucket", "group": "0-10%",
            "name": "train_cafin", "metric": "psnr", "value": "27"} in rows


def test_files_hold_the_three_formats_and_the_grid_the_html_page_shows():
    files = sample_report().files()
    assert set(files) == {"report.md", "report.csv", "report.html", "grid_inpainting.png"}
    assert b"<img src='grid_inpainting.png'>" in files["report.html"]


def test_flat_metrics_are_what_the_register_stage_looks_up():
    assert sample_report().flat_metrics()["train_cafin/psnr"] == 25.0


def test_a_paper_protocol_has_its_own_table_named_in_every_format_and_its_own_metric_keys():
    report = sample_report(paper_protocol=True)
    text = report.markdown()
    project, paper = text.index("## inpainting (protocol: project)"), text.index("## inpainting (protocol: edgeconnect)")
    assert project < text.index("### 0-10% (mask_bucket; protocol: project)") < paper  # breakdown: project only
    assert "| train_cafin | **26.00** | unavailable | **0.0300** |" in text  # mae: lower is better
    page = report.html()
    assert "<h2>inpainting (protocol: project)</h2>" in page and "<h2>inpainting (protocol: edgeconnect)</h2>" in page
    assert page.count("<img src='grid_inpainting.png'>") == 1
    rows = list(csv.DictReader(io.StringIO(report.csv())))
    assert {"task": "inpainting", "protocol": "edgeconnect", "breakdown": "", "group": "all", "name": "mean_fill",
            "metric": "mae", "value": "0.06"} in rows
    metrics = report.flat_metrics()
    assert metrics["train_cafin/psnr"] == 25.0 and metrics["train_cafin/edgeconnect/psnr"] == 26.0
    assert "train_cafin/edgeconnect/ssim" not in metrics  # unavailable: never logged as a number
    details = report.as_details()
    assert list(details["tasks"]["inpainting"]) == ["project", "edgeconnect"]
    assert details["scores"]["train_cafin"] == {"psnr": 25.0, "l1": 0.05}  # the project protocol's


def test_the_report_command_titles_each_table_with_its_protocol_old_evaluations_included():
    from pipelines.display import report_tables

    import json

    # as the manifest stores them: keys sorted, so "edgeconnect" would come before "project"
    details = json.loads(json.dumps(sample_report(paper_protocol=True).as_details(), sort_keys=True))
    titles = [table.title for table in report_tables(details)]
    assert titles == ["inpainting (protocol: project)", "inpainting - 0-10% (mask_bucket; protocol: project)",
                      "inpainting (protocol: edgeconnect)"]
    before_protocols = {"tasks": {"inpainting": {"models": [], "scores": {"telea": {"psnr": 20.0}},
                                                 "breakdown": None, "groups": {}}}}
    assert [table.title for table in report_tables(before_protocols)] == ["inpainting (protocol: project)"]


def test_a_metric_without_weights_is_printed_unavailable_and_never_logged_as_a_number():
    report = Report(split="test", samples=2)
    report.add_task("restoration", {"input": {"psnr": 20.0, "lpips": None, "fid": None}}, None, {}, models=[])
    assert "| input | **20.00** | unavailable | unavailable |" in report.markdown()
    assert report.flat_metrics() == {"input/psnr": 20.0}
    assert "unavailable" in report.csv()


def grid_columns(count=3, rows=2, size=64):
    """Mid-grey columns (no pixel near black or white), each its own shade."""
    return [torch.full((rows, 3, size, size), 0.3 + 0.1 * i) for i in range(count)]


def test_a_grid_without_labels_is_the_columns_side_by_side_as_before():
    columns = [*grid_columns(2), torch.rand(2, 1, 64, 64)]  # a one-channel column shows grey
    before = torch.cat([torch.cat(list(c.expand(-1, 3, -1, -1)), dim=1) for c in columns], dim=2)
    expected = (before.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    assert np.array_equal(image_grid(columns), expected)
    assert np.array_equal(image_grid(columns, labels=None), expected)


def test_labels_add_a_light_header_strip_above_the_unchanged_images():
    columns = grid_columns()
    plain, labelled = image_grid(columns), image_grid(columns, labels=["telea", "train_cafin", "target"])
    strip = labelled.shape[0] - plain.shape[0]
    assert labelled.shape[1:] == plain.shape[1:] and 8 <= strip <= 64
    assert np.array_equal(labelled[strip:], plain)
    assert (labelled[:strip] > 200).mean() > 0.8  # mostly background: light


def test_each_label_is_dark_text_above_its_own_column():
    columns = grid_columns()
    image = image_grid(columns, labels=["", "telea", ""])
    strip = image[:image.shape[0] - 2 * 64]
    dark = (strip < 100).all(axis=2)
    assert not dark[:, :64].any() and not dark[:, 128:].any()
    xs = np.nonzero(dark.any(axis=0))[0]
    assert len(xs) and 64 < xs.min() and xs.max() < 128
    assert abs((xs.min() + xs.max()) / 2 - 96) <= 4  # centred over its column


def test_a_name_too_long_for_its_column_wraps_and_stays_inside_it():
    short = image_grid(grid_columns(), labels=["", "telea", ""])
    long = image_grid(grid_columns(), labels=["", "train_fusion_inpaint", ""])
    assert long.shape[0] > short.shape[0]  # three lines: a taller strip
    dark = (long[:long.shape[0] - 2 * 64] < 100).all(axis=2)
    assert not dark[:, :64].any() and not dark[:, 128:].any()
    text_rows = np.nonzero(dark.any(axis=1))[0]
    assert text_rows.max() - text_rows.min() > 2 * 8  # over two lines of ~8 px text apart
    assert wrap_label("train_fusion_inpaint", 60, 0.4) == (["train_", "fusion_", "inpaint"], False)
    lines, cut = wrap_label("x" * 40, 60, 0.3)  # one word wider than the column: cut anywhere
    assert cut and all(text_width(line, 0.3) <= 60 for line in lines) and "".join(lines) == "x" * 40


def test_labels_must_match_the_columns():
    with pytest.raises(ValueError, match="2 labels for 3 grid columns"):
        image_grid(grid_columns(), labels=["a", "b"])


def test_the_evaluate_grid_names_each_baseline_and_model_then_the_target():
    from pipelines.stages.evaluate import grid

    target, outputs = grid_columns(1)[0], {"telea": grid_columns(1)[0], "train_cafin": grid_columns(1)[0]}
    image = grid(target, outputs, rows=8)
    assert np.array_equal(image, image_grid([*outputs.values(), target], labels=["telea", "train_cafin", "target"]))
    assert image.shape[0] > 2 * 64
