"""The recommended defence at several Fisher-information caps, and DP heads on and off.

    python benchmarks/fisher_caps.py DATASET [--caps DB ...] [--budget quick|full]
                                     [--data-root DIR] [--only caps|heads] [--render-only]
    python benchmarks/fisher_caps.py celeba --caps 0 5 10      # 2 CPU cores: ~4 min a point
    python benchmarks/fisher_caps.py demo --only heads

**Caps** (``release.target_psnr_cap``): the recommended defence (``defence.preset:
recommended``: one 16-value variational code per image, β = 0.01, λ = 0; the frontier's
``vib-censor_weight_0``) trained as it is (point ``uncapped``) and with its release noise
calibrated to each cap. Each point is trained and audited as a frontier point is
(:mod:`frontier`: the same datasets, budgets and attackers) into
``runs/fisher_caps/<dataset>/<budget>/<id>/``, and recorded the moment it finishes in
``results/fisher_caps/<dataset>/caps.json``: the release noise σ, the dFIL on the
training images σ was calibrated on (``run.json``) and on the audit's test images
(``report.json``: mean, p95, the PSNR cap), the audit decoder's PSNR (and the
mean-image guess), utility and the best attacker's recovery of the private attribute.

**Heads** (``privacy.private_heads``): the paper's method in mode ``input`` (DP-SGD on
the producer) at the config's ε, with the heads trained without DP (the default) and
with DP-SGD (``private_heads: true``, every block noised at σ·√blocks): utility, ε and
seconds from ``run.json`` (trained only: no release changes, so there is nothing new
to attack).

``caps.md`` holds both tables and ``caps.png`` the figure (utility and decoder PSNR
against the measured PSNR cap). ``--render-only`` redraws them from caps.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import frontier  # noqa: E402  (beside this file)

RESULTS = frontier.ROOT / "results" / "fisher_caps"
RUNS = frontier.ROOT / "runs" / "fisher_caps"
CAPS_JSON = "caps.json"
#: The recommended defence as the frontier trains it (``vib-censor_weight_0``).
RECOMMENDED = {**frontier.VIB_BASE, "defence.beta": 0.01, "censor.weight": 0}
DEFAULT_CAPS = (0.0, 5.0, 10.0)
#: DP-SGD on the producer, the paper's per-task modules; the config's target ε.
DP_INPUT = {"method": "metamorphosis", "privacy.mode": "input", "train.epochs": 10}


def cap_points(caps: Sequence[float]) -> list[frontier.Point]:
    uncapped = frontier.Point("cap", "psnr_cap", "none", dict(RECOMMENDED), name="uncapped")
    return [uncapped] + [
        frontier.Point("cap", "psnr_cap", cap, {**RECOMMENDED, "release.target_psnr_cap": cap})
        for cap in caps
    ]


def head_points(seeds: Sequence[int] = ()) -> list[frontier.Point]:
    """private_heads off and on at the config's seed, then at each of ``seeds``."""
    points = []
    for seed in [None, *seeds]:
        extra = {} if seed is None else {"train.seed": seed}
        suffix = "" if seed is None else f"_seed{seed}"
        points += [
            frontier.Point("heads", "private_heads", str(on).lower(), {**DP_INPUT,
                           "privacy.private_heads": on, **extra},
                           name=f"private_heads_{str(on).lower()}{suffix}")
            for on in (False, True)
        ]  # fmt: skip
    return points


def cap_numbers(run_dir: Path, dataset: frontier.Dataset) -> dict[str, Any]:
    """frontier's numbers, plus the release noise and its dFIL on train and test images."""
    numbers = frontier.measure(run_dir, dataset)
    record = json.loads((run_dir / "run.json").read_text())
    report = json.loads((run_dir / "audit" / "report.json").read_text())
    release = record["release"][dataset.public]
    numbers.update(
        sigma=release["sigma"],
        dfil_train=release.get("dfil"),
        dfil_test=(report.get("dfil") or {}).get(dataset.public),
        dfil_cost=report.get("dfil_cost"),
    )
    return numbers


