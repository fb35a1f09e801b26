"""Registry behaviour: names are validated early and listed on error."""

from __future__ import annotations

import pytest

from metamorphosis.errors import ConfigError
from metamorphosis.models.encoders import ENCODERS, create_encoder, list_encoders
from metamorphosis.models.metamorphosis import MODULES, create_module, list_modules
from metamorphosis.registry import Registry


def _widgets() -> Registry[int]:
    registry: Registry[int] = Registry("widget")

    @registry.register("beta")
    def _beta(*, value: int = 2) -> int:
        return value

    @registry.register("alpha")
    def _alpha() -> int:
        return 1

    return registry


def test_create_names_and_contains() -> None:
    registry = _widgets()
    assert registry.create("alpha") == 1
    assert registry.create("beta", value=7) == 7
    assert registry.names() == ["alpha", "beta"]
    assert "alpha" in registry
    assert "gamma" not in registry
    assert ["alpha"] not in registry


def test_unknown_name_lists_family_and_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        _widgets().create("gamma")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    for part in ("widget", "'gamma'", "'alpha'", "'beta'"):
        assert part in message


def test_duplicate_name_raises_listing_existing() -> None:
    registry = _widgets()
    with pytest.raises(ValueError, match="alpha.*already registered.*alpha, beta"):
        registry.register("alpha")(lambda: 3)
    assert registry.create("alpha") == 1


def test_builtin_registries() -> None:
    assert list_encoders() == ["resnet18", "resnet18-slim", "segnet", "test_resnet", "test_segnet"]
    assert list_encoders() == ENCODERS.names()
    assert list_modules() == ["cross-sec", "identity", "sec"] == MODULES.names()


def test_create_functions_reject_unknown_names() -> None:
    with pytest.raises(ConfigError, match="unknown encoder 'vgg16'.*'resnet18'"):
        create_encoder("vgg16", split_index=5)
    with pytest.raises(ConfigError, match="unknown module 'cbam'.*'cross-sec'"):
        create_module("cbam", 8)
