import json
import statistics

from distill.bench import run_benchmark


def test_benchmark_over_seeds_reports_mean_and_std(tmp_path, cache_dir):
    out = tmp_path / "bench"
    result = run_benchmark("digits", seeds=2, quick=True, out_dir=out)
    data = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in data["rows"]] == ["teacher", "scratch", "kd"]
    per_seed = [json.loads((out / f"seed-{s}" / "summary.json").read_text()) for s in range(2)]
    for i, row in enumerate(data["rows"]):
        accs = [s["rows"][i]["test_accuracy"] for s in per_seed]
        assert row["test_accuracy"][0] == statistics.fmean(accs)
        assert row["test_accuracy"][1] == statistics.stdev(accs)
    assert "±" in (out / "table.md").read_text() and "distill bench digits" in (out / "table.md").read_text()
    assert result["table"].count("\n") == 4  # header, separator, three rows
    # finished seeds are reused, not retrained
    again = run_benchmark("digits", seeds=2, quick=True, out_dir=out)
    assert again["rows"] == result["rows"]
