"""benchmarks/gpu_check.py: the grid estimate from measured rates, and the whole script at
smoke size on the CPU."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import gpu_check  # noqa: E402


def test_grid_estimate_applies_the_cost_model() -> None:
    measured = {
        "run_jpeg": {"train": {"images_per_s": 1000.0}, "cam_extraction": {"images_per_s": 2000.0}},
        "train_end_to_end": {"fixed_seconds": 30.0, "wall_seconds": 40.0,
                             "timings": {"train_seconds": 6.0, "cam_val_seconds": 2.0, "cam_test_seconds": 2.0}},
        "packed3": {"aggregate": {"train_images_per_s_sum": 1500.0, "cam_images_per_s_sum": 3000.0,
                                  "train_windows_overlap_s": 5.0}},
        # 5 runs: training 2x faster per run (15 s for 5 x 6 s), CAMs as fast, 100 s of wall
        "fused": {"k": 5, "train_images_per_s_aggregate": 2000.0, "cam_images_per_s_aggregate": 4000.0,
                  "train_seconds": 15.0, "cam_seconds": 20.0, "wall_seconds": 100.0, "fixed_seconds_per_run": 6.0},
    }
    out = gpu_check.grid_estimate(measured)
    grid = gpu_check.GRID
    one = out["one_run_at_a_time"]
    assert one["training_h"] == pytest.approx(grid["train_images"] / 1000 / 3600, abs=0.01)
    assert one["fixed_h"] == pytest.approx(grid["runs"] * 30 / 3600, abs=0.01)
    assert one["total_h"] == pytest.approx(one["training_h"] + one["cams_h"] + one["fixed_h"], abs=0.02)
    assert out["packed_3"]["fixed_h"] == pytest.approx(one["fixed_h"] / 3, abs=0.01)
    fused = out["fused_lrs"]
    assert fused["fused_runs"]["training_h"] == pytest.approx(grid["fusable_train_images"] / 2000 / 3600, abs=0.01)
    assert fused["fused_runs"]["cams_h"] == pytest.approx(grid["fusable_cams"] / 2000 / 3600, abs=0.01)
    assert fused["fused_runs"]["speedup_per_run"] == {"training": 2.0, "cams": 1.0, "wall": 2.0}
    assert fused["total_h"] < one["total_h"]
    assert "missing" in gpu_check.grid_estimate({})
    # packed runs whose timed windows did not overlap measured no packed throughput
    measured["packed3"]["aggregate"]["train_windows_overlap_s"] = -2.0
    assert "not_estimated" in gpu_check.grid_estimate(measured)["packed_3"]
    # a run that scored 2,000 images per split, D_test's CPU work taking 1 s (0.5 ms per image,
    # not overlapped): 29 s of fixed cost per run, plus 0.5 ms per evaluated image of the grid
    measured["data"] = {"eval_images_per_split": 2000}
    measured["train_end_to_end"]["timings"]["score_test_seconds"] = 1.0
    scaled = gpu_check.grid_estimate(measured)
    assert scaled["inputs"]["t_run_seconds_at_paper_scale"] == pytest.approx(29.0 + 25_000 * 0.0005)
    assert scaled["one_run_at_a_time"]["fixed_h"] == pytest.approx(
        (grid["runs"] * 29.0 + grid["cams"] * 0.0005) / 3600, abs=0.01)
    assert "validation_h" not in scaled["one_run_at_a_time"]
    # fastai's validation passes, at the rate the run measured
    measured["train_end_to_end"]["timings"]["validate_images_per_s"] = 1000.0
    valid = gpu_check.grid_estimate(measured)
    assert valid["one_run_at_a_time"]["validation_h"] == pytest.approx(grid["valid_images"] / 1000 / 3600, abs=0.01)
    assert valid["one_run_at_a_time"]["total_h"] == pytest.approx(
        scaled["one_run_at_a_time"]["total_h"] + valid["one_run_at_a_time"]["validation_h"], abs=0.02)


@pytest.mark.slow
def test_smoke_mode_measures_every_section(tmp_path: Path, capsys) -> None:
    assert gpu_check.main(["--smoke", "--json", "--no-compile", "--out", str(tmp_path / "check.json"),
                           "--workdir", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "check.json").read_text())
    for name in ("bare_loop", "run_jpeg", "train_end_to_end", "fused", "maxboxacc", "run_prepared", "packed3",
                 "train_end_to_end_best", "train_end_to_end_prepared"):
        assert "error" not in printed[name] and "skipped" not in printed[name], (name, printed[name])
    assert printed["fused"]["train_images_per_s_aggregate"] > 0 and printed["fused"]["k"] == 2
    assert printed["grid_estimate"]["fused_lrs"]["total_h"] > 0
    assert printed["train_end_to_end_prepared"]["timings"]["validate_images_per_s"] > 0
    assert printed["grid_estimate"]["one_run_at_a_time"]["validation_h"] > 0
