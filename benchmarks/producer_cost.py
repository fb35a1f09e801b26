"""Producer cost per split index (paper Tables 9, 10 and 12): sizes, feature size, latency.

Builds the config's producer and consumer heads at each split index (weights
do not change sizes or CPU latency, so no training is needed), times them
with :func:`metamorphosis.audit.cost.producer_cost` on this machine, and
writes one JSON that ``benchmarks/results_page.py`` turns into a table:

    python benchmarks/producer_cost.py configs/celeba_smile_gender.yaml \\
        --splits 5 7 8 --out docs/results/producer_cost.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from metamorphosis.audit.cost import producer_cost
from metamorphosis.config import load_config
from metamorphosis.data.transforms import ImageTransform
from metamorphosis.models.producer import build_heads, build_network, build_producer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--splits", type=int, nargs="+", default=[5, 7, 8])
    parser.add_argument("--classes", type=int, default=2, help="outputs of multiclass heads")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = {}
    for split in args.splits:
        config = load_config(args.config, [f"model.split_index={split}"])
        config = config.with_label_classes({s.name: args.classes for s in config.all_labels})
        shape = ImageTransform(config.data.image_size).output_shape
        torch.manual_seed(0)
        network = build_network(config)
        producer = build_producer(config, network, shape)
        heads = build_heads(config.all_labels, network, shape, code_size=config.defence.code_size)
        rows[str(split)] = producer_cost(producer, heads, repeats=args.repeats)
        cost = rows[str(split)]
        print(
            f"split {split}: features {cost['encoder']['feature_shape']}, producer "
            f"{cost['producer']['size_mb']:.3g} MB, encoder "
            f"{cost['encoder']['latency_ms']:.2f} ms/image"
        )
    record = {"config": str(args.config), "input_shape": list(shape), "splits": rows}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