def head_numbers(run_dir: Path, dataset: frontier.Dataset) -> dict[str, Any]:
    from metamorphosis.metrics import primary_metric

    record = json.loads((run_dir / "run.json").read_text())
    kinds = {spec["name"]: spec["kind"] for spec in record["config"]["tasks"]}
    utility = {
        name: (record["metrics"].get(name) or {}).get(primary_metric(kind)[0])
        for name, kind in kinds.items()
    }
    return {
        "utility": utility[dataset.public],
        "tasks": utility,
        "private_heads": record["privacy"]["private_heads"],
        # the producer, then every head of the phase (public and private) under DP heads
        "blocks": 1 + len(kinds) + len(record["config"]["private_attributes"])
        if record["privacy"]["private_heads"]
        else 1,
        "epsilon": record["privacy"]["epsilon"],
        "noise_multiplier": record["privacy"]["noise_multiplier"],
        "train_seconds": record["train_seconds"],
    }


def run(args: argparse.Namespace, dataset: frontier.Dataset, path: Path) -> None:
    session = frontier.Session(
        dataset, args.budget, "cpu", args.data_root, RESULTS, RUNS, progress=False
    )
    results = frontier.load_frontier(path, dataset)
    groups = {"caps": cap_points(args.caps), "heads": head_points(args.head_seeds)}
    for group, points in groups.items():
        if args.only and group != args.only:
            continue
        for point in points:
            recorded = results.get(group, {}).get(point.id)
            if recorded and recorded["overrides"] == frontier._plain(point.overrides):
                frontier._log(f"{point.id}: recorded already, skipped")
                continue
            started = time.perf_counter()
            if group == "caps":
                session.run(point, point.id)
                numbers = cap_numbers(session.run_dir(point), dataset)
            else:
                numbers = _train_only(session, point, point.id)
            line = f"python benchmarks/fisher_caps.py {dataset.name} --only {group}"
            if "train.seed" in point.overrides:
                line += f" --head-seeds {point.overrides['train.seed']}"
            entry = frontier.point_record(
                point, args.budget, "cpu", line, session.run_dir(point), numbers
            )
            entry["seconds"] = round(time.perf_counter() - started, 1)
            results.setdefault(group, {})[point.id] = entry
            frontier.save_frontier(path, results)
            render(path)
            frontier._log(f"{point.id}: recorded (utility {numbers['utility']})")


def _train_only(session: frontier.Session, point: frontier.Point, prefix: str) -> dict[str, Any]:
    run_dir = session.run_dir(point)
    frontier.ensure_trained(
        frontier.point_config(point, session.dataset, session.budget, session.device),
        run_dir,
        data_root=session.data_root,
        progress=session.progress,
        log=lambda line: frontier._log(f"{prefix}: {line}"),
    )
    return head_numbers(run_dir, session.dataset)


# --- tables and figure ------------------------------------------------------------------


