"""Cost of privacy in one training step, as ratios measured in one run.

Prints:
  * DP step time / non-private step time for the same GroupNorm producer
    (ResNet-18 split 5, Cross-SEC, 64×64, batch 64), DP on the encoder only
    (phase 1 of mode ``both``), with the default ``privacy.grad_sampler`` —
    target ≤ 1.6, aim ≤ 1.3 (``--only samplers``: every grad sampler side by side);
  * the SSIM task-privacy term's share of a (non-DP) step for 2 and 3 tasks
    — target ≤ 5 % and ≤ 10 %;
  * a defended DP step (``DEFENDED``: the recommended preset, censor on a narrow code)
    / the undefended DP step of the paper's method — target ≤ 1.5.

Both sides of each ratio run interleaved in the same process, alternating
rounds, and the medians are compared, because these machines are noisy.

    python benchmarks/step_cost.py            # full: batch 64, 64×64
    python benchmarks/step_cost.py --quick    # smoke run, small and fast
    python benchmarks/step_cost.py --only samplers --rounds 6
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import statistics
import time
import warnings
from collections.abc import Sequence

import torch

from metamorphosis.config import GRAD_SAMPLERS, config_from_dict
from metamorphosis.models.producer import (
    build_heads,
    build_network,
    build_producer,
    train_only,
)
from metamorphosis.privacy.engine import DPEngine, PlannedPhase
from metamorphosis.train.methods import MethodContext, StepInputs, resolve_method
from metamorphosis.train.split import Consumer, producer_step


def _config(num_tasks: int, encoder: str):
    tasks = [{"name": f"t{i}", "kind": "binary"} for i in range(num_tasks)]
    return config_from_dict(
        {
            "model": {"encoder": encoder, "split_index": 5, "module": "cross-sec"},
            "tasks": tasks,
            "privacy": {"mode": "both", "omega": 0.001},
        }
    )


def _setup(num_tasks: int, encoder: str, size: int, batch: int):
    config = _config(num_tasks, encoder)
    shape = (3, size, size)
    network = build_network(config)
    producer = build_producer(config, network, shape)
    heads = build_heads(config.all_labels, network, shape, code_size=config.defence.code_size)
    consumers = {
        s.name: Consumer(s, heads[s.name], torch.optim.AdamW(heads[s.name].parameters(), 1e-4))
        for s in config.all_labels
    }
    images = torch.randn(batch, *shape)
    targets = {s.name: torch.randint(0, 2, (batch,)).float() for s in config.all_labels}
    return config, producer, consumers, images, targets


def _timed(step, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _interleaved(steps: dict[str, callable], rounds: int, per_round: int) -> dict[str, float]:
    """Median seconds per step of each side over all rounds; ``rounds`` holds each
    round's medians, so a ratio's spread across rounds can be printed beside it."""
    for step in steps.values():  # warm-up
        step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    per_round_medians: list[dict[str, float]] = []
    for _ in range(rounds):
        medians = {}
        for name, step in steps.items():
            times = _timed(step, per_round)
            samples[name] += times
            medians[name] = statistics.median(times)
        per_round_medians.append(medians)
    result: dict = {name: statistics.median(values) for name, values in samples.items()}
    result["rounds"] = per_round_medians
    return result


def _spread(values: list[float], fmt: str) -> str:
    return f"rounds {format(min(values), fmt)}-{format(max(values), fmt)}"


def dp_ratio(
    encoder: str, size: int, batch: int, rounds: int, per_round: int, samplers: Sequence[str]
) -> dict[str, float]:
    """Median step seconds: encoder-only DP with each per-sample gradient path in
    ``samplers`` (``privacy.grad_sampler``) vs the same step without DP ("plain")."""
    torch.manual_seed(0)
    config, producer, consumers, images, targets = _setup(1, encoder, size, batch)
    names = [s.name for s in config.all_labels]
    steps = {"plain": _plain_encoder_step(producer, images, targets, consumers, names)}
    for sampler in samplers:
        # a copy per sampler: a model takes one set of Opacus hooks
        model = copy.deepcopy(producer)
        privacy = dataclasses.replace(config.privacy, grad_sampler=sampler)
        engine = DPEngine(  # the trainer's DP wiring, as a DP phase of a run uses it
            privacy,
            [PlannedPhase("encoder", True, 1)],
            train_size=100 * batch,
            batch_size=batch,
            steps_per_epoch=1,
            noise_multiplier=1.0,
        )
        optimizer = torch.optim.AdamW(_encoder_only(model), lr=1e-4)
        dp_model, dp_optimizer = engine.wrap(model, optimizer)
        steps[sampler] = functools.partial(
            producer_step, dp_model, dp_optimizer, images, targets, consumers, names
        )
    return _interleaved(steps, rounds, per_round)


def _encoder_only(producer) -> list:
    """Freeze all but the encoder (phase 1 of mode ``both``); its parameters."""
    train_only(producer, [], encoder=True)
    return list(producer.encoder.parameters())


def _plain_encoder_step(producer, images, targets, consumers, names):
    model = copy.deepcopy(producer)
    optimizer = torch.optim.AdamW(_encoder_only(model), lr=1e-4)
    return functools.partial(producer_step, model, optimizer, images, targets, consumers, names)


def ssim_share(
    num_tasks: int, encoder: str, size: int, batch: int, rounds: int, per_round: int
) -> dict[str, float]:
    """Median step seconds with and without the SSIM term (task privacy, no DP)."""
    torch.manual_seed(0)
    config, producer, consumers, images, targets = _setup(num_tasks, encoder, size, batch)
    names = [s.name for s in config.all_labels]
    optimizer = torch.optim.AdamW(producer.parameters(), lr=1e-4)

    def step(omega):
        return lambda: producer_step(
            producer, optimizer, images, targets, consumers, names, omega=omega
        )

    return _interleaved({"without": step(0.0), "with": step(0.001)}, rounds, per_round)


#: The defended step against the undefended DP step it builds on (phase ``modules`` of
#: mode ``both``, DP, SSIM on; one public task and one private attribute): censoring
#: against 3 restarted adversaries, on an 8-channel bottleneck with release noise.
#: The recommended defence (a narrow variational code, censor), as `defence.preset` gives it.
DEFENDED = {"defence": {"preset": "recommended"}}


def defence_ratio(
    encoder: str, size: int, batch: int, rounds: int, per_round: int
) -> dict[str, float]:
    """Median step seconds: the DP modules step of the paper's method, and defended."""
    steps = {}
    for name, extra in (("undefended", {}), ("defended", DEFENDED)):
        torch.manual_seed(0)
        steps[name] = _dp_method_step(extra, encoder, size, batch)
    return _interleaved(steps, rounds, per_round)


