"""What the parser finds (wrong types, unknown flags, missing arguments) and what
the accountant cannot honour are one ``error: …`` line too, like our own checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from metamorphosis import experiment
from metamorphosis.cli import app
from metamorphosis.errors import PrivacyError
from metamorphosis.privacy.accounting import DPPhase, epsilon_of_phases

runner = CliRunner()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["serve", "RUN", "--port", "abc"], "Invalid value for '--port'"),
        (["serve", "RUN", "--max-ids", "1.5"], "Invalid value for '--max-ids'"),
        (["keys", "issue", "RUN", "--task", "a", "--ttl", "abc"], "Invalid value for '--ttl'"),
        (["serve", "RUN", "--bogus"], "No such option: --bogus"),
        (["bogus"], "No such command 'bogus'"),
        (["train"], "Missing argument 'CONFIG'"),
        (["train", "c.yaml"], "Missing option '--out'"),
        (["audit", "RUN", "--seed", "x"], "Invalid value for '--seed'"),
    ],
)
def test_a_usage_error_is_one_line_with_exit_code_2(argv, fragment):
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert lines[0].endswith("(see --help)")


def test_the_installed_command_prints_one_line_too():
    """The console script goes through the same group (not only CliRunner)."""
    done = subprocess.run(
        [sys.executable, "-m", "metamorphosis", "serve", "RUN", "--port", "abc"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr


def test_help_still_works():
    assert runner.invoke(app, ["--help"]).exit_code == 0
    assert runner.invoke(app, ["serve", "--help"]).exit_code == 0


def test_ctrl_c_says_the_checkpoint_is_kept(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "train_run", interrupted)
    config = tmp_path / "c.yaml"
    config.write_text("tasks: [{name: shape}]\nprivacy: {mode: none}\n")
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 130
    assert "interrupted: the last checkpoint is kept; rerun to resume" in result.stderr


@pytest.mark.parametrize(
    ("sigma", "rate", "steps", "accountant"),
    [
        (0.001, 0.05, 1, "prv"),  # PRV asked ~30 GiB for this
        (0.1, 0.004, 25_000, "prv"),  # and 84.7 GiB for this
        (0.02, 0.01, 10, "prv"),  # and raised "Discrete mean differs" here
        (0.5, 1.0, 1000, "rdp"),
    ],
)
def test_noise_too_small_to_account_is_refused_before_the_accountant_runs(
    sigma, rate, steps, accountant
):
    phases = [DPPhase("joint", sigma, rate, steps)]
    with pytest.raises(PrivacyError, match=r"above 100: no meaningful guarantee"):
        epsilon_of_phases(phases, delta=1e-6, accountant=accountant)


def test_an_accountable_noise_still_gets_its_epsilon():
    phases = [DPPhase("joint", 1.0, 0.01, 1000)]
    rdp = epsilon_of_phases(phases, delta=1e-6, accountant="rdp")
    prv = epsilon_of_phases(phases, delta=1e-6, accountant="prv")
    assert rdp is not None and prv is not None
    assert 0 < prv <= rdp < 3  # PRV is the tighter of the two; RDP gives 2.44 here
