"""The release stage: keyed noise, the bottleneck's KL, the linear eraser."""

from __future__ import annotations

import pytest
import torch
from concept_erasure import LeaceFitter

from metamorphosis.config import config_from_dict
from metamorphosis.errors import ConfigError
from metamorphosis.models.producer import build_network, build_producer
from metamorphosis.models.release import (
    LinearEraser,
    Release,
    gaussian_kl,
    keyed_normal,
    new_secret,
)
from tiny import tiny_config_dict

SHAPE = (2, 4, 4)


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


# -- keyed noise ---------------------------------------------------------------------
def test_keyed_noise_is_the_same_for_the_same_image_task_and_secret():
    secret, images = new_secret(), _images()
    first = keyed_normal(images, "smile", secret, SHAPE)
    # the same pixels in another batch position, in another batch
    again = keyed_normal(torch.stack([images[2], images[0]]), "smile", secret, SHAPE)
    torch.testing.assert_close(again, first[[2, 0]], rtol=0, atol=0)


def test_keyed_noise_differs_across_images_tasks_and_secrets():
    secret, images = new_secret(), _images()
    base = keyed_normal(images, "smile", secret, SHAPE)
    assert not torch.allclose(base[0], base[1])  # across images
    assert not torch.allclose(base, keyed_normal(images, "gender", secret, SHAPE))
    assert not torch.allclose(base, keyed_normal(images, "smile", new_secret(), SHAPE))
    nudged = images.clone()
    nudged[0, 0, 0, 0] += 1e-3  # other pixels: another draw
    assert not torch.allclose(base[0], keyed_normal(nudged, "smile", secret, SHAPE)[0])


def test_keyed_noise_is_standard_normal():
    draws = keyed_normal(_images(64), "t", new_secret(), (4, 8, 8)).flatten()
    assert abs(float(draws.mean())) < 0.05
    assert abs(float(draws.std()) - 1.0) < 0.05


# -- the bottleneck ------------------------------------------------------------------
def test_gaussian_kl_matches_the_closed_form_of_torch_distributions():
    mean = torch.randn(5, 2, 3, 3)
    log_var = torch.randn(5, 2, 3, 3)
    posterior = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(posterior, prior).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_kl(mean, log_var), expected)


def test_bottleneck_samples_in_training_and_keeps_its_kl_per_sample():
    release = Release(6, bottleneck_channels=2, beta=0.5)
    features = torch.randn(4, 6, 5, 5)
    release.train()
    sampled = release(features)
    assert sampled.shape == features.shape  # expanded back to the module's channels
    assert not torch.allclose(sampled, release(features))  # fresh noise each pass
    assert release.kl is not None and release.kl.shape == (4,)
    mean, log_var = release.bottleneck(features)
    torch.testing.assert_close(release.kl, 0.5 * gaussian_kl(mean, log_var))


def test_release_noise_is_its_draw_times_the_noise_scale():
    release = Release(3, noise=0.7).eval()
    features = torch.randn(2, 3, 4, 4)
    draw = torch.randn_like(features)
    torch.testing.assert_close(release(features, draw), features + 0.7 * draw)
    torch.testing.assert_close(release(features), features)  # eval, no draw: no noise
    assert release.noisy and not Release(3).noisy


# -- the eraser ----------------------------------------------------------------------
def test_the_linear_eraser_applies_leace_from_its_low_rank_factors():
    generator = torch.Generator().manual_seed(0)
    concept = torch.randint(0, 2, (400, 1), generator=generator).double()
    x = torch.randn(400, 12, generator=generator, dtype=torch.float64) + 2.0 * concept
    fitted = LeaceFitter.fit(x, concept, constrain_cov_trace=False).eraser
    eraser = LinearEraser(12, 3).double()
    eraser.load(fitted.proj_left, fitted.proj_right, fitted.bias)
    torch.testing.assert_close(eraser(x.view(400, 3, 2, 2)).flatten(1), fitted(x))
    # erased: the class means coincide (no linear classifier beats a constant)
    erased = eraser(x.view(400, 3, 2, 2)).flatten(1)
    gap = erased[concept[:, 0] == 1].mean(0) - erased[concept[:, 0] == 0].mean(0)
    assert float(gap.abs().max()) < 1e-8


