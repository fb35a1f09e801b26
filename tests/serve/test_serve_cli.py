"""``serve`` and ``keys`` refuse bad usage with one line and exit code 2."""

from __future__ import annotations

from typer.testing import CliRunner

from metamorphosis.cli import app

runner = CliRunner()


def _one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_plaintext_on_a_public_address_is_refused(served_run):
    result = runner.invoke(app, ["serve", str(served_run), "--host", "0.0.0.0"])
    _one_line_error(result, "refusing to serve plaintext HTTP on 0.0.0.0")


def test_tls_needs_both_files(served_run):
    result = runner.invoke(app, ["serve", str(served_run), "--ssl-certfile", "c.pem"])
    _one_line_error(result, "--ssl-keyfile")


def test_a_bad_source_is_refused(served_run, tmp_path):
    result = runner.invoke(app, ["serve", str(served_run), "--source", str(tmp_path / "none")])
    _one_line_error(result, "--source")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["serve", str(served_run), "--source", str(empty)])
    _one_line_error(result, "holds no images")


def test_keys_issue_list_revoke(served_run):
    result = runner.invoke(app, ["keys", "issue", str(served_run), "--task", "unknown"])
    _one_line_error(result, "not a public task")
    result = runner.invoke(app, ["keys", "issue", str(served_run), "--task", "background"])
    _one_line_error(result, "not a public task")  # private attributes get no keys
    result = runner.invoke(
        app, ["keys", "issue", str(served_run), "--task", "large", "--ttl", "60"]
    )
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert secret.startswith("mmk_")
    key_id = secret.split("_")[1]
    listing = runner.invoke(app, ["keys", "list", str(served_run)])
    assert key_id in listing.stdout and secret not in listing.stdout
    assert runner.invoke(app, ["keys", "revoke", str(served_run), key_id]).exit_code == 0
    listing = runner.invoke(app, ["keys", "list", str(served_run)])
    assert any(key_id in line and "revoked" in line for line in listing.stdout.splitlines())
    result = runner.invoke(app, ["keys", "revoke", str(served_run), "ffffffffffff"])
    _one_line_error(result, "ffffffffffff")


def test_keys_need_a_run_dir(tmp_path):
    result = runner.invoke(app, ["keys", "list", str(tmp_path)])
    _one_line_error(result, "run.json is missing")


def test_consume_needs_out_or_train():
    result = runner.invoke(app, ["consume", "http://127.0.0.1:9", "--task", "t", "--key", "k"])
    _one_line_error(result, "--out FILE")


def test_remote_training_refuses_plaintext_on_a_public_address(tmp_path):
    import yaml

    from tiny import tiny_config_dict

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict("both")))
    out = tmp_path / "run"
    command = ["train", str(config), "--out", str(out), "--remote", "--host", "0.0.0.0"]
    _one_line_error(runner.invoke(app, command), "refusing to serve plaintext HTTP on 0.0.0.0")
    half_tls = [*command[:-2], "--ssl-certfile", "c.pem"]
    _one_line_error(runner.invoke(app, half_tls), "--ssl-keyfile")
    assert not (out / "keys.sqlite").exists()  # refused before any key was issued


def test_remote_training_refuses_kd_mtl_before_issuing_keys(tmp_path):
    import yaml

    from tiny import tiny_config_dict

    raw = tiny_config_dict("none")
    raw["method"] = "kd-mtl"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--remote"])
    _one_line_error(result, "method 'kd-mtl' cannot train with remote consumers")
    assert not (out / "keys.sqlite").exists()
