"""Typed, frozen configuration.

YAML only fills these dataclasses; every check lives in ``__post_init__`` so a
bad value is reported once, with its key, its value and what is allowed. The
resolved configuration (defaults filled in) is what ``run.json`` records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .presets import PRESETS, expand_preset

__all__ = [
    "LABEL_KINDS",
    "CLASSIFICATION_KINDS",
    "DENSE_KINDS",
    "PRIVACY_MODES",
    "PER_TASK_MODULES_METHODS",
    "DefenceConfig",
    "ReleaseConfig",
    "PRIVATE_HEADS_METHODS",
    "method_section",
    "MAX_TARGET_EPSILON",
    "LabelSpec",
    "DataConfig",
    "ModelConfig",
    "PrivacyConfig",
    "TrainConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "same_config",
    "apply_overrides",
    "data_root_from_env",
    "is_finite_number",
    "check_positive",
    "check_int",
    "build_section",
]

CLASSIFICATION_KINDS = ("binary", "multiclass")
DENSE_KINDS = ("segmentation", "depth", "normals")
LABEL_KINDS = CLASSIFICATION_KINDS + DENSE_KINDS
PRIVACY_MODES = ("none", "task", "input", "both")
#: The methods that build a metamorphosis module per task (the paper's, and the
#: defences built on it); every other method publishes one shared map
#: (``Config.module_kind``).
PER_TASK_MODULES_METHODS = frozenset({"metamorphosis", "censor", "nopeek"})
#: The methods ``privacy.private_heads`` can train: every trained weight is a producer
#: parameter or a consumer head, each stepped by DP-SGD (a method's own models, such as
#: censor's adversaries or DeepObfuscator's decoder, train without DP).
PRIVATE_HEADS_METHODS = ("metamorphosis", "universal")
CHANNELS = ("vib", "gaussian")
ERASERS = ("none", "linear")
#: Largest released map (values per image) a linear eraser is fitted on: its
#: whitening needs an eigendecomposition of the d × d feature covariance.
MAX_ERASED_VALUES = 4096
ACCOUNTANTS = ("prv", "rdp")
SIMILARITIES = ("ssim", "ms-ssim")
#: How per-sample gradients are computed (privacy.grad_sampler); all give the same
#: gradients (tests/train/test_methods_dp_contract.py). ``hooks``: Opacus' per-layer
#: formulas after the ordinary backward (the default); ``ew``: PyTorch's expanded
#: weights, which compute them in place of the batch gradient; ``functorch``: ``vmap``
#: over each layer's gradient. On the conv encoder none was reliably faster than
#: hooks (``benchmarks/step_cost.py --only samplers``; docs/RESULTS.md). Not offered:
#: ghost clipping (Opacus 1.6 has ghost norms for Linear and Embedding only, so on a
#: conv encoder it computes every per-sample gradient anyway and adds a backward pass).
GRAD_SAMPLERS = ("hooks", "ew", "functorch")
OPTIMIZERS = ("adamw", "adam", "sgd")
NORMS = ("group", "batch")
DEVICES = ("cpu", "cuda", "auto")
DATA_ENV_VAR = "METAMORPHOSIS_DATA"
#: Largest image side: far past any dataset here, and a typo beyond it would try to
#: render or allocate gigabytes per image before any error.
MAX_IMAGE_SIDE = 4096
#: Most generated scenes (``data.num_samples``): the item ids alone are held in memory.
MAX_SAMPLES = 10_000_000
#: Seeds stay below 2**32 (NumPy's and scikit-learn's limit; the trainer derives
#: per-epoch torch seeds as seed * 1_000_003 + …, which must fit in 64 bits).
MAX_SEED = 2**32 - 1
#: DataLoader worker processes: more is a fork bomb, not a speed-up.
MAX_WORKERS = 64
#: Largest ``privacy.target_epsilon``: beyond it the bound promises nothing, and Opacus'
#: noise calibration stops converging (measured: PRV took 4.5 min for ε = 100 at q = 0.004
#: over 25,000 steps and did not finish for 1000; RDP never returned for 1e300).
MAX_TARGET_EPSILON = 100.0


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."  # a pasted list stays one line
    return ConfigError(f"{key}={shown} is invalid: expected {allowed}")


def _check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise _fail(key, value, "one of " + ", ".join(choices))


def is_finite_number(value: Any) -> bool:
    """A finite int or float; bool is not a number here (YAML ``true`` is no 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive(key: str, value: Any, *, allow_zero: bool = False) -> None:
    """A finite number > 0 (or >= 0); NaN and ±inf are refused: no key gives them a meaning."""
    if not is_finite_number(value) or value < 0 or (value == 0 and not allow_zero):
        raise _fail(key, value, "a finite number >= 0" if allow_zero else "a finite number > 0")


def check_int(key: str, value: Any, *, minimum: int, maximum: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if not ok or (maximum is not None and value > maximum):
        allowed = f"an integer >= {minimum}"
        raise _fail(key, value, allowed if maximum is None else f"{allowed} and <= {maximum}")


def _check_fraction(key: str, value: Any, low: float, high: float, *, low_open: bool) -> None:
    """A finite number in [low, high) or (low, high)."""
    ok = is_finite_number(value) and (value > low if low_open else value >= low) and value < high
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g})"
        raise _fail(key, value, f"a number in {interval}")