def _dp_method_step(extra: dict, encoder: str, size: int, batch: int):
    """One DP step of phase ``modules``, taken by the method as the trainer takes it."""
    config = config_from_dict(
        {
            "model": {"encoder": encoder, "split_index": 5, "module": "cross-sec"},
            "tasks": [{"name": "t0", "kind": "binary"}],
            "private_attributes": [{"name": "p0", "kind": "binary"}],
            "privacy": {"mode": "both", "omega": 0.001},
            **extra,
        }
    )
    shape = (3, size, size)
    network = build_network(config)
    producer = build_producer(config, network, shape)
    heads = build_heads(config.all_labels, network, shape, code_size=config.defence.code_size)
    method = resolve_method(config)
    method.build_state(
        MethodContext(
            network=network,
            input_shape=shape,
            feature_shape=network.feature_shape(shape),
            heads=heads,
            to_pixels=lambda x: x,
            class_priors={s.name: torch.tensor([0.5, 0.5]) for s in config.all_labels},
        )
    )
    phase = next(p for p in method.phases() if p.name == "modules")
    train_only(producer, phase.labels, encoder=phase.train_encoder)  # as the trainer does
    engine = DPEngine(
        config.privacy,
        [PlannedPhase("modules", True, 1)],
        train_size=100 * batch,
        batch_size=batch,
        steps_per_epoch=1,
        noise_multiplier=1.0,
    )
    params = [p for p in producer.parameters() if p.requires_grad]
    model, optimizer = engine.wrap(producer, torch.optim.AdamW(params, lr=1e-4))
    consumers = {
        s.name: Consumer(s, heads[s.name], torch.optim.AdamW(heads[s.name].parameters(), 1e-4))
        for s in config.all_labels
    }
    images = torch.randn(batch, *shape)
    targets = {s.name: torch.randint(0, 2, (batch,)).float() for s in config.all_labels}
    inputs = StepInputs(model, optimizer, images, targets, consumers)
    return functools.partial(method.step, phase, inputs)


