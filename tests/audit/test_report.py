"""The written report: complete, self-contained, consistent, and honest in its flags."""

from __future__ import annotations

import json
import re

import pytest

from metamorphosis.audit.document import Document, number, percent
from metamorphosis.audit.report import REPORT_FILES, findings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("swap_matrix.png", "leakage.png", "reconstruction.png", "tsne.png")


def test_audit_writes_every_report_file_and_figure(tiny_run, tiny_audit):
    out = tiny_run / "audit"
    for name in (*REPORT_FILES, *FIGURES):
        assert (out / name).stat().st_size > 0, name
    for name in FIGURES:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(tiny_audit))


def test_report_json_holds_every_measurement(tiny_audit):
    labels = ["shape", "large", "background"]
    assert list(tiny_audit["swap"]["kept_heads"]["matrix"]) == labels
    assert list(tiny_audit["swap"]["retrained"]["matrix"]) == ["encoder", "shape", "large"]
    rows = {(r["source"], r["attribute"]) for r in tiny_audit["attribute_inference"]}
    assert rows == {("shape", "background"), ("large", "background"), ("encoder", "background")}
    pairs = [(e["source"], e["label"]) for e in tiny_audit["leakage"]]
    assert pairs == [
        ("encoder", "shape"),
        ("encoder", "large"),
        ("encoder", "background"),
        ("shape", "large"),
        ("shape", "background"),
        ("large", "shape"),
        ("large", "background"),
    ]
    assert tiny_audit["version"] == 3
    assert set(tiny_audit["reconstruction"]["scores"]) == {"encoder", "shape", "large"}
    assert tiny_audit["budget"]["name"] == "quick"
    assert tiny_audit["data"]["test_items"] == 12  # the tiny config's whole test split
    assert {f["level"] for f in tiny_audit["findings"]} <= {"warning", "note", "ok"}
    assert len(tiny_audit["findings"]) >= 4  # two attribute rows and two reconstructions


def test_leakage_names_the_best_attacker_and_its_references(tiny_audit):
    universal = {
        e["label"]: e["best"]["value"] for e in tiny_audit["leakage"] if e["source"] == "encoder"
    }
    for entry in tiny_audit["leakage"]:
        best = entry["best"]
        assert set(entry["attackers"]) == {"retrained_head", "mlp", "linear_probe", "knn"}
        assert best["value"] == max(entry["attackers"].values())
        assert entry["attackers"][best["attacker"]] == best["value"]
        assert entry["universal"] == universal[entry["label"]]
        assert entry["majority"] == tiny_audit["majority"][entry["label"]]
        assert (entry["label_floor"] is None) == (entry["source"] == "encoder")
    # the old rows are read from the same attackers, not trained again
    row = next(r for r in tiny_audit["attribute_inference"] if r["source"] == "shape")
    entry = next(
        e
        for e in tiny_audit["leakage"]
        if e["source"] == "shape" and e["label"] == row["attribute"]
    )
    assert (row["head"], row["probe"]) == (
        entry["attackers"]["retrained_head"],
        entry["attackers"]["linear_probe"],
    )
    assert row["head"] == tiny_audit["swap"]["retrained"]["matrix"]["shape"]["background"]
    assert set(tiny_audit["assumptions"]) >= {
        "kept_heads",
        "leakage",
        "mlp",
        "knn",
        "reconstruction",
    }


def test_the_leakage_table_names_the_best_attacker(tiny_run, tiny_audit):
    markdown = (tiny_run / "audit" / "report.md").read_text()
    assert (
        "| label | features | retrained_head | mlp | linear_probe | knn | best (attacker) |"
        in markdown
    )
    for entry in tiny_audit["leakage"]:
        assert f"({entry['best']['attacker']}) |" in markdown


def test_every_public_source_row_carries_its_label_floor(tiny_run, tiny_audit):
    rows = tiny_audit["attribute_inference"]
    assert rows
    for row in rows:
        if row["source"] == "encoder":
            assert row["label_floor"] is None
        else:  # at least the majority rate: one cell per public label can only help
            assert row["majority"] - 1e-9 <= row["label_floor"] <= 1.0
    assert "label floor" in (tiny_run / "audit" / "report.md").read_text()


