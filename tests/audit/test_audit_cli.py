"""``metamorphosis audit``: the report on success, one-line errors on a bad run dir or data."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from metamorphosis.cli import app

runner = CliRunner()


def _assert_one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]


def test_audit_prints_findings_and_the_report_path(tiny_run, tiny_audit, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("audit"))
    result = runner.invoke(app, ["audit", str(copy), "--quick", "--quiet", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "report.md" in result.stdout
    report = json.loads((copy / "audit" / "report.json").read_text())
    # same seed, same machine: the rerun reproduces the fixture's numbers
    assert report["swap"] == tiny_audit["swap"]
    assert report["attribute_inference"] == tiny_audit["attribute_inference"]
    for finding in report["findings"]:
        assert finding["text"].replace("`", "") in result.stdout


def test_audit_of_a_missing_run_dir_exits_2(tmp_path):
    result = runner.invoke(app, ["audit", str(tmp_path / "nothing")])
    _assert_one_line_error(result, "run.json is missing")


def test_audit_of_an_incomplete_run_dir_exits_2(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    (copy / "producer.safetensors").unlink()
    result = runner.invoke(app, ["audit", str(copy), "--quick", "--quiet"])
    _assert_one_line_error(result, "producer.safetensors is missing")


def test_audit_with_a_wrong_data_root_exits_2(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    record = json.loads((copy / "run.json").read_text())
    record["config"]["data"].update(name="celeba", root=None, image_size=[16, 16])
    record["config"]["tasks"] = [{"name": "shape", "column": "Smiling", "kind": "binary"}]
    (copy / "run.json").write_text(json.dumps(record))
    missing = tmp_path / "no-celeba-here"
    result = runner.invoke(app, ["audit", str(copy), "--data-root", str(missing), "--quiet"])
    _assert_one_line_error(result, str(missing))


def test_audit_rejects_bad_sweep_arguments(tiny_run):
    result = runner.invoke(app, ["audit", str(tiny_run), "--quick", "--values", "epsilon:1"])
    _assert_one_line_error(result, "--values")
    result = runner.invoke(app, ["audit", str(tiny_run), "--quick", "--sweep", "lr"])
    _assert_one_line_error(result, "sweep 'lr' is unknown")


def test_audit_rejects_an_unknown_device(tiny_run):
    result = runner.invoke(app, ["audit", str(tiny_run), "--quick", "--device", "gpu"])
    _assert_one_line_error(result, "device 'gpu' is invalid")
