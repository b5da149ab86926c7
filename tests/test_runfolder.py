"""The run-folder module: every file kind written and read back, on-disk names and JSON layout
as before, and damaged or missing files named with how to redo the run."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from inatloc_nb.core.errors import InatlocError, ResultsError
from inatloc_nb.metrics import BoxAccuracy
from inatloc_nb.training.cam import CamSet
from inatloc_nb.training.run_config import RunConfig
from inatloc_nb.runs.runfolder import (
    IDENTITY_KEYS, REDO_RUN, RunFolder, analysis_frame, metrics_block, read_json, read_table, run_folder,
    run_identity,
)


def _camset(split: str = "val", n: int = 5) -> CamSet:
    rng = np.random.default_rng(0)
    return CamSet(split=split, level="species", image_ids=[f"{i}.jpg" for i in range(n)],
                  raw=rng.random((n, 7, 7), dtype=np.float32), labels=np.arange(n) % 2,
                  cam_classes=np.arange(n) % 2, predictions=np.zeros(n, int),
                  top1_logits=np.ones(n, np.float32))


def _result():
    boxes = [np.array([[10, 10, 120, 120]]) for _ in range(4)]
    maps = np.zeros((4, 224, 224))
    maps[:, 20:100, 20:100] = 1.0
    accuracy = BoxAccuracy()
    accuracy.update(maps, boxes)
    return accuracy.compute(), maps, boxes


def test_file_names_and_layout(tmp_path: Path) -> None:
    folder = run_folder(tmp_path, "abc")
    assert folder.path == tmp_path / "runs" / "abc"
    assert [p.name for p in (folder.record_path, folder.params_path, folder.model_path, folder.history_path,
                             folder.analysis_path, folder.timings_path, folder.metrics_path, folder.table_path,
                             folder.error_path, folder.fused_error_path)] == [
        "run.json", "params.json", "model.pth", "history.csv", "analysis.parquet", "timings.json",
        "metrics.json", "results.parquet", "error.json", "fused_error.json"]
    assert folder.cams_path("test") == folder.path / "cams" / "test.npz"
    assert folder.explain("gradcam").path == folder.path / "explain" / "gradcam"
    assert folder.redo == REDO_RUN.format(run=folder.path)


def test_json_files_round_trip(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    config = RunConfig(data="synth:tiny", level="genus", lr=0.01, seed=3)
    folder.write_params(config, "tiny", n_classes=4)
    params = folder.read_params()
    assert params["config"] == json.loads(json.dumps(config.to_dict())) and params["dataset"] == "tiny"
    assert params["n_classes"] == 4 and "torch" in params["versions"]
    folder.write_timings({"train_seconds": 1.5})
    assert folder.read_timings() == {"train_seconds": 1.5}
    folder.write_record({"run_id": "r", "status": "ok"})
    assert folder.read_record() == {"run_id": "r", "status": "ok"}
    folder.write_error({"message": "boom"})
    assert folder.read_error() == {"message": "boom"}
    folder.write_fused_error({"message": "diverged"})
    assert folder.pop_fused_error() == {"message": "diverged"} and not folder.fused_error_path.exists()
    assert folder.pop_fused_error() is None
    assert RunFolder(tmp_path / "other").read_timings() is None


def test_metrics_layout(tmp_path: Path) -> None:
    result, _, _ = _result()
    block = metrics_block(result, top1=75.0)
    assert block == {**result.to_dict(), "top1": 75.0}
    assert set(block) == {"maxboxacc_v2", "per_iou", "optimal_threshold", "n_images", "top1"}
    folder = RunFolder(tmp_path)
    assert not folder.is_finished()
    config = RunConfig(data="synth:tiny", level="genus", lr=0.01, seed=3)
    written = folder.write_metrics({"test": block, "val": metrics_block(result)},
                                   **run_identity(config, 12), select_epoch="last")
    assert folder.is_finished() and folder.read_metrics() == json.loads(json.dumps(written))
    on_disk = json.loads(folder.metrics_path.read_text())
    assert on_disk["maxboxacc_v2"] == result.mean and on_disk["top1"] == 75.0
    assert on_disk["val"]["top1"] is None and "test" not in on_disk
    assert {k: on_disk[k] for k in IDENTITY_KEYS} == {"level": "genus", "method": "cam", "lr": 0.01, "seed": 3,
                                                       "per_class": None, "n_train_images": 12}
    assert on_disk["select_epoch"] == "last"


def test_tables_cams_and_model_round_trip(tmp_path: Path) -> None:
    import torch

    folder = RunFolder(tmp_path)
    folder.write_history([{"epoch": 0, "train_loss": 1.0}, {"epoch": 1, "train_loss": 0.5}])
    assert folder.read_history()["train_loss"].to_list() == [1.0, 0.5]
    result, maps, boxes = _result()
    frame = analysis_frame([(0, maps[:2]), (2, maps[2:])], boxes, [f"{i}.jpg" for i in range(4)], result, "val")
    assert frame.columns == ["image_id", "split", "box_area_ratio", "gt_activation_ratio", "n_components"]
    folder.write_analysis([frame, frame.with_columns(split=pl.lit("test"))])
    assert folder.read_analysis().height == 8
    table = pl.DataFrame({"run_id": ["r"]})
    folder.write_table(table)
    assert folder.read_table().equals(table)
    cams = _camset("test")
    assert folder.save_cams(cams) == folder.cams_path("test")
    loaded = folder.load_cams("test")
    assert loaded.image_ids == cams.image_ids
    np.testing.assert_array_equal(loaded.raw[:], cams.raw)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    folder.save_model(model)
    other = folder.load_model(torch.nn.Linear(3, 2))
    assert torch.equal(other.weight, model.weight) and torch.equal(other.bias, model.bias)


def test_explainer_folders(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert run.explained() == []
    for name in ("scorecam", "gradcam"):
        run.explain(name).write_metrics({"test": {"maxboxacc_v2": 1.0}}, explainer=name)
    run.explain("layercam").write_timings({"s": 1})  # not finished: no metrics.json
    assert [name for name, _ in run.explained()] == ["gradcam", "scorecam"]
    assert run.explained()[0][1].read_metrics()["explainer"] == "gradcam"


@pytest.mark.parametrize("content", [b"", b"{\"a\": ", b"\xff\xfe{"])
@pytest.mark.parametrize("kind", ["params", "metrics", "record", "timings"])
def test_damaged_json_names_the_file_and_the_fix(tmp_path: Path, kind: str, content: bytes) -> None:
    folder = RunFolder(tmp_path / "run")
    path = getattr(folder, f"{kind}_path")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(ResultsError, match=f"{path}.*delete the run folder {folder.path}"):
        getattr(folder, f"read_{kind}")()


def test_json_of_another_shape_is_refused(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.metrics_path.write_text("[1, 2]")
    with pytest.raises(ResultsError, match="metrics.json: expected a JSON object"):
        folder.read_metrics()
    (tmp_path / "x.json").write_text('{\n  "a": nope\n}')
    with pytest.raises(ResultsError, match=r"x\.json:2: not valid JSON.*do this"):
        read_json(tmp_path / "x.json", "do this")


def test_missing_files_are_named(tmp_path: Path) -> None:
    import torch

    folder = RunFolder(tmp_path / "run")
    with pytest.raises(ResultsError, match=f"{folder.params_path}: missing; delete the run folder"):
        folder.read_params()
    with pytest.raises(InatlocError, match=f"{folder.cams_path('val')}: missing; the run did not evaluate split 'val'"):
        folder.load_cams("val")
    with pytest.raises(InatlocError, match=f"{folder.model_path}: missing"):
        folder.load_model(torch.nn.Linear(3, 2))
    with pytest.raises(ResultsError, match=f"{folder.history_path}: missing"):
        folder.read_history()
    with pytest.raises(ResultsError, match=f"{folder.analysis_path}: missing"):
        folder.read_analysis()


def test_damaged_tables_cams_and_model_are_named(tmp_path: Path) -> None:
    import torch

    folder = RunFolder(tmp_path)
    folder.analysis_path.write_bytes(b"PAR1 not parquet")
    with pytest.raises(ResultsError, match=f"{folder.analysis_path}: not a readable parquet table"):
        folder.read_analysis()
    with pytest.raises(ResultsError, match=f"{tmp_path / 'none.parquet'}: missing; rebuild"):
        read_table(tmp_path / "none.parquet", "rebuild")
    folder.cams_path("val").parent.mkdir()
    folder.cams_path("val").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(InatlocError, match=str(folder.cams_path("val"))):
        folder.load_cams("val")
    folder.save_model(torch.nn.Linear(3, 2))
    with pytest.raises(InatlocError, match=f"{folder.model_path}: damaged or not the weights of this run"):
        folder.load_model(torch.nn.Linear(4, 2))
    folder.model_path.write_bytes(folder.model_path.read_bytes()[:20])
    with pytest.raises(InatlocError, match=f"{folder.model_path}: damaged.*{re.escape(folder.redo)}"):
        folder.load_model(torch.nn.Linear(3, 2))