def main() -> None:
    # Opacus' hooks on the first layer fire although images need no grad: harmless.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few repeats")
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds (default 12; 2 with --quick)"
    )
    parser.add_argument(
        "--only",
        choices=("dp", "ssim", "samplers", "defence"),
        default=None,
        help="measure one cost: DP, SSIM, every privacy.grad_sampler's DP, or the defence's",
    )
    args = parser.parse_args()
    if args.quick:
        encoder, size, batch, rounds, per_round = "test_resnet", 32, 16, 2, 2
    else:
        encoder, size, batch, rounds, per_round = "resnet18", 64, 64, 12, 3
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error(f"--rounds {args.rounds} is invalid: expected at least 1")
        rounds = args.rounds
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, encoder {encoder}, "
        f"{size}x{size}, batch {batch}, {rounds} interleaved rounds x {per_round} steps"
    )

    if args.only in (None, "dp"):
        default = config_from_dict({"tasks": [{"name": "t", "kind": "binary"}]})
        sampler = default.privacy.grad_sampler
        _print_dp_ratios(dp_ratio(encoder, size, batch, rounds, per_round, [sampler]))
    if args.only == "samplers":
        _print_dp_ratios(dp_ratio(encoder, size, batch, rounds, per_round, GRAD_SAMPLERS))
    if args.only in (None, "ssim"):
        _print_ssim_shares(encoder, size, batch, rounds, per_round)
    if args.only in (None, "defence"):
        times = defence_ratio(encoder, size, batch, rounds, per_round)
        ratio = times["defended"] / times["undefended"]
        ratios = [r["defended"] / r["undefended"] for r in times["rounds"]]
        print(
            f"defended DP step ({DEFENDED}) {times['defended'] * 1e3:8.1f} ms | undefended DP "
            f"step {times['undefended'] * 1e3:8.1f} ms | ratio {ratio:.2f} "
            f"({_spread(ratios, '.2f')})  (target <= 1.5)"
        )


def _print_dp_ratios(times: dict) -> None:
    samplers = [name for name in times if name not in ("plain", "rounds")]
    for sampler in samplers:
        ratio = times[sampler] / times["plain"]
        ratios = [r[sampler] / r["plain"] for r in times["rounds"]]
        print(
            f"DP (encoder only, {sampler}) step {times[sampler] * 1e3:8.1f} ms | plain step "
            f"{times['plain'] * 1e3:8.1f} ms | ratio {ratio:.2f} ({_spread(ratios, '.2f')})  "
            "(target <= 1.6, aim <= 1.3)"
        )


def _print_ssim_shares(encoder: str, size: int, batch: int, rounds: int, per_round: int) -> None:
    for tasks, target in ((2, 5.0), (3, 10.0)):
        times = ssim_share(tasks, encoder, size, batch, rounds, per_round)
        share = 100.0 * max(times["with"] - times["without"], 0.0) / times["with"]
        shares = [100.0 * max(r["with"] - r["without"], 0.0) / r["with"] for r in times["rounds"]]
        print(
            f"SSIM term, {tasks} tasks: step {times['with'] * 1e3:8.1f} ms with, "
            f"{times['without'] * 1e3:8.1f} ms without | share {share:.1f}% "
            f"({_spread(shares, '.1f')}%)  (target <= {target:.0f}%)"
        )


if __name__ == "__main__":
    main()
