"""distill export (ONNX checked with onnxruntime, folders that load back) and distill eval."""
import json

import pytest
import torch

from distill.cli import main

pytest.importorskip("onnxruntime")


@pytest.fixture
def run_dir(finished_run):
    return finished_run


def test_export_writes_onnx_that_onnxruntime_runs_like_torch(run_dir, capsys):
    from distill.export import load_exported
    from distill.run_models import load_run
    from distill.sources import first_inputs

    assert main(["export", str(run_dir), "--label", "kd"]) == 0
    report = json.loads((run_dir / "export" / "export.json").read_text())
    assert list(report) == ["kd"]
    kd = report["kd"]
    assert kd["same_prediction"] == 100.0 and kd["max_abs_diff"] < 1e-4 and kd["samples"] > 100
    assert kd["torch_seconds"] > 0 and kd["onnx_seconds"] > 0 and kd["onnx_bytes"] > 1000
    assert "same prediction 100.00%" in capsys.readouterr().out
    run = load_run(run_dir, teacher=False)
    reloaded = load_exported(run_dir / "export" / "kd")
    x = first_inputs(run.data.test, 1, run.data.task)
    with torch.no_grad():
        assert torch.equal(reloaded(x), run.models["kd"](x))
    import onnxruntime as ort  # a batch size the export never saw
    session = ort.InferenceSession(kd["onnx"], providers=["CPUExecutionProvider"])
    batch = first_inputs(run.data.test, 7, run.data.task)
    out = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), run.models["kd"](batch), atol=1e-4)


def test_eval_scores_a_run_and_an_exported_folder(run_dir, capsys):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "| teacher |" in out and "| kd |" in out and "accuracy" in out
    kd_row = next(line for line in out.splitlines() if line.startswith("| kd |"))
    recorded = next(r for r in summary["rows"] if r["label"] == "kd")["test_accuracy"]
    assert f"{recorded:.4g}" in kd_row  # the same test accuracy as the run measured
    assert main(["export", str(run_dir), "--no-onnx", "--out", str(run_dir / "plain")]) == 0
    assert not (run_dir / "plain" / "kd" / "model.onnx").exists()
    assert main(["eval", str(run_dir / "plain" / "kd"), "--data", "digits", "--split", "val"]) == 0
    assert "| kd |" in capsys.readouterr().out


def test_export_and_eval_errors_are_one_line(run_dir, tmp_path, capsys):
    for args, needle in ((["export", str(run_dir), "--label", "nope"], "no finished model 'nope'"),
                         (["export", str(tmp_path)], "not a run directory"),
                         (["eval", str(run_dir / "export" / "kd")], "give --data"),
                         (["eval", str(run_dir), "--data", "nonesuch"], "unknown dataset")):
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("distill: error:") and needle in err and "\n" not in err, err


def test_a_transformers_student_exports_with_dynamic_batch_and_length(tmp_path):
    pytest.importorskip("transformers")
    from distill.export import check_onnx, export_onnx, load_exported, save_model_folder
    from distill.tasks import get_task
    from distill.zoo.bert import bert_student

    torch.manual_seed(0)
    model = bert_student(layers=1, hidden=32, vocab_size=50, max_position_embeddings=64, num_labels=3).eval()
    items = [{"input_ids": torch.randint(1, 50, (n,)), "labels": n % 3} for n in (5, 9, 3, 12, 7, 4)]
    task = get_task("classification", pad_token_id=0)
    path = export_onnx(model, task.collate(items[:2])["input"], tmp_path / "bert" / "model.onnx")
    check = check_onnx(path, model, items, task, batch_size=4)  # other batch sizes and lengths than traced
    assert check["same_prediction"] == 100.0 and check["max_abs_diff"] < 1e-4 and check["samples"] == 6
    folder = save_model_folder(model, None, None, tmp_path / "bert")
    batch = task.collate(items)["input"]
    with torch.no_grad():
        assert torch.allclose(load_exported(folder)(**batch).logits, model(**batch).logits, atol=1e-6)