def _f(value: Any, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _g(value: Any) -> str:
    return "—" if value is None else f"{value:.3g}"


def markdown(results: Mapping[str, Any]) -> str:
    public, private = results["public"], results["private"]
    lines = [
        f"# Fisher-information caps: {results['dataset']} ({public} public, {private} private)",
        "",
        "Generated by `benchmarks/fisher_caps.py`. dFIL per input value; PSNR cap = "
        "10·log10(dFIL p95) in dB (no *unbiased* reconstruction of 95 % of images has a "
        "better expected PSNR); the decoder is the audit's, which is biased (it learns a "
        "prior over the training images) and may beat the cap. train: the calibration images "
        "(fresh probes); test: the audit's 128 test images, 8 probes.",
        "",
        "| point | target cap (dB) | σ | dFIL train p95 | dFIL test mean | dFIL test p95 "
        "| PSNR cap test (dB) | decoder PSNR (dB) | mean-image PSNR (dB) "
        f"| {public} | {private}, best attacker | majority |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pid, p in (results.get("caps") or {}).items():
        train, test = p.get("dfil_train") or {}, p.get("dfil_test") or {}
        lines.append(
            f"| {pid} | {p['value']} | {_g(p['sigma'])} | {_g(train.get('p95'))} "
            f"| {_g(test.get('mean'))} | {_g(test.get('p95'))} | {_f(test.get('psnr_cap'))} "
            f"| {_f(p['psnr'])} | {_f(p['psnr_baseline'])} | {_f(p['utility'], 3)} "
            f"| {_f(p['leakage'], 3)} ({p['leakage_attacker']}) | {_f(p['majority'], 3)} |"
        )
    heads = results.get("heads") or {}
    if heads:
        lines += [
            "",
            "## privacy.private_heads (mode input, DP-SGD on the producer)",
            "",
            "| point | private heads | ε | σ (accountant) | per-block σ | "
            f"{public} | every task | train s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for pid, p in heads.items():
            noise = p["noise_multiplier"]
            block = noise * p["blocks"] ** 0.5 if noise else None
            tasks = ", ".join(f"{k} {_f(v, 3)}" for k, v in p["tasks"].items())
            lines.append(
                f"| {pid} | {p['private_heads']} | {_f(p['epsilon'])} "
                f"| {_f(p['noise_multiplier'], 3)} | {_f(block, 3)} | {_f(p['utility'], 3)} "
                f"| {tasks} | {_f(p['train_seconds'], 0)} |"
            )
    for p in (results.get("caps") or {}).values():
        cost = p.get("dfil_cost")
        if cost:
            lines += [
                "",
                f"dFIL estimate cost (last point's audit): "
                f"{1000 * cost['seconds_per_image_and_task']:.1f} ms per image and task at "
                f"8 probes ({cost['threads']} threads).",
            ]
            break
    return "\n".join(lines) + "\n"


def plot(results: Mapping[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        p for p in (results.get("caps") or {}).values() if (p.get("dfil_test") or {}).get("p95")
    ]
    if not points:
        return
    points.sort(key=lambda p: p["dfil_test"]["psnr_cap"])
    caps = [p["dfil_test"]["psnr_cap"] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(caps, [p["utility"] for p in points], "o-", label=results["public"])
    left.plot(caps, [p["leakage"] for p in points], "s--", label=f"{results['private']} (best)")
    left.axhline(points[0]["majority"], color="grey", lw=0.8, ls=":", label="majority")
    left.set_xlabel("PSNR cap on test images (dB, p95)")
    left.set_ylabel("accuracy")
    left.legend()
    right.plot(caps, [p["psnr"] for p in points], "o-", label="audit decoder (biased)")
    right.plot(caps, caps, "k:", lw=0.8, label="cap (unbiased attackers)")
    right.axhline(points[0]["psnr_baseline"], color="grey", lw=0.8, ls="--", label="mean image")
    right.set_xlabel("PSNR cap on test images (dB, p95)")
    right.set_ylabel("reconstruction PSNR (dB)")
    right.legend()
    fig.suptitle(f"{results['dataset']}: recommended defence at several Fisher caps")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def render(path: Path) -> None:
    results = json.loads(path.read_text())
    path.with_name("caps.md").write_text(markdown(results))
    plot(results, path.with_name("caps.png"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(frontier.DATASETS))
    parser.add_argument("--caps", type=float, nargs="+", default=list(DEFAULT_CAPS))
    parser.add_argument("--budget", choices=("quick", "full"), default="quick")
    parser.add_argument("--data-root", type=Path, default=frontier.paper_tables.DATA)
    parser.add_argument("--only", choices=("caps", "heads"))
    parser.add_argument(
        "--head-seeds", type=int, nargs="+", default=[], help="more seeds for the heads points"
    )
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    dataset = frontier.DATASETS[args.dataset]
    path = RESULTS / dataset.name / CAPS_JSON
    if args.render_only:
        render(path)
        return
    args.data_root = frontier.check_data(dataset, args.data_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    run(args, dataset, path)


if __name__ == "__main__":
    main()
