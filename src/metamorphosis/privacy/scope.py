"""What each privacy number of a run covers, in words (``run.json``'s ``privacy.scope``).

One text, built from the facts of the run, so ``run.json``, the audit report, the
service's ``/v1/tasks/{task}/privacy`` route and the README say the same thing.

Why ε needs its scope stated: Opacus' accounting assumes that the gradient of
sample ``i`` at step ``t`` depends on sample ``i`` and on earlier *noisy* outputs
only. By default the consumer heads (and the producer-side heads of private
attributes) train without DP on the same images' features, and every producer
gradient flows through them: one training image then changes other samples'
gradients at later steps, outside the clipping bound. ``privacy.private_heads``
trains every head with DP-SGD in the same Poisson batches under one accountant,
which restores the assumption for every trained weight. Neither setting covers
what consumers *received* during split learning (each sampled image's features,
in the clear), nor features released after training: those are what the
Fisher-information bound (:mod:`.fisher`) speaks to, with its own assumptions.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["privacy_scope"]

_NO_DP = "No DP-SGD: epsilon is null and nothing bounds what the trained weights reveal."
_PRODUCER_ONLY = (
    "epsilon is DP-SGD on the producer's weights only, and is not a valid guarantee for "
    "them as trained: the heads train without DP on the same images' features and the "
    "producer's gradients pass through them. It covers no head"
)
_EVERY_WEIGHT = (
    "epsilon covers every weight trained on the training split (producer and every head, "
    "DP-SGD in the same Poisson batches, one accountant)"
)
_SPLIT_LEARNING = (
    ". It does not cover the features consumers received during split learning (every "
    "sampled training image's, in the clear), features released after training, or what "
    "is chosen from training features without DP (a release noise calibrated on them, an "
    "eraser fitted on them)."
)
_RELEASE_BOUND = (
    " Released features carry keyed Gaussian noise: dFIL bounds, per image and release, "
    "the expected error of an unbiased reconstruction (Cramer-Rao; colluding consumers of "
    "k tasks add their dFIL; an attacker with a strong image prior can do better)."
)
_NO_RELEASE_BOUND = " Released features carry no noise: no bound on reconstructing inputs."
_REMOTE_HEADS = (
    " The heads of {tasks} trained in their consumers' processes, each step told its "
    "DP-SGD settings: epsilon covers them only if those consumers ran that step, which "
    "the producer cannot check."
)


def privacy_scope(
    *, dp: bool, private_heads: bool, noisy_release: bool, remote_heads: Sequence[str] = ()
) -> str:
    """The scope of a run's ε and of its release bound, as one short text.

    Args:
        dp: whether any phase trained with DP-SGD.
        private_heads: whether the heads trained with DP-SGD too.
        noisy_release: whether every public task's release carries noise (so a
            Fisher-information bound exists).
        remote_heads: the tasks whose heads consumers trained in other processes.
    """
    if not dp:
        text = _NO_DP
    elif private_heads:
        text = _EVERY_WEIGHT + _SPLIT_LEARNING
        if remote_heads:
            text += _REMOTE_HEADS.format(tasks=", ".join(remote_heads))
    else:
        text = _PRODUCER_ONLY + _SPLIT_LEARNING
    return text + (_RELEASE_BOUND if noisy_release else _NO_RELEASE_BOUND)
