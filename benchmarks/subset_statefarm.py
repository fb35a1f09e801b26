"""Copy a seeded random subset of StateFarm (same layout) to a new folder.

Used to move the set to a machine whose transfer limit is below the full
91 MB, e.g. ``python benchmarks/subset_statefarm.py ../shared/data/statefarm
/tmp/statefarm13k --count 13000``. The subset keeps the official layout
(``train/cK/img_*.jpg`` plus a filtered ``driver_imgs_list.csv``), so the
``statefarm`` loader reads it unchanged.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--count", type=int, default=13000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(args.src / "driver_imgs_list.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames
        rows = list(reader)
    keep = sorted(random.Random(args.seed).sample(range(len(rows)), min(args.count, len(rows))))
    args.dst.mkdir(parents=True, exist_ok=False)
    with open(args.dst / "driver_imgs_list.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for i in keep:
            row = rows[i]
            relative = Path("train") / row["classname"] / row["img"]
            (args.dst / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.src / relative, args.dst / relative)
            writer.writerow(row)
    print(f"copied {len(keep)} of {len(rows)} images to {args.dst}")


if __name__ == "__main__":
    main()