def test_an_unfitted_eraser_is_the_identity():
    release = Release(3, eraser_shape=(48, 1)).eval()
    features = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(release(features), features)


# -- the producer --------------------------------------------------------------------
def _producer(encoder: str = "test_resnet", size: int = 16, **defence):
    raw = tiny_config_dict("both")
    raw["defence"] = defence
    raw["model"]["encoder"] = encoder
    raw["data"]["image_size"] = size
    config = config_from_dict(raw).with_label_classes({"shape": 3})
    network = build_network(config)
    return build_producer(config, network, (3, size, size))


def test_an_undefended_producer_has_no_release_stage():
    assert len(_producer().releases) == 0


def test_a_noisy_release_needs_the_producer_secret():
    producer = _producer(noise=0.5).eval()
    images = torch.randn(2, 3, 16, 16)
    with pytest.raises(ConfigError, match="no release secret"):
        producer(images)
    producer.secret = new_secret()
    first = producer(images)
    again = producer(images)
    for task in producer.tasks:
        torch.testing.assert_close(first[task], again[task], rtol=0, atol=0)
        clean = producer.features(images, task, noise=False)
        assert not torch.allclose(first[task], clean)  # never zero noise when configured


def test_private_features_are_never_noised():
    producer = _producer(noise=0.5, bottleneck_channels=2).eval()
    producer.secret = new_secret()
    images = torch.randn(2, 3, 16, 16)
    private = producer(images, names=["background"])["background"]
    torch.testing.assert_close(private, producer(images, names=["background"])["background"])
    assert producer.release_of("background").noise == 0.0


def test_erasure_on_a_map_too_large_for_its_covariance_is_refused_with_the_fix():
    # ResNet-18 split 5 at 64×64: 64×16×16 = 16384 values per image
    with pytest.raises(ConfigError, match="set defence.bottleneck_channels to 16 or fewer"):
        _producer("resnet18", 64, erase="linear")
    eraser = _producer("resnet18", 64, erase="linear", bottleneck_channels=8)
    assert eraser.release_of("large").eraser.proj_left.shape == (8 * 16 * 16, 1)
    assert eraser.release_of("background").eraser is None  # private: never released


# -- a small code and the Gaussian channel -------------------------------------------
def test_a_small_code_is_pooled_and_released_at_the_module_map_size():
    producer = _producer(bottleneck_channels=2, code_size=1).eval()
    images = _images(4, seed=3).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    shared = producer.encode(images)
    module = producer.task_modules["shape"](shared)
    code, _ = producer.release_of("shape").code(module)
    assert code.shape == (4, 2, 1, 1)  # one 2-value vector per image
    released = producer.features(images, task="shape", noise=False)
    assert released.shape == module.shape
    # the map is the code broadcast: one value per channel, the same at every position
    flat = released.flatten(2)
    torch.testing.assert_close(flat, flat[:, :, :1].expand_as(flat))


def test_the_gaussian_channel_bounds_the_code_and_releases_the_fixed_noise_only():
    release = Release(6, bottleneck_channels=3, noise=0.5, code_size=2, channel="gaussian")
    features = 50 * torch.randn(8, 6, 4, 4)  # large inputs: the bound must still hold
    mean, log_var = release.code(features)
    assert log_var is None and mean.shape == (8, 3, 2, 2)
    assert float(mean.abs().max()) <= 1.0  # tanh: 1.0 only by float rounding
    release.train()
    release(features)
    assert release.kl is None  # no learnt variance: the KL is a constant, no term
    release.eval()
    draw = torch.randn(8, 3, 2, 2)
    expected = release.expand(mean + 0.5 * draw).repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(release(features, draw), expected)


@pytest.mark.parametrize(
    ("defence", "message"),
    [
        ({"code_size": 1}, "set defence.bottleneck_channels too"),
        ({"bottleneck_channels": 2, "channel": "gaussian"}, "defence.noise > 0"),
        ({"bottleneck_channels": 2, "noise": 0.5, "channel": "awgn"}, "defence.channel"),
    ],
)
def test_bad_code_settings_are_refused(defence, message):
    with pytest.raises(ConfigError, match=message):
        _producer(**defence)


def test_a_code_larger_than_the_module_map_is_refused():
    with pytest.raises(ConfigError, match="larger than the module's"):
        _producer(bottleneck_channels=2, code_size=64)