def _check_text_fields(obj: Any, prefix: str) -> None:
    """``str`` fields hold strings and ``bool`` fields booleans, so a YAML list, number or
    date never reaches a registry lookup, a path or ``run.json`` (where it is no JSON)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if f.type == "bool" and not isinstance(value, bool):
            raise _fail(key, value, "true or false")
        if f.type in ("str", "str | None") and not isinstance(value, str):
            if value is None and f.type == "str | None":
                continue
            raise _fail(key, value, "a string" + (" or null" if "None" in f.type else ""))


@dataclass(frozen=True)
class LabelSpec:
    """One label the producer knows about: a public task or a private attribute.

    Attributes:
        name: identifier used for modules, heads, keys and metrics.
        column: where the dataset finds the label (a CelebA attribute, a CSV
            column, ``seg`` / ``depth`` / ``normals`` for dense sets).
        kind: one of :data:`LABEL_KINDS`.
        num_classes: filled in from the data for ``multiclass`` and
            ``segmentation``; ``binary`` always has 2.
        weight: multiplier of this task's loss in the producer objective.
    """

    name: str
    column: str = ""
    kind: str = "binary"
    num_classes: int | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.name, str)
            or not self.name.replace("_", "").replace("-", "").isalnum()
        ):
            raise _fail("name", self.name, "a non-empty name of letters, digits, '_' or '-'")
        if not self.column:
            object.__setattr__(self, "column", self.name)
        _check_text_fields(self, f"{self.name}.")
        _check_choice(f"{self.name}.kind", self.kind, LABEL_KINDS)
        if self.kind == "binary":
            object.__setattr__(self, "num_classes", 2)
        if self.num_classes is not None:
            check_int(f"{self.name}.num_classes", self.num_classes, minimum=2)
        check_positive(f"{self.name}.weight", self.weight)

    @property
    def is_dense(self) -> bool:
        return self.kind in DENSE_KINDS

    @property
    def num_outputs(self) -> int:
        """Channels (dense) or logits (classification) the head must produce."""
        if self.kind == "binary":
            return 1
        if self.kind == "depth":
            return 1
        if self.kind == "normals":
            return 3
        if self.num_classes is None:
            raise ConfigError(f"{self.name}: num_classes is unknown (not yet read from the data)")
        return self.num_classes


@dataclass(frozen=True)
class DataConfig:
    """Where the images and labels come from.

    ``root`` may be relative (to the working directory). When it is absent,
    ``$METAMORPHOSIS_DATA/<name>`` is used for the real datasets.
    """

    name: str = "synthetic"
    root: str | None = None
    image_size: tuple[int, int] = (32, 32)
    manifest: str = "labels.csv"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_by: str | None = None
    max_train: int | None = None
    max_eval: int | None = None
    cache: bool = True
    num_samples: int = 2000

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if (
            not isinstance(size, (list, tuple))
            or len(size) != 2
            or not all(
                isinstance(s, int) and not isinstance(s, bool) and 8 <= s <= MAX_IMAGE_SIDE
                for s in size
            )
        ):
            raise _fail(
                "data.image_size",
                self.image_size,
                f"an integer in [8, {MAX_IMAGE_SIDE}] or [height, width] of such integers",
            )
        object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        _check_text_fields(self, "data.")
        for key in ("val_fraction", "test_fraction"):
            _check_fraction(f"data.{key}", getattr(self, key), 0.0, 0.5, low_open=False)
        for key in ("max_train", "max_eval"):
            if getattr(self, key) is not None:
                check_int(f"data.{key}", getattr(self, key), minimum=1)
        check_int("data.num_samples", self.num_samples, minimum=8, maximum=MAX_SAMPLES)


@dataclass(frozen=True)
class ModelConfig:
    """Encoder, split point and metamorphosis module.

    ``split_index`` is the number of top-level children of torchvision's
    ResNet-18 kept in the encoder (5 → 64×16×16 at 64×64 input). ``groups``
    is the k of Cross-SEC (channel splits) and ``reduction`` the squeeze ratio.
    ``norm`` must be ``group`` whenever any DP phase runs (Opacus rejects
    BatchNorm, which also mixes samples).
    """

    encoder: str = "resnet18"
    split_index: int = 5
    module: str = "cross-sec"
    groups: int = 2
    reduction: int = 4
    norm: str = "group"
    pretrained: str | None = None

    def __post_init__(self) -> None:
        _check_text_fields(self, "model.")
        check_int("model.split_index", self.split_index, minimum=1)
        check_int("model.groups", self.groups, minimum=1)
        check_int("model.reduction", self.reduction, minimum=1)
        _check_choice("model.norm", self.norm, NORMS)


@dataclass(frozen=True)
class PrivacyConfig:
    """Which guarantees to train for (Algorithm 2) and their budget.

    ``mode``: ``none`` (universal features, identity modules), ``task`` (SSIM
    de-correlation), ``input`` (DP-SGD on the producer), ``both`` (two phases).
    Either ``target_epsilon`` or ``noise_multiplier`` fixes the DP noise; the
    target is for the whole producer training, every DP phase composed.
    ``private_heads``: the consumer heads (and the producer-side heads of private
    attributes) train with DP-SGD too, in the same Poisson batches under the same
    accountant, so ε covers every trained weight (``privacy/scope.py`` says exactly
    what it covers either way).
    """

    mode: str = "both"
    target_epsilon: float | None = 4.0
    noise_multiplier: float | None = None
    delta: float = 1e-6
    max_grad_norm: float = 1.2
    omega: float = 0.001
    accountant: str = "prv"
    similarity: str = "ssim"
    ssim_data_range: float = 1.0
    freeze_encoder: bool = True
    grad_sampler: str = "hooks"
    private_heads: bool = False

    def __post_init__(self) -> None:
        _check_choice("privacy.mode", self.mode, PRIVACY_MODES)
        _check_choice("privacy.grad_sampler", self.grad_sampler, GRAD_SAMPLERS)
        _check_choice("privacy.accountant", self.accountant, ACCOUNTANTS)
        _check_choice("privacy.similarity", self.similarity, SIMILARITIES)
        _check_text_fields(self, "privacy.")
        if self.target_epsilon is not None:
            _check_target_epsilon(self.target_epsilon)
        if self.noise_multiplier is not None:
            check_positive("privacy.noise_multiplier", self.noise_multiplier)
        if self.uses_dp and self.target_epsilon is None and self.noise_multiplier is None:
            raise ConfigError(
                f"privacy.mode={self.mode!r} uses DP-SGD: set privacy.target_epsilon "
                "or privacy.noise_multiplier"
            )
        _check_fraction("privacy.delta", self.delta, 0.0, 1.0, low_open=True)
        check_positive("privacy.max_grad_norm", self.max_grad_norm)
        check_positive("privacy.omega", self.omega, allow_zero=True)
        check_positive("privacy.ssim_data_range", self.ssim_data_range)
        if self.private_heads and not self.uses_dp:
            raise ConfigError(
                f"privacy.private_heads=true trains the heads with DP-SGD, but "
                f"privacy.mode={self.mode!r} has no DP phase: set privacy.mode=input or both"
            )

    @property
    def uses_dp(self) -> bool:
        return self.mode in ("input", "both")

    @property
    def uses_task_privacy(self) -> bool:
        return self.mode in ("task", "both")


def _check_target_epsilon(value: Any) -> None:
    # ε = inf is not "no DP": noise calibration would train at its largest σ instead
    if not is_finite_number(value) or not 0 < value <= MAX_TARGET_EPSILON:
        raise _fail(
            "privacy.target_epsilon",
            value,
            f"a finite number in (0, {MAX_TARGET_EPSILON:g}]; "
            "for no DP use privacy.mode=none or task",
        )


@dataclass(frozen=True)
class DefenceConfig:
    """What the producer does to each public task's features before releasing them.

    Applied after the task's module, in this order (``models/release.py``):

    * ``bottleneck_channels``: a variational information bottleneck of that many
      channels (mean and log-variance from 1×1 convolutions; training samples
      with the reparameterisation trick and adds ``beta`` · KL(q(z|x) ‖ N(0, I)));
      None: no bottleneck. Every label's module gets one (the SSIM term compares
      maps of one shape), only public tasks' are released.
    * ``code_size``: the bottleneck pools its code to this side (a 3×3 convolution
      and a ReLU, then the average and the maximum of each region; 1: one vector
      per image; None: the module's map size, no pooling). A global attribute is
      written at every position of a map, so an attacker who pools a large noisy
      map averages its noise away; a small code is the lever for classification
      tasks (not for dense ones, which need the map).
    * ``channel``: ``vib`` (the bottleneck learns the code's variance, the KL term
      weighs it) or ``gaussian``: no learnt variance; each code value is bounded
      in (−1, 1) (a tanh) and released with noise ``noise`` alone: an additive
      Gaussian channel of power at most 1 per value, so one release carries at
      most (d/2)·ln(1 + 1/noise²) nats about the image (d: the code's values),
      whatever the attacker.
      ``beta`` has no effect there (the KL is a constant). A learnt variance
      depends on the image, and its spread is released with the code.
    * ``beta_warmup``: epochs over which the KL weight ramps linearly from 0 to
      ``beta`` (epoch e of each phase trains with β·min(1, e / beta_warmup); 0: β
      from the start), the usual guard against a code collapsing to the prior before
      a head has learnt to read it. Off by default: the recommended preset's
      code learns without it (docs/RESULTS.md, frontier).
    * ``erase: linear``: after training, LEACE erases every private attribute
      linearly from each public task's (bottleneck) code, and the heads are
      fine-tuned ``head_epochs`` on the erased release.
    * ``preset``: a named combination (:mod:`metamorphosis.presets`; ``recommended``)
      that fills these keys and ``method`` where the config leaves them unset; the
      resolved values are what is recorded.
    * ``noise``: Gaussian noise of this standard deviation on the released code,
      in training (so heads learn to cope) and at release, where the draw is fixed
      per (image, task, producer secret): releasing an image twice gives the same
      features, so averaging fetches gains nothing. With a bottleneck its learnt
      posterior noise is released as well.
    """

    bottleneck_channels: int | None = None
    beta: float = 1e-3
    beta_warmup: int = 0
    noise: float = 0.0
    erase: str = "none"
    head_epochs: int = 1
    code_size: int | None = None
    channel: str = "vib"
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.preset is not None:
            _check_choice("defence.preset", self.preset, tuple(PRESETS))
        if self.bottleneck_channels is not None:
            check_int("defence.bottleneck_channels", self.bottleneck_channels, minimum=1)
        if self.code_size is not None:
            check_int("defence.code_size", self.code_size, minimum=1)
            if self.bottleneck_channels is None:
                raise ConfigError(
                    "defence.code_size pools the bottleneck's code: set "
                    "defence.bottleneck_channels too"
                )
        _check_choice("defence.channel", self.channel, CHANNELS)
        if self.channel == "gaussian" and (self.bottleneck_channels is None or self.noise <= 0):
            raise ConfigError(
                "defence.channel='gaussian' releases a bounded code with noise: set "
                "defence.bottleneck_channels and defence.noise > 0"
            )
        check_positive("defence.beta", self.beta, allow_zero=True)
        check_int("defence.beta_warmup", self.beta_warmup, minimum=0)
        check_positive("defence.noise", self.noise, allow_zero=True)
        _check_choice("defence.erase", self.erase, ERASERS)
        check_int("defence.head_epochs", self.head_epochs, minimum=0)

    @property
    def active(self) -> bool:
        """Whether released features differ from the module output."""
        return self.bottleneck_channels is not None or self.noise > 0 or self.erase != "none"


@dataclass(frozen=True)
class ReleaseConfig:
    """Release noise calibrated to a Fisher-information bound (:mod:`.privacy.fisher`).

    * ``target_psnr_cap``: the PSNR (dB, pixels in [0, 1]) that no unbiased
      reconstruction of 95 % of the training images may beat from one release of a
      task; it is ``target_dfil = 10^(cap / 10)``. Set one of the two, or neither.
    * ``max_total_dfil``: a bound on the 95th percentile, over images, of the dFIL
      summed over every public task (consumers of all tasks colluding); alone it is
      shared equally between the tasks.
    * ``probes`` / ``calibration_images``: Hutchinson probes per image and the fixed
      training images whose dFIL picks σ (each estimate costs one forward-mode pass
      per image and probe).

    When any target is set, the trainer sets each public task's release noise σ
    (``defence.noise`` is then only the starting value) at the start of every epoch,
    so the heads learn with the noise they will be read with, once more after
    training (then fine-tunes the heads ``defence.head_epochs`` on it), and records
    σ and the dFIL statistics in ``run.json``'s ``release``.
    """

    target_psnr_cap: float | None = None
    target_dfil: float | None = None
    max_total_dfil: float | None = None
    probes: int = 8
    calibration_images: int = 128

    def __post_init__(self) -> None:
        if self.target_psnr_cap is not None and self.target_dfil is not None:
            raise ConfigError(
                "release.target_psnr_cap and release.target_dfil both fix the per-task "
                "target (dFIL = 10^(cap/10)): set one of them"
            )
        cap = self.target_psnr_cap
        if cap is not None and not (is_finite_number(cap) and -100 <= cap <= 100):
            # beyond ±100 dB 10^(cap/10) overflows or means nothing for pixels in [0, 1]
            raise _fail("release.target_psnr_cap", cap, "a number of dB in [-100, 100]")
        for key in ("target_dfil", "max_total_dfil"):
            if getattr(self, key) is not None:
                check_positive(f"release.{key}", getattr(self, key))
        check_int("release.probes", self.probes, minimum=2, maximum=1024)
        check_int("release.calibration_images", self.calibration_images, minimum=8)

    @property
    def calibrated(self) -> bool:
        """Whether the trainer picks the release noise (any target set)."""
        return self.per_task_dfil is not None or self.max_total_dfil is not None

    @property
    def per_task_dfil(self) -> float | None:
        """The per-task dFIL target (from the PSNR cap when that is what is set)."""
        if self.target_psnr_cap is not None:
            return 10.0 ** (self.target_psnr_cap / 10.0)
        return self.target_dfil


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``epochs`` is per phase; ``encoder_epochs`` is
    phase 1 of mode ``both`` (defaults to ``epochs``)."""

    epochs: int = 10
    encoder_epochs: int | None = None
    batch_size: int = 64
    lr: float = 1e-4
    head_lr: float | None = None
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    max_steps_per_epoch: int | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_int("train.epochs", self.epochs, minimum=1)
        if self.encoder_epochs is not None:
            check_int("train.encoder_epochs", self.encoder_epochs, minimum=1)
        check_int("train.batch_size", self.batch_size, minimum=1)
        check_positive("train.lr", self.lr)
        if self.head_lr is not None:
            check_positive("train.head_lr", self.head_lr)
        _check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        check_positive("train.weight_decay", self.weight_decay, allow_zero=True)
        check_int("train.seed", self.seed, minimum=0, maximum=MAX_SEED)
        _check_choice("train.device", self.device, DEVICES)
        if self.max_steps_per_epoch is not None:
            check_int("train.max_steps_per_epoch", self.max_steps_per_epoch, minimum=1)
        check_int("train.num_workers", self.num_workers, minimum=0, maximum=MAX_WORKERS)


@dataclass(frozen=True)
class Config:
    """A whole experiment: data, model, public tasks, private attributes,
    privacy and training settings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tasks: tuple[LabelSpec, ...] = ()
    private_attributes: tuple[LabelSpec, ...] = ()
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    method: str = "metamorphosis"
    #: Options sections of training methods, as written (``deepobfuscator: {...}``), by
    #: section name. The method registry (:mod:`metamorphosis.train.methods`) owns their
    #: schema and checks them when training starts: reading a run dir never needs it.
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise ConfigError(f"method={self.method!r} is invalid: expected a method name")
        if not self.tasks:
            raise ConfigError("tasks is empty: name at least one public task")
        names = [spec.name for spec in self.all_labels]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(
                f"task / private attribute names must be unique; repeated: {duplicates}"
            )
        if self.privacy.uses_dp and self.model.norm != "group":
            raise ConfigError(
                f"model.norm={self.model.norm!r} with privacy.mode={self.privacy.mode!r}: "
                "DP-SGD needs model.norm='group' (BatchNorm mixes samples)"
            )
        dense = [s.name for s in self.tasks if s.is_dense]
        if self.defence.code_size is not None and dense:
            raise ConfigError(
                f"defence.code_size={self.defence.code_size} pools each release to a small "
                f"code, but public task(s) {dense} are dense and need the map: unset "
                "defence.code_size (and defence.preset, which sets it)"
            )
        self._check_release()
        self._check_private_heads()
        if self.privacy.mode == "task" and len(self.all_labels) < 2:
            raise ConfigError(
                "privacy.mode='task' de-correlates modules from each other: "
                "it needs at least two tasks / private attributes"
            )

    def _check_release(self) -> None:
        release = self.release
        per_task, total = release.per_task_dfil, release.max_total_dfil
        if per_task is not None and total is not None and per_task * len(self.tasks) > total:
            raise ConfigError(
                f"release.max_total_dfil={total:g} is below what {len(self.tasks)} public "
                f"task(s) at the per-task target dFIL {per_task:g} sum to "
                f"({per_task * len(self.tasks):g}): lower the per-task target "
                "(release.target_psnr_cap / target_dfil) or raise the total"
            )

    def _check_private_heads(self) -> None:
        if not self.privacy.private_heads:
            return
        if self.method not in PRIVATE_HEADS_METHODS:
            raise ConfigError(
                f"privacy.private_heads=true with method={self.method!r}: only "
                f"{', '.join(PRIVATE_HEADS_METHODS)} train nothing but the producer and the "
                "heads, so only they can be trained end-to-end with DP-SGD"
            )
        if self.defence.erase != "none":
            raise ConfigError(
                "privacy.private_heads=true with defence.erase="
                f"{self.defence.erase!r}: the eraser is fitted on training features "
                "without DP and the heads are then fine-tuned without it; set "
                "defence.erase=none"
            )

    @property
    def all_labels(self) -> tuple[LabelSpec, ...]:
        """Public tasks first, then private attributes (the module order)."""
        return tuple(self.tasks) + tuple(self.private_attributes)

    @property
    def has_release_stage(self) -> bool:
        """Whether each label's features pass a release stage (a defence, or release
        noise the trainer calibrates) before they are released."""
        return self.defence.active or self.release.calibrated

    @property
    def module_kind(self) -> str:
        """The modules the producer is built with.

        Per-task modules are the paper's method; in mode ``none`` it publishes the
        encoder output (universal features), and every other method publishes one
        shared map: identity modules.
        """
        if self.privacy.mode == "none" or self.method not in PER_TASK_MODULES_METHODS:
            return "identity"
        return self.model.module

    def options_section(self, section: str) -> Mapping[str, Any]:
        """The options a config gives for ``section`` (``{}`` when it has none)."""
        return self.method_options.get(section) or {}

    def with_label_classes(self, num_classes: Mapping[str, int]) -> Config:
        """Fill ``num_classes`` of multiclass / segmentation labels from the data."""

        def fill(spec: LabelSpec) -> LabelSpec:
            known = num_classes.get(spec.name)
            if spec.kind in ("multiclass", "segmentation") and known is not None:
                if spec.num_classes is not None and spec.num_classes != known:
                    raise ConfigError(
                        f"{spec.name}.num_classes={spec.num_classes} "
                        f"but the data has {known} classes"
                    )
                return dataclasses.replace(spec, num_classes=known)
            return spec

        return dataclasses.replace(
            self,
            tasks=tuple(fill(s) for s in self.tasks),
            private_attributes=tuple(fill(s) for s in self.private_attributes),
        )


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "privacy": PrivacyConfig,
    "train": TrainConfig,
    "defence": DefenceConfig,
    "release": ReleaseConfig,
}
_SCALARS = ("method",)  # top-level keys that are plain values, not sections
#: The top-level keys every config shares; any other is a training method's options.
CORE_KEYS = frozenset({*_SECTIONS, *_SCALARS, "tasks", "private_attributes"})


def build_section(name: str, cls: type, raw: Any) -> Any:
    """The frozen dataclass ``cls`` from the config section ``name``, every key checked."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name} must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known, key=str)  # YAML keys need not be strings
    if unknown:
        raise ConfigError(f"unknown key(s) in {name}: {unknown}; allowed: {sorted(known)}")
    required = [
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    ]
    missing = [key for key in required if key not in raw]
    if missing:
        raise ConfigError(f"{name}.{missing[0]} is missing")
    try:
        return cls(**_floats_from_strings(cls, raw))
    except TypeError as exc:  # a value no check above foresaw; still name the section
        raise ConfigError(f"{name}: {exc}") from exc


def _floats_from_strings(cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """PyYAML reads ``1e-4`` (no dot) as a string; accept it where a float belongs."""
    float_fields = {f.name for f in fields(cls) if "float" in str(f.type)}
    result = dict(raw)
    for key in float_fields & set(result):
        if isinstance(result[key], str):
            # a non-number is left for __post_init__ to reject with the key's name
            with contextlib.suppress(ValueError):
                result[key] = float(result[key])
    return result


def _build_labels(name: str, raw: Any) -> tuple[LabelSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{name} must be a list of {{name, column, kind}} mappings")
    return tuple(_build_label(f"{name}[{i}]", item) for i, item in enumerate(raw))


def _build_label(key: str, raw: Any) -> LabelSpec:
    try:
        return build_section(key, LabelSpec, raw)
    except ConfigError as exc:
        message = str(exc)  # LabelSpec names keys by label name; say which list item too
        raise ConfigError(message if message.startswith(key) else f"{key}: {message}") from exc


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Build and validate a :class:`Config` from plain data (parsed YAML)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the config must be a mapping of sections")
    raw = expand_preset(raw)
    sections = {name: build_section(name, cls, raw.get(name)) for name, cls in _SECTIONS.items()}
    scalars = {name: raw[name] for name in _SCALARS if name in raw}
    return Config(
        tasks=_build_labels("tasks", raw.get("tasks")),
        private_attributes=_build_labels("private_attributes", raw.get("private_attributes")),
        method_options=_method_sections(raw),
        **sections,
        **scalars,
    )


def _method_sections(raw: Mapping[Any, Any]) -> dict[str, dict[str, Any]]:
    """Every other top-level entry: a training method's options section, kept as written.

    Which names are methods' sections is the method registry's to say when training
    starts (:func:`metamorphosis.train.methods.resolve_method`): an unknown one is
    refused there, with the list of the valid ones.
    """
    sections: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        if name in CORE_KEYS:
            continue
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(
                f"unknown section(s): {[name]}; allowed: {sorted(CORE_KEYS)} and the "
                "training methods' options sections"
            )
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping, got {type(value).__name__}")
        sections[name] = dict(value or {})
    return sections


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain data (JSON / YAML safe) for a config; inverse of :func:`config_from_dict`.

    Methods' options sections sit at the top level, as in the YAML.
    """
    raw = _lists_for_tuples(dataclasses.asdict(config))
    raw.update(raw.pop("method_options"))
    return raw


def method_section(method: str) -> str:
    """The options section of a training method: its name, ``-`` as ``_`` (``kd_mtl``)."""
    return method.replace("-", "_")


def same_config(a: Config, b: Config) -> bool:
    """Whether ``a`` and ``b`` describe the same training.

    Equal up to where it runs (``train.device``) and to class counts that one side
    has not read from the data yet (``num_classes`` None: a config fresh from YAML
    beside one recorded in a run). The trainer's resume check, the audit's sweep
    points and the paper-table harness all decide "may I reuse this?" here.
    """
    left, right = config_to_dict(a), config_to_dict(b)
    for raw, config in ((left, a), (right, b)):
        raw["train"]["device"] = None
        # only the chosen method's options train anything (older run.json files list
        # every built-in method's section)
        for section in config.method_options:
            if section != method_section(config.method):
                del raw[section]
    for key in ("tasks", "private_attributes"):
        for mine, theirs in zip(left[key], right[key], strict=False):  # lengths: compared below
            if mine["num_classes"] is None or theirs["num_classes"] is None:
                mine["num_classes"] = theirs["num_classes"] = None
    return left == right


def _lists_for_tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists_for_tuples(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists_for_tuples(v) for v in value]
    return value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) in place.

    List items are addressed by index: ``tasks.0.column=Smiling``; a
    top-level value has no section: ``method=kd-mtl``.
    """
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        if not all(keys) or (len(keys) < 2 and keys[0] not in _SCALARS):
            raise ConfigError(
                f"--set {item!r}: expected section.key=value (or one of {list(_SCALARS)}=value)"
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            reason = " ".join(str(exc).split())  # one line: PyYAML's messages span several
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({reason})") from exc
        node: Any = raw
        for depth, key in enumerate(keys[:-1]):
            node = _descend(node, key, ".".join(keys[: depth + 1]), item)
        last = keys[-1]
        if isinstance(node, list):
            node[_list_index(node, last, path)] = value
        else:
            node[last] = value
    return raw


def _list_index(node: list[Any], key: str, path: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(
            f"--set {path}: {key!r} is not an index of a list of {len(node)} "
            f"(expected 0 to {len(node) - 1})"
        )
    return int(key)


def _descend(node: Any, key: str, path: str, item: str) -> Any:
    """The child ``key`` of ``node`` (created when absent), which must be a section or list."""
    if isinstance(node, list):
        child = node[_list_index(node, key, path)]
    else:
        if node.get(key) is None:
            node[key] = {}
        child = node[key]
    if not isinstance(child, (dict, list)):
        # e.g. train.lr.x=1: a scalar has no keys to set
        raise ConfigError(
            f"--set {item!r}: {path} is {child!r} ({type(child).__name__}), which has no keys"
        )
    return child


def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config, apply ``--set`` overrides, validate."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not a UTF-8 text (YAML) file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())  # one line: PyYAML's messages span several
        raise ConfigError(f"{path} is not valid YAML: {reason}") from exc
    if raw is None:
        raise ConfigError(f"config {path} is empty: expected a mapping of sections (tasks, ...)")
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}"
        )
    return config_from_dict(apply_overrides(raw, overrides))


def data_root_from_env(folder: str) -> Path | None:
    """``$METAMORPHOSIS_DATA/<folder>`` when the variable is set, else None."""
    base = os.environ.get(DATA_ENV_VAR)
    return Path(base) / folder if base else None