def test_the_header_names_the_method_and_the_module_actually_trained(tiny_run, tiny_audit):
    from metamorphosis.rundir import load_config_of_run

    config = load_config_of_run(tiny_run)
    run = tiny_audit["run"]
    assert run["method"] == config.method and run["module"] == config.module_kind
    markdown = (tiny_run / "audit" / "report.md").read_text()
    assert f"method `{config.method}`" in markdown and f"module `{config.module_kind}`" in markdown


def test_the_report_states_what_the_runs_privacy_numbers_cover(tiny_run, tiny_audit):
    from metamorphosis.rundir import read_run_json

    privacy = read_run_json(tiny_run)["privacy"]
    assert tiny_audit["run"]["privacy_scope"] == privacy["scope"]
    assert tiny_audit["run"]["private_heads"] is privacy["private_heads"]
    markdown = (tiny_run / "audit" / "report.md").read_text()
    assert f"What the privacy numbers cover: {privacy['scope']}" in markdown


def test_a_baseline_report_does_not_claim_the_configured_module():
    """DeepObfuscator (mode none) trains identity modules, whatever model.module says."""
    from metamorphosis.audit.run import _run_summary
    from metamorphosis.config import config_from_dict
    from tiny import tiny_config_dict

    raw = tiny_config_dict("none")
    raw["method"] = "deepobfuscator"
    raw["private_attributes"] = raw.get("private_attributes") or [{"name": "background"}]
    config = config_from_dict(raw)
    record = {
        "privacy": {"mode": "none", "epsilon": None, "delta": 1e-6},
        "tasks": [],
        "private_attributes": [],
        "feature_shapes": {},
        "metrics": {},
    }
    summary = _run_summary(record, config)
    assert (summary["method"], summary["module"]) == ("deepobfuscator", "identity")


def test_html_is_self_contained_and_matches_the_markdown(tiny_run, tiny_audit):
    html = (tiny_run / "audit" / "report.html").read_text()
    markdown = (tiny_run / "audit" / "report.md").read_text()
    sources = re.findall(r'src="([^"]+)"', html)
    assert len(sources) == len(FIGURES)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    for name in FIGURES:
        assert f"]({name})" in markdown
    for finding in tiny_audit["findings"]:
        assert finding["text"] in markdown
    assert "Attack budget `quick`" in markdown


def _entry(attackers, universal, majority, *, label="gender", metric="accuracy", higher=True):
    values = [v for v in attackers.values() if v is not None]
    value = max(values) if higher else min(values)
    name = next(n for n, v in attackers.items() if v == value)
    return {
        "source": "smile",
        "label": label,
        "metric": metric,
        "higher_is_better": higher,
        "best": {"attacker": name, "value": value},
        "attackers": attackers,
        "restarts": {n: [v] for n, v in attackers.items()},
        "majority": majority,
        "label_floor": None,
        "universal": universal,
    }


def _report(head, probe, universal, majority, psnr, universal_psnr, guess_psnr):
    metric = {"name": "accuracy", "higher_is_better": True}
    return {
        "run": {"tasks": ["smile"]},
        "majority": {"smile": 0.5, "gender": majority},
        "leakage": [_entry({"retrained_head": head, "linear_probe": probe}, universal, majority)],
        "swap": {
            "kept_heads": {"metric": {"smile": metric}, "matrix": {"smile": {"smile": 0.9}}},
            "retrained": {
                "metric": {"smile": metric},
                "matrix": {"encoder": {"smile": 0.9}, "smile": {"smile": 0.9}},
            },
        },
        "reconstruction": {
            "scores": {"encoder": {"psnr": universal_psnr}, "smile": {"psnr": psnr}},
            "baseline": {"psnr": guess_psnr},
        },
    }


