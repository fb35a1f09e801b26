"""Loading throughput and memory: a packed dataset against the JPEG loader, CelebA 10k at 64×64.

Three loaders of the same training split (8,000 faces, ``configs/celeba_smile_gender.yaml``
at 64×64), each read for two epochs through a shuffling ``DataLoader`` (batch 64, no
workers, no model), images/s per epoch:

* ``jpeg``: decode and resize every file every epoch (``data.cache: false``);
* ``jpeg+cache``: the default: the first epoch decodes into a per-process cache,
  later epochs read it;
* ``packed``: ``metamorphosis pack`` once (timed apart), then memory-mapped arrays.

Before each loader's first epoch its files are evicted from the page cache
(``posix_fadvise(DONTNEED)``: clean pages, no privileges needed), so the first epoch
is a cold read. Then memory per rank with 2 ranks: two spawned processes each build
the split and read one epoch; per process RSS, USS (its own pages) and PSS (shared
pages split between the sharers), from ``psutil``.

    python benchmarks/pack_bench.py [--data-root ../shared/data/celeba] [--epochs 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from torch.utils.data import DataLoader

from metamorphosis.config import load_config
from metamorphosis.data import build_datasets
from metamorphosis.data.packed import pack_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "celeba_smile_gender.yaml"
BATCH = 64


def evict(paths) -> None:
    """Drop these files' clean pages from the page cache (a cold first read)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def data_config(loader: str, data_root: Path, pack: Path):
    overrides = ["data.image_size=64", "data.max_train=null", "data.max_eval=null"]
    if loader == "packed":
        overrides += ["data.name=packed", f"data.root={pack}"]
    else:
        overrides += [f"data.root={data_root}", f"data.cache={loader == 'jpeg+cache'}"]
    return load_config(CONFIG, overrides)


def files_of(loader: str, data_root: Path, pack: Path) -> list[Path]:
    if loader == "packed":
        return sorted(pack.glob("*.npy"))
    return sorted((data_root / "img_align_celeba").glob("*.jpg"))


def epochs_per_second(config, epochs: int) -> list[float]:
    train = build_datasets(config.data, config.all_labels, seed=config.train.seed).train
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, num_workers=0)
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        count = sum(len(images) for images, _ in loader)
        rates.append(count / (time.perf_counter() - start))
    return rates


def _rank(config, out) -> None:
    torch.set_num_threads(1)
    epochs_per_second(config, 1)
    info = psutil.Process().memory_full_info()
    out.put((info.rss, info.uss, info.pss))


def memory_of_two_ranks(config) -> list[tuple[int, int, int]]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    ranks = [context.Process(target=_rank, args=(config, out)) for _ in range(2)]
    for rank in ranks:
        rank.start()
    results = [out.get(timeout=900) for _ in ranks]
    for rank in ranks:
        rank.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = ROOT.parent / "shared" / "data" / "celeba"
    parser.add_argument("--data-root", type=Path, default=default_root)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if not (args.data_root / "list_eval_partition.txt").is_file():
        sys.exit(f"no CelebA at {args.data_root}: pass --data-root")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="pack-bench-") as scratch:
        pack = Path(scratch) / "celeba64"
        source = data_config("jpeg", args.data_root, pack)
        evict(files_of("jpeg", args.data_root, pack))
        start = time.perf_counter()
        pack_dataset(source.data, source.all_labels, pack, seed=source.train.seed)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in pack.iterdir()) / 2**20
        print(f"pack: 10,000 faces at 64×64 in {seconds:.1f} s ({size:.0f} MiB on disk)")
        rates = {}
        for loader in ("jpeg", "jpeg+cache", "packed"):
            evict(files_of(loader, args.data_root, pack))
            config = data_config(loader, args.data_root, pack)
            rates[loader] = epochs_per_second(config, args.epochs)
            shown = " | ".join(f"epoch {i + 1} {r:7.0f} img/s" for i, r in enumerate(rates[loader]))
            print(f"{loader:<11} {shown}", flush=True)
        first = rates["packed"][0] / rates["jpeg+cache"][0]
        later = rates["packed"][-1] / rates["jpeg+cache"][-1]
        print(f"packed / jpeg+cache: first epoch {first:.2f}, later epochs {later:.2f}")
        for loader in ("jpeg+cache", "packed"):
            per_rank = memory_of_two_ranks(data_config(loader, args.data_root, pack))
            shown = ", ".join(
                f"RSS {rss / 2**20:.0f} / USS {uss / 2**20:.0f} / PSS {pss / 2**20:.0f} MiB"
                for rss, uss, pss in per_rank
            )
            print(f"2 ranks, {loader:<11} per rank: {shown}", flush=True)
        shutil.rmtree(pack)


if __name__ == "__main__":
    main()
