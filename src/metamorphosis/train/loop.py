"""The trainer: runs a training method's phases into a run dir, resuming when it can.

What is trained, and how, belongs to the method (:mod:`.methods`: the paper's
``metamorphosis`` with its privacy modes, ``universal``, ``deepobfuscator``,
``kd-mtl``, or one registered by the user). The trainer runs the method's
phases epoch by epoch: batches (Poisson-sampled in DP phases), the producer's
optimiser (wrapped for DP-SGD by :class:`~metamorphosis.privacy.engine.DPEngine`
in DP phases), the consumers (local heads, or remote ones over HTTP), logging
to ``metrics.jsonl``, validation, atomic checkpoints and the final test
evaluation. Adding a task to a finished run
(:func:`metamorphosis.experiment.add_task`) is one more phase that trains only
the new module, with the SSIM term against the frozen existing modules.

All DP phases share one noise multiplier and sample rate, calibrated so the
composition of every DP step meets ``target_epsilon``. By default heads
(consumers) are trained without DP: only producer-side parameters see private
gradients through the split-learning step; ``privacy.private_heads`` trains every
head of a DP phase with DP-SGD in the same batches (the engine's
``block_noise``; a remote consumer is told its head's step with each step). With
``release`` targets, each public task's release noise is calibrated at the start of
every epoch and once after training
(:mod:`.calibration`). A checkpoint is written atomically after
every epoch; a run started again on the same directory resumes from it,
after removing what a kill left behind (temporaries of atomic writes, and the
``metrics.jsonl`` records logged after the checkpoint it resumes from).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..config import Config, config_from_dict, config_to_dict, same_config
from ..data import DatasetSplits
from ..errors import CheckpointError, ConfigError, DataError, MetaMorphosisError
from ..io import atomic_write, json_safe, remove_stale_temporaries
from ..models.encoders import load_pretrained
from ..models.producer import (
    Producer,
    build_heads,
    build_network,
    build_producer,
    freeze,
    train_only,
)
from ..models.release import kl_scale, new_secret
from ..privacy.accounting import DPPhase
from ..privacy.engine import DPEngine, PlannedPhase
from ..privacy.fisher import release_sigmas, set_release_sigmas
from .calibration import ReleaseCalibrator, calibration_pixels
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .distributed import ONE_PROCESS, BatchShare, Distributed, SyncedOptimizer, rank_seed
from .erasure import finetune_heads, fit_erasers
from .evaluate import evaluate
from .methods import MethodContext, PhasePlan, StepInputs, resolve_method
from .optimizers import make_optimizer
from .remote import RemoteConsumer, TrainingHub, check_remote_method
from .split import Consumer, ConsumerLike, StepResult

__all__ = ["PhasePlan", "plan_phases", "Trainer", "TrainResult", "make_optimizer"]

LOG_EVERY_STEPS = 10
METRICS_NAME = "metrics.jsonl"
#: Run-dir files written with ``atomic_write`` while training (the last four by
#: ``rundir.write_run``); a kill mid-write leaves a temporary of one of them behind.
ATOMIC_RUN_FILES = (
    CHECKPOINT_NAME,
    METRICS_NAME,
    "run.json",
    "producer.safetensors",
    "heads.safetensors",
    "release.key",
)
_RESTART = "delete it to restart training from scratch"
#: Checkpoint entries the trainer reads back, and the types they must have.
_STATE_TYPES: dict[str, type | tuple[type, ...]] = {
    "phase": int,
    "epoch": int,
    "steps_done": list,
    "producer": dict,
    "heads": dict,
    "head_optimizers": dict,
    "producer_optimizer": (dict, type(None)),
    "torch_rng": torch.Tensor,
    "config": str,
}


def plan_phases(config: Config) -> list[PhasePlan]:
    """The phases ``config.method`` trains (for the paper's method: by ``privacy.mode``)."""
    return resolve_method(config).phases()


@dataclass
class TrainResult:
    utility: dict[str, dict[str, float]]
    swap: dict[str, dict[str, float]]
    dp_phases: list[DPPhase]
    epsilon: float | None
    noise_multiplier: float | None
    sample_rate: float
    seconds: float
    #: ``{task: [private attributes erased from its release]}`` (``defence.erase``).
    erased: dict[str, list[str]] = field(default_factory=dict)
    #: ``{task: dFIL statistics on the calibration images | None}`` (None: no noise).
    dfil: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    #: dFIL of every public task's release of one image together, or None.
    dfil_total: dict[str, Any] | None = None
    #: The public tasks whose heads consumers trained in other processes (``--remote``).
    remote_heads: list[str] = field(default_factory=list)


def _load_remote_head(head: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """A consumer's trained head; only integer buffers (BatchNorm counters) may be absent."""
    result = head.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"the head sent by {name!r}'s consumer does not fit: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )


def _check_state(path: Path, state: dict[str, Any], phases: int) -> None:
    """A checkpoint that loads but lacks what resuming reads is refused in one line."""
    for key, kind in _STATE_TYPES.items():
        if key not in state:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry; {_RESTART}")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            expected = " or ".join(k.__name__ for k in kinds)
            raise CheckpointError(
                f"checkpoint {path}: {key!r} is a {type(state[key]).__name__}, expected "
                f"{expected}; {_RESTART}"
            )
    steps = state["steps_done"]
    if len(steps) != phases or not all(isinstance(n, int) and n >= 0 for n in steps):
        raise CheckpointError(
            f"checkpoint {path}: 'steps_done' is {steps!r}; expected {phases} step counts; "
            + _RESTART
        )
    if not 0 <= state["phase"] <= phases or state["epoch"] < 0:
        raise CheckpointError(
            f"checkpoint {path}: phase {state['phase']} / epoch {state['epoch']} is outside "
            f"this run's {phases} phase(s); {_RESTART}"
        )


def _restore(path: Path, what: str, load: Callable[[Any], Any], saved: Any) -> None:
    """``load(saved)``; a state that does not fit the model becomes one CheckpointError line."""
    try:
        load(saved)
    except MetaMorphosisError:
        raise
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        text = f"no entry {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        reason = " ".join(text.split())  # torch's messages span lines
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        raise CheckpointError(
            f"cannot resume from {path}: its {what} does not fit this run ({reason}); {_RESTART}"
        ) from None


def _written_for(saved: str, config: Config) -> bool:
    """Whether a checkpoint's recorded config is ``config``'s training (it may resume
    on another device); a record that no longer parses is not."""
    try:
        return same_config(config_from_dict(json.loads(saved)), config)
    except (ValueError, TypeError):  # ConfigError included: not this run's checkpoint
        return False


def _truncate_metrics(path: Path, size: Any) -> None:
    """Keep the first ``size`` bytes: the records logged up to the checkpoint.

    A run killed after its last checkpoint has logged steps (and maybe an
    epoch) that the resumed run logs again; without this they would appear twice.
    """
    if not isinstance(size, int) or not path.is_file() or path.stat().st_size <= size:
        return  # older checkpoints do not record the size; a shorter file is left alone
    with path.open("rb") as handle:
        kept = handle.read(size)
    atomic_write(path, lambda tmp: tmp.write_bytes(kept))


def _check_splits(data: DatasetSplits, config: Config) -> None:
    """Empty train or test splits would divide by zero or report NaN metrics after training."""
    total = sum(_size(split) for split in (data.train, data.val, data.test))
    hints = {
        "train": "add items or lower data.val_fraction / data.test_fraction",
        "test": "add items, raise data.test_fraction or, for a CSV manifest with a split "
        "column, mark some rows 'test'",
    }
    for split, hint in hints.items():
        if _size(getattr(data, split)) == 0:
            raise DataError(
                f"dataset {config.data.name!r} has an empty {split} split ({total} items in "
                f"all): training needs at least one {split} item; {hint}"
            )


class _WithIndex(Dataset):
    """``(image, labels, index)``: the index names the item for remote consumers."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return _size(self.dataset)

    def __getitem__(self, index: int):
        image, labels = self.dataset[index]
        return image, labels, index


def _size(dataset: Dataset) -> int:
    """Our splits all have a length; torch's ``Dataset`` type does not promise one."""
    return len(cast(Sized, dataset))


class _ClassPriors(Mapping[str, torch.Tensor]):
    """Each classification label's class frequencies in the train split.

    Counted on first use: only a method that reads them (``censor``) pays for a
    pass over the labels (which renders every synthetic scene).
    """

    def __init__(self, train: Dataset, config: Config) -> None:
        self._train = train
        self._specs = {spec.name: spec for spec in config.all_labels if not spec.is_dense}
        self._priors: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._priors:
            spec = self._specs[name]  # a KeyError for any other name, as a dict gives
            targets = _class_targets(self._train, name)
            counts = torch.bincount(targets, minlength=spec.num_classes or 0)
            self._priors[name] = counts.float() / counts.sum()
        return self._priors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


def _class_targets(train: Dataset, name: str) -> torch.Tensor:
    """Every train item's class id, from the label files where the dataset can read them."""
    read = getattr(train, "class_targets", None)
    if read is not None:
        return torch.as_tensor(read(name), dtype=torch.long)
    return torch.stack([torch.as_tensor(train[i][1][name]).long() for i in range(_size(train))])


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Runs every phase of a config into ``run_dir``, resuming when possible.

    Args:
        config: the experiment; ``num_classes`` must already be filled from
            the data (see :meth:`Config.with_label_classes`).
        data: the train / val / test splits.
        run_dir: where the checkpoint and ``metrics.jsonl`` go.
        progress: show tqdm bars (they hide themselves off a terminal).
        remote: a hub whose consumers, in other processes, train the heads of
            ``remote.tasks`` (public tasks); the other heads train here.
        phases: the phases to run instead of :func:`plan_phases` (adding a task).
        noise_multiplier: the DP noise instead of calibrating it to
            ``privacy.target_epsilon`` for ``phases``.
        prior_dp_phases: DP phases already spent on these weights; ε and the
            run's phase list compose them with this run's.
        distributed: the ranks under torchrun (see :mod:`.distributed`): each trains
            on its share of every global batch; rank 0 alone writes.
    """

    def __init__(
        self,
        config: Config,
        data: DatasetSplits,
        run_dir: str | Path,
        *,
        progress: bool = True,
        remote: TrainingHub | None = None,
        phases: Sequence[PhasePlan] | None = None,
        noise_multiplier: float | None = None,
        prior_dp_phases: Sequence[DPPhase] = (),
        distributed: Distributed = ONE_PROCESS,
    ):
        _check_splits(data, config)
        self.config = config
        self.distributed = distributed
        self._share = BatchShare()  # this rank's part of the current global batch
        self.remote = remote
        self.data = data
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.device = _device(config.train.device)
        torch.manual_seed(config.train.seed)
        self.network = build_network(config)
        if config.model.pretrained:  # a local torchvision-format file; nothing is downloaded
            load_pretrained(self.network, config.model.pretrained)
        self.producer: Producer = build_producer(
            config, self.network, data.input_shape, preprocess=data.transform
        ).to(self.device)
        if config.release.calibrated or any(r.noisy for r in self.producer.releases.values()):
            self.producer.secret = new_secret()  # the key of the keyed release noise
        self.erased: dict[str, list[str]] = {}
        self.release_finished = False  # erasers fitted, noise recalibrated, heads tuned
        self._calibrator: ReleaseCalibrator | None = None
        self._wrapped_heads: dict[str, tuple[nn.Module, Any]] = {}
        self.heads = build_heads(
            config.all_labels,
            self.network,
            data.input_shape,
            code_size=config.defence.code_size,
        ).to(self.device)
        self.method = resolve_method(config)
        context = MethodContext(
            network=self.network,
            input_shape=data.input_shape,
            feature_shape=self.network.feature_shape(data.input_shape),
            heads=self.heads,
            to_pixels=data.transform.to_pixels,
            class_priors=_ClassPriors(data.train, config),
        )
        self.method_state = self.method.build_state(context).to(self.device)
        head_lr = config.train.head_lr or config.train.lr
        self.local_consumers: dict[str, Consumer] = {
            spec.name: Consumer(
                spec,
                self.heads[spec.name],
                make_optimizer(
                    config.train.optimizer,
                    list(self.heads[spec.name].parameters()),
                    head_lr,
                    config.train.weight_decay,
                ),
            )
            for spec in config.all_labels
        }
        self._synchronise_optimizers()
        self.consumers: dict[str, ConsumerLike] = dict(self.local_consumers)
        if remote is not None:
            check_remote_method(self.method)
            for spec in config.tasks:
                if spec.name in remote.tasks:
                    self.consumers[spec.name] = RemoteConsumer(spec, remote)
                    del self.local_consumers[spec.name]
        self.phases = list(phases) if phases is not None else self.method.phases()
        self.method.check_dp(self.phases)
        self._check_private_heads()
        self.batch_size = min(config.train.batch_size, _size(data.train))
        self.privacy = DPEngine(
            config.privacy,
            [PlannedPhase(p.name, p.dp, p.epochs) for p in self.phases],
            train_size=_size(data.train),
            batch_size=self.batch_size,
            steps_per_epoch=self.steps_per_epoch,
            noise_multiplier=noise_multiplier,
            prior_phases=prior_dp_phases,
            distributed=distributed,
        )

    def _check_private_heads(self) -> None:
        """``privacy.private_heads`` needs every phase DP: a plain phase trains heads too."""
        if not self.config.privacy.private_heads:
            return
        plain = [phase.name for phase in self.phases if not phase.dp]
        if plain:
            raise ConfigError(
                "privacy.private_heads=true: a phase without DP-SGD trains heads without it "
                f"(phase {plain[0]!r})"
            )

    @property
    def calibrator(self) -> ReleaseCalibrator:
        """The release noise's calibration on fixed training images (built on first use)."""
        if self._calibrator is None:
            release = self.config.release
            pixels = calibration_pixels(
                self.data.train,
                self.data.transform,
                release.calibration_images,
                seed=self.config.train.seed,
            )
            self._calibrator = ReleaseCalibrator(
                self.config, self.producer, pixels, self.data.transform, self.device
            )
        return self._calibrator

    def _synchronise_optimizers(self) -> None:
        """Under torchrun, every optimiser outside DP-SGD all-reduces before it steps."""
        if not self.distributed.active:
            return
        for consumer in self.local_consumers.values():
            consumer.optimizer = self._synced(consumer.optimizer)
        optimizers = self.method_state.optimizers
        for name, optimizer in optimizers.items():
            optimizers[name] = self._synced(optimizer)

    def _synced(self, optimizer: Any) -> Any:
        return SyncedOptimizer(optimizer, self._share) if self.distributed.active else optimizer

    @property
    def steps_per_epoch(self) -> int:
        steps = -(-_size(self.data.train) // self.batch_size)
        cap = self.config.train.max_steps_per_epoch
        return min(steps, cap) if cap else steps

    # -- data ---------------------------------------------------------------------
    def _loader(self, dataset: Dataset, *, dp: bool, epoch_seed: int) -> DataLoader:
        generator = torch.Generator().manual_seed(epoch_seed)
        return self.privacy.loader(
            _WithIndex(dataset),  # remote consumers find their labels by item id
            dp=dp,
            generator=generator,
            num_workers=self.config.train.num_workers,
        )

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=max(self.batch_size, 64),
            shuffle=False,
            num_workers=self.config.train.num_workers,
        )

    # -- phases -------------------------------------------------------------------
    def _setup_phase(self, phase: PhasePlan) -> tuple[nn.Module, torch.optim.Optimizer | None]:
        train_only(self.producer, phase.labels, encoder=phase.train_encoder)
        params = [p for p in self.producer.parameters() if p.requires_grad]
        params += self.method.extra_parameters(phase)
        blocks = 1 + self._wrap_heads(phase) if phase.dp else 1
        if not params:
            return self.producer, None
        train = self.config.train
        optimizer = make_optimizer(train.optimizer, params, train.lr, train.weight_decay)
        if phase.dp:
            return self.privacy.wrap(self.producer, optimizer, blocks=blocks)
        return self.producer, self._synced(optimizer)

    def _wrap_heads(self, phase: PhasePlan) -> int:
        """Under ``privacy.private_heads``, the heads ``phase`` trains, on DP-SGD (each
        clipped apiece, the producer another block); how many there are.

        An in-process head is wrapped here (under torchrun like the producer: the noise
        once, the clipped sums all-reduced, in place of its synced step); a remote
        consumer is sent the step's settings with every step and runs it itself.
        """
        if not self.config.privacy.private_heads:
            return 0
        names = [name for name in phase.labels if name in self.consumers]
        blocks = 1 + len(names)
        for name in names:
            if name in self.local_consumers:
                self._wrap_local_head(self.local_consumers[name], blocks)
            else:
                cast(RemoteConsumer, self.consumers[name]).dp = self.privacy.head_dp(blocks)
        return len(names)

    def _wrap_local_head(self, consumer: Consumer, blocks: int) -> None:
        self._wrapped_heads[consumer.spec.name] = (consumer.head, consumer.optimizer)
        optimizer = consumer.optimizer  # its own step, not the synced one: DP-SGD syncs
        plain = optimizer.optimizer if isinstance(optimizer, SyncedOptimizer) else optimizer
        consumer.head, consumer.optimizer = self.privacy.wrap(consumer.head, plain, blocks=blocks)

    def _unwrap_heads(self) -> None:
        for name, (head, optimizer) in self._wrapped_heads.items():
            consumer = self.local_consumers[name]
            self.privacy.unwrap(consumer.head)
            consumer.head, consumer.optimizer = head, optimizer
        self._wrapped_heads.clear()
        for name, remote in self.consumers.items():
            if name not in self.local_consumers:
                cast(RemoteConsumer, remote).dp = None

    def _train_epoch(self, phase: PhasePlan, model, optimizer, loader, log, epoch: int) -> dict:
        bar = tqdm(
            loader,
            desc=f"{phase.name} {epoch + 1}/{phase.epochs}",
            leave=False,
            disable=not self.progress,
            unit="step",
        )
        with warnings.catch_warnings():
            # Opacus' hooks on the first layer fire although images need no grad: harmless.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            return self._train_batches(phase, model, optimizer, bar, log, epoch)

    def _step(self, phase: PhasePlan, model, optimizer, images, targets) -> StepResult:
        """One training step of ``phase``: the method's."""
        inputs = StepInputs(model, optimizer, images, targets, self.consumers)
        return self.method.step(phase, inputs)

    def _train_batches(self, phase, model, optimizer, bar, log, epoch: int) -> dict:
        totals: dict[str, float] = {}
        seen = 0
        for step, (images, targets, index) in enumerate(bar):
            self._on_batch(index)
            images = images.to(self.device)
            targets = {k: v.to(self.device) for k, v in targets.items()}
            result = self._step(phase, model, optimizer, images, targets)
            self._check_finite(result.losses, phase.name, epoch, step)
            for name, value in {**result.losses, **result.terms}.items():
                totals[name] = totals.get(name, 0.0) + value * result.batch_size
            seen += result.batch_size
            bar.set_postfix({k: f"{v:.3f}" for k, v in result.losses.items()})
            if step % LOG_EVERY_STEPS == 0:
                log(
                    {
                        "event": "step",
                        "phase": phase.name,
                        "epoch": epoch,
                        "step": step,
                        "losses": result.losses,
                        **result.terms,
                    }
                )
            if not phase.dp and step + 1 >= self.steps_per_epoch:
                break
        return {k: v / max(seen, 1) for k, v in totals.items()}

    def _check_finite(self, losses: dict[str, float], phase: str, epoch: int, step: int) -> None:
        """Stop at the first NaN / inf loss: every later step would only spread it into the
        weights, and the last checkpoint (written before it) stays as it was."""
        bad = sorted(name for name, value in losses.items() if not math.isfinite(value))
        if bad:
            train = self.config.train
            raise ConfigError(
                f"training diverged in phase {phase!r}, epoch {epoch}, step {step}: the "
                f"{', '.join(bad)} loss is not finite; lower train.lr (now {train.lr:g}) or "
                f"the loss weights (privacy.omega={self.config.privacy.omega:g}, each task's "
                "weight), then train into a new run dir"
            )

    # -- checkpoints --------------------------------------------------------------
    def _checkpoint_state(
        self, phase_index: int, epoch: int, steps_done: list[int], optimizer, metrics_size: int
    ) -> dict[str, Any]:
        return {
            "phase": phase_index,
            "epoch": epoch,
            "steps_done": list(steps_done),
            "metrics_size": metrics_size,  # bytes of metrics.jsonl this state has logged
            "producer": self.producer.state_dict(),
            "heads": self.heads.state_dict(),
            "head_optimizers": {  # a DP head's optimiser saves its original's state
                n: c.optimizer.state_dict() for n, c in self.local_consumers.items()
            },
            "producer_optimizer": optimizer.state_dict() if optimizer is not None else None,
            # the method's training state ("auxiliary": the key older checkpoints use)
            "auxiliary": self.method_state.state_dict(),
            "auxiliary_optimizers": self.method_state.optimizer_states(),
            "torch_rng": torch.get_rng_state(),
            "config": json.dumps(config_to_dict(self.config), sort_keys=True),
            "noise_multiplier": self.privacy.noise_multiplier,
            "release_secret": self.producer.secret.hex() if self.producer.secret else "",
            "world_size": self.distributed.world_size,
            "erased": json.dumps(self.erased),
            "release_finished": self.release_finished,
            "release_sigma": json.dumps(self._sigmas()),
        }

    def _sigmas(self) -> dict[str, float]:
        """Each public task's release noise now (calibrated ones change every epoch)."""
        staged = [t for t in self.producer.tasks if t in self.producer.releases]
        return release_sigmas(self.producer, staged)

    def _resume(self) -> dict[str, Any] | None:
        path = self.run_dir / CHECKPOINT_NAME
        if not path.exists():
            return None
        state = load_checkpoint(path)
        _check_state(path, state, len(self.phases))
        if not _written_for(state["config"], self.config):
            raise CheckpointError(
                f"{path} was written for another config; use a new --out directory "
                "or delete the checkpoint to start over"
            )
        saved_world = state.get("world_size", 1)
        if saved_world != self.distributed.world_size:
            raise CheckpointError(
                f"{path} was written by a run of {saved_world} process(es); resume it with "
                f"the same number (torchrun --nproc-per-node), not "
                f"{self.distributed.world_size}, or delete the checkpoint to start over"
            )
        _restore(path, "producer", self.producer.load_state_dict, state["producer"])
        _restore(path, "heads", self.heads.load_state_dict, state["heads"])
        head_states = state["head_optimizers"]
        for name, consumer in self.local_consumers.items():
            what = f"{name!r} head optimizer"
            _restore(path, what, consumer.optimizer.load_state_dict, head_states.get(name))
        method_state = self.method_state  # older checkpoints have no such entries: {}
        saved_state = state.get("auxiliary", {})
        _restore(path, "method state", method_state.load_state_dict, saved_state)
        optimizers = state.get("auxiliary_optimizers", {})
        _restore(path, "method optimizers", method_state.load_optimizer_states, optimizers)
        _restore(path, "random state", torch.set_rng_state, state["torch_rng"])
        if state.get("release_secret"):
            self.producer.secret = bytes.fromhex(state["release_secret"])
        self.erased = json.loads(state.get("erased", "{}"))
        # older checkpoints: the erasure was the only step after the phases
        self.release_finished = bool(state.get("release_finished", bool(self.erased)))
        set_release_sigmas(self.producer, json.loads(state.get("release_sigma", "{}")))
        if self.distributed.is_main:
            _truncate_metrics(self.run_dir / METRICS_NAME, state.get("metrics_size"))
        return state

    # -- the run ------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Run (or resume) every phase, then evaluate on the test split."""
        started = time.perf_counter()
        main = self.distributed.is_main  # the one rank that writes
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.run_dir, ATOMIC_RUN_FILES)
        log_path = self.run_dir / METRICS_NAME

        def log(record: dict[str, Any]) -> None:
            if not main:
                return
            with open(log_path, "a") as handle:
                # strict JSON: a diverged loss is logged as null, never as NaN
                handle.write(json.dumps(json_safe(record), allow_nan=False) + "\n")

        self.distributed.barrier()  # rank 0 has cleaned up before anyone reads the checkpoint
        state = self._resume()
        steps_done = state["steps_done"] if state else [0] * len(self.phases)
        start_phase = state["phase"] if state else 0
        start_epoch = state["epoch"] if state else 0
        if state:  # killed after the last epoch: only the evaluation is left to do
            done = start_phase == len(self.phases)
            name = "evaluation" if done else self.phases[start_phase].name
            log({"event": "resume", "phase": name, "epoch": start_epoch})
        val_loader = self._eval_loader(self.data.val)
        for index in range(start_phase, len(self.phases)):
            phase = self.phases[index]
            model, optimizer = self._setup_phase(phase)
            first_epoch = start_epoch if index == start_phase else 0
            if state and index == start_phase and state["producer_optimizer"] and optimizer:
                checkpoint = self.run_dir / CHECKPOINT_NAME
                saved = state["producer_optimizer"]
                _restore(checkpoint, "producer optimizer", optimizer.load_state_dict, saved)
            for epoch in range(first_epoch, phase.epochs):
                epoch_seed = self.config.train.seed * 1_000_003 + index * 1009 + epoch
                loader = self._loader(self.data.train, dp=phase.dp, epoch_seed=epoch_seed)
                self.producer.kl_scale = kl_scale(self.config.defence.beta_warmup, epoch)
                if self.distributed.active:  # the ranks' in-step noise, fixed per epoch
                    seed = rank_seed(self.config.train.seed, self.distributed.rank, index, epoch)
                    torch.manual_seed(seed)
                if self.config.release.calibrated:
                    event = self.calibrator.calibrate()
                    log({"event": "calibrate", "phase": phase.name, "epoch": epoch, **event})
                t0 = time.perf_counter()
                train_losses = self._train_epoch(phase, model, optimizer, loader, log, epoch)
                if phase.dp:
                    steps_done[index] += self.steps_per_epoch
                val = self._validate(phase, val_loader)
                log(
                    {
                        "event": "epoch",
                        "phase": phase.name,
                        "epoch": epoch,
                        "train": train_losses,
                        "val": val,
                        "epsilon": self.privacy.epsilon(steps_done),
                        "seconds": round(time.perf_counter() - t0, 3),
                    }
                )
                done_phase, done_epoch = (index, epoch + 1)
                if done_epoch == phase.epochs:
                    done_phase, done_epoch = index + 1, 0
                if main:
                    save_checkpoint(
                        self.run_dir / CHECKPOINT_NAME,
                        self._checkpoint_state(
                            done_phase,
                            done_epoch,
                            steps_done,
                            optimizer if done_phase == index else None,
                            log_path.stat().st_size if log_path.exists() else 0,
                        ),
                    )
            self.privacy.unwrap(model)  # hooks and grad_sample attributes off the producer
            self._unwrap_heads()
            freeze(self.producer, False)
        if not self.release_finished:
            self._finish_release(steps_done, log, log_path)
        if self.remote is not None:  # the remote heads, for the run's own evaluation
            for name, state in self.remote.request_heads(self.remote.timeout).items():
                _load_remote_head(self.heads[name], state, name)
            self.remote.close()
        test_loader = self._eval_loader(self.data.test)
        utility, swap = evaluate(
            self.producer, self.heads, self.config.all_labels, test_loader, self.device
        )
        dfil, dfil_total = self._release_statistics()
        return TrainResult(
            utility=utility,
            swap=swap,
            dp_phases=self.privacy.dp_phases(steps_done),
            epsilon=self.privacy.epsilon(steps_done),
            noise_multiplier=self.privacy.noise_multiplier,
            sample_rate=self.privacy.sample_rate,
            seconds=time.perf_counter() - started,
            erased=dict(self.erased),
            dfil=dfil,
            dfil_total=dfil_total,
            remote_heads=[] if self.remote is None else list(self.remote.tasks),
        )

    def _release_statistics(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``run.json``'s dFIL per public task on the calibration images (nothing to
        measure when no release is noisy)."""
        if not any(r.noisy for r in self.producer.releases.values()):
            return {}, None
        return self.calibrator.statistics()

    def _finish_release(self, steps_done: list[int], log, log_path: Path) -> None:
        """After the phases: fit the erasers (``defence.erase``), calibrate the release
        noise to the final weights (``release``), fine-tune the heads on the release they
        will read (not under ``privacy.private_heads``: that would be a step without DP);
        checkpoint."""
        erase = self.config.defence.erase == "linear"
        calibrated = self.config.release.calibrated
        if not (erase or calibrated):
            return
        t0 = time.perf_counter()
        if erase:
            self.erased = fit_erasers(
                self.producer, self._eval_loader(self.data.train), self.config, self.device
            )
        if calibrated:
            event = self.calibrator.calibrate()
            log({"event": "calibrate", "phase": "release", "epoch": 0, **event})
        epochs = 0 if self.config.privacy.private_heads else self.config.defence.head_epochs
        self._finetune_heads(epochs)
        if erase:
            log(
                {
                    "event": "erase",
                    "erased": self.erased,
                    "head_epochs": epochs,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            )
        self.release_finished = True
        if self.distributed.is_main:
            size = log_path.stat().st_size if log_path.exists() else 0
            state = self._checkpoint_state(len(self.phases), 0, steps_done, None, size)
            save_checkpoint(self.run_dir / CHECKPOINT_NAME, state)

    def _finetune_heads(self, epochs: int) -> None:
        tasks = [spec.name for spec in self.config.tasks]
        for epoch in range(epochs):
            epoch_seed = self.config.train.seed * 1_000_003 + len(self.phases) * 1009 + epoch
            loader = self._loader(self.data.train, dp=False, epoch_seed=epoch_seed)
            finetune_heads(
                self.producer, self.consumers, loader, tasks, self.device, self._on_batch
            )
        self.producer.train()

    def _on_batch(self, index: Tensor) -> None:
        """Before a batch's steps: this rank's share of the global batch (torchrun), and
        the item ids by which remote consumers look their labels up."""
        self._share.current = self.distributed.local_share(len(index))
        if self.remote is not None:
            item_ids = self.data.train.item_ids  # type: ignore[attr-defined]
            self.remote.current_ids = [item_ids[i] for i in index.tolist()]

    def _validate(self, phase: PhasePlan, loader: DataLoader) -> dict[str, dict[str, float]]:
        """Validation metrics of the phase's local labels (none while teachers train)."""
        if _size(loader.dataset) == 0:  # data.val_fraction 0: nothing to validate on
            return {}
        names = self.method.validated_labels(phase)
        labels = self._labels([n for n in names if n in self.local_consumers])
        if not labels:
            return {}
        return evaluate(self.producer, self.heads, labels, loader, self.device, swap=False)[0]

    def _labels(self, names: Sequence[str]):
        return [spec for spec in self.config.all_labels if spec.name in names]