@pytest.mark.parametrize(
    ("head", "probe", "universal", "level"),
    [
        (0.95, 0.90, 0.95, "warning"),  # as much as the universal features
        (0.60, 0.80, 0.95, "note"),  # above chance (best attacker counts), below universal
        (0.58, 0.55, 0.95, "ok"),  # within 5 points of the majority rate
    ],
)
def test_attribute_leak_levels(head, probe, universal, level):
    report = _report(head, probe, universal, 0.56, psnr=15, universal_psnr=15, guess_psnr=15)
    flagged = [f for f in findings(report) if "`gender`" in f["text"]]
    assert [f["level"] for f in flagged] == [level]


@pytest.mark.parametrize(
    ("psnr", "universal_psnr", "level"),
    [(20.0, 20.2, "warning"), (17.0, 20.0, "note"), (12.5, 20.0, "ok")],
)
def test_reconstruction_levels_against_universal_and_mean_guess(psnr, universal_psnr, level):
    report = _report(0.5, 0.5, 0.5, 0.56, psnr=psnr, universal_psnr=universal_psnr, guess_psnr=12)
    flagged = [f for f in findings(report) if f["text"].startswith("reconstruction")]
    assert [f["level"] for f in flagged] == [level]


def test_a_leak_at_the_label_floor_is_named_as_the_task_s_own():
    """Gender from smile features at 62 % with a floor of 59 %: the smile labels alone say it."""
    report = _report(0.62, 0.60, 0.95, 0.56, psnr=15, universal_psnr=15, guess_psnr=15)
    report["leakage"][0]["label_floor"] = 0.59
    flagged = [f for f in findings(report) if "`gender`" in f["text"]]
    assert [f["level"] for f in flagged] == ["note"]
    text = flagged[0]["text"]
    assert "label floor 59.0 %" in text and "`smile` labels alone" in text


def test_a_leak_above_the_label_floor_is_not_excused_by_it():
    report = _report(0.95, 0.90, 0.95, 0.56, psnr=15, universal_psnr=15, guess_psnr=15)
    report["leakage"][0]["label_floor"] = 0.59
    flagged = [f for f in findings(report) if "`gender`" in f["text"]]
    assert [f["level"] for f in flagged] == ["warning"]


def test_findings_use_the_best_attacker_and_name_it():
    """A probe at 80 % beside a head at 60 %: the finding is about the probe's 80 %."""
    report = _report(0.60, 0.80, 0.81, 0.56, psnr=15, universal_psnr=15, guess_psnr=15)
    (flagged,) = [f for f in findings(report) if "`gender`" in f["text"]]
    assert flagged["level"] == "warning"
    assert "best attacker 80.0 % (linear_probe)" in flagged["text"]


def test_a_kept_head_far_below_the_best_attacker_is_called_an_understatement():
    report = _report(0.90, 0.70, 0.95, 0.56, psnr=15, universal_psnr=15, guess_psnr=15)
    report["swap"]["kept_heads"]["matrix"]["smile"]["gender"] = 0.55
    notes = [f["text"] for f in findings(report) if "understates" in f["text"]]
    assert notes == [
        "`gender` from `smile` features: the paper's kept-head protocol gives 55.0 % but the "
        "best attacker (retrained_head) 90.0 %; the kept-head figure understates the leak."
    ]


# an error within 2 % of the universal 0.1 is "as low"; 0.2 is not
@pytest.mark.parametrize(("error", "level"), [(0.101, "warning"), (0.2, "note")])
def test_lower_is_better_leaks_compare_the_lowest_error_with_the_universal_one(error, level):
    report = _report(0.5, 0.5, 0.5, 0.5, psnr=15, universal_psnr=15, guess_psnr=15)
    attackers = {"retrained_head": error + 0.05, "linear_probe": error}
    report["leakage"] = [
        _entry(attackers, 0.1, None, label="depth", metric="abs_err", higher=False)
    ]
    (flagged,) = [f for f in findings(report) if "`depth`" in f["text"]]
    assert flagged["level"] == level
    assert f"best attacker {error:.3g} (linear_probe)" in flagged["text"]


