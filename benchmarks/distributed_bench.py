"""Training throughput on 1 and 2 processes (torchrun, gloo on CPU / nccl on CUDA).

The config's data is packed once (``metamorphosis pack``); then the same config is
trained on the pack once as ``metamorphosis train`` and once as ``torchrun
--nproc-per-node 2 -m metamorphosis train`` into fresh run dirs; printed for each:
training images per second (the items of every epoch over ``run.json``'s
``train_seconds``, so the test evaluation is left out), ε, the test metrics, and the
ratio 2 processes / 1 process. On a 2-core CPU one process already uses both cores
(2 torch threads) and torchrun gives each rank one thread, so a ratio near 1 is what
this machine can show; the scaling that matters is on several GPUs.

    python benchmarks/distributed_bench.py                    # CelebA smile/gender, quick size
    python benchmarks/distributed_bench.py --config CONFIG --set train.epochs=2 ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "celeba_smile_gender.yaml"
# The quick size of the paper tables on 2 CPU cores (32×32, half-width ResNet-18).
QUICK = [
    "data.image_size=32",
    "data.max_train=2000",
    "data.max_eval=500",
    "model.encoder=resnet18-slim",
    "train.epochs=1",
    "train.encoder_epochs=1",
]


def train(config: Path, out: Path, overrides: list[str], processes: int) -> dict:
    command = ["-m", "metamorphosis", "train", str(config), "--out", str(out), "--quiet"]
    for item in overrides:
        command += ["--set", item]
    if processes == 1:
        launcher = [sys.executable]
    else:
        torchrun = ["-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
        launcher = [sys.executable, *torchrun]
    subprocess.run([*launcher, *command], check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "run.json").read_text())


def images_per_second(record: dict, out: Path) -> float:
    """Training items seen (the train split once per epoch record) per training second."""
    train_items = _train_size(record)
    epochs = sum('"event": "epoch"' in line for line in (out / "metrics.jsonl").open())
    return train_items * epochs / record["train_seconds"]


def _train_size(record: dict) -> int:
    phase = record["privacy"]["phases"][0]  # batch / sample rate = the split (a DP config)
    return round(record["config"]["train"]["batch_size"] / phase["sample_rate"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=None)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "celeba"))
    args = parser.parse_args()
    overrides = args.overrides if args.overrides is not None else list(QUICK)
    if args.config == DEFAULT_CONFIG:
        overrides.append(f"data.root={args.data_root}")
    with tempfile.TemporaryDirectory(prefix="distributed-bench-") as scratch:
        # Packed first, so that neither run decodes JPEGs inside its training time (each
        # rank would decode its own copy) and both read the same page-cached arrays.
        pack = Path(scratch) / "pack"
        command = [sys.executable, "-m", "metamorphosis", "pack", str(args.config)]
        command += ["--out", str(pack), "--quiet"]
        for item in overrides:
            command += ["--set", item]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        overrides += ["data.name=packed", f"data.root={pack}"]
        results = {}
        for processes in (1, 2):
            out = Path(scratch) / f"run{processes}"
            record = train(args.config, out, overrides, processes)
            rate = images_per_second(record, out)
            results[processes] = rate
            metrics = {t: round(m[next(iter(m))], 3) for t, m in record["metrics"].items()}
            epsilon = record["privacy"].get("epsilon")
            eps = f"{epsilon:.3f}" if epsilon is not None else "—"
            print(
                f"{processes} process(es): {rate:7.1f} train images/s | "
                f"train {record['train_seconds']:.1f} s | ε {eps} | test {metrics}",
                flush=True,
            )
    print(f"2 processes / 1 process: {results[2] / results[1]:.2f}")


if __name__ == "__main__":
    main()