def test_warnings_come_first():
    report = _report(0.58, 0.55, 0.95, 0.56, psnr=20.0, universal_psnr=20.0, guess_psnr=12)
    levels = [f["level"] for f in findings(report)]
    assert levels == ["warning", "ok"]


def test_document_renders_tables_and_escapes_html():
    doc = Document("t")
    doc.table(["a", "b"], [["<x>", "`c`"]])
    assert "| <x> | `c` |" in doc.markdown()
    html = doc.html(".")
    assert "&lt;x&gt;" in html and "<code>c</code>" in html


def test_number_formats():
    assert percent(0.9531) == "95.3 %"
    assert number("accuracy", None) == "—"
    assert number("abs_err", 0.123456) == "0.123"


def test_a_single_task_run_without_private_attributes_is_audited(tmp_path):
    """Nothing to compare or to infer: those sections are left out, the rest is there."""
    from metamorphosis.audit.run import run_audit
    from metamorphosis.config import config_from_dict
    from metamorphosis.experiment import train_run
    from tiny import tiny_config_dict

    raw = tiny_config_dict("none", epochs=1)
    raw["tasks"] = raw["tasks"][:1]
    raw["private_attributes"] = []
    train_run(config_from_dict(raw), tmp_path / "run", progress=False)
    report = run_audit(tmp_path / "run", budget="quick", device="cpu", progress=False)
    assert report["attribute_inference"] == [] and report["tsne"] is None
    assert list(report["swap"]["retrained"]["matrix"]) == ["encoder", "shape"]
    assert [(e["source"], e["label"]) for e in report["leakage"]] == [("encoder", "shape")]
    markdown = (tmp_path / "run" / "audit" / "report.md").read_text()
    assert "## Reconstruction attack" in markdown and "t-SNE" not in markdown


def test_dense_tasks_are_audited_with_their_own_metrics(tmp_path):
    """Segmentation and depth: mIoU and abs error in the matrices, no majority rate."""
    from metamorphosis.audit.run import run_audit
    from metamorphosis.config import config_from_dict
    from metamorphosis.experiment import train_run
    from tiny import tiny_config_dict

    raw = tiny_config_dict("task", epochs=1)
    raw["data"].update(image_size=32, num_samples=64)
    raw["model"] = {"encoder": "test_segnet", "split_index": 2, "module": "cross-sec"}
    raw["tasks"] = [
        {"name": "seg", "column": "seg", "kind": "segmentation"},
        {"name": "depth", "column": "depth", "kind": "depth"},
    ]
    raw["private_attributes"] = []
    train_run(config_from_dict(raw), tmp_path / "run", progress=False)
    report = run_audit(tmp_path / "run", budget="quick", device="cpu", progress=False)
    retrained = report["swap"]["retrained"]
    assert retrained["metric"]["seg"] == {"name": "miou", "higher_is_better": True}
    assert retrained["metric"]["depth"] == {"name": "abs_err", "higher_is_better": False}
    assert report["majority"] == {"seg": None, "depth": None}
    for entry in report["leakage"]:  # maps: only the head and the probe can predict them
        assert list(entry["attackers"]) == ["retrained_head", "linear_probe"]
    assert report["leakage_skipped"] == {"seg": ["mlp", "knn"], "depth": ["mlp", "knn"]}
    depth = next(e for e in report["leakage"] if e["label"] == "depth")
    assert depth["best"]["value"] == min(depth["attackers"].values())
    assert report["tsne"]["color_label"] is None
    assert "seg" in (tmp_path / "run" / "audit" / "report.md").read_text()


def test_report_has_the_fisher_bound_entry_of_every_public_task(tiny_audit):
    dfil = tiny_audit["dfil"]
    assert set(dfil) == set(tiny_audit["run"]["tasks"])
    for task, entry in dfil.items():  # no release noise here: no bound, said so
        assert entry is None, task
    assert tiny_audit["dfil_cost"]["seconds"] >= 0
