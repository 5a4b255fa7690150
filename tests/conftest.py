"""Fixtures shared by several test files."""
import pytest


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """The Hugging Face Hub offline with an empty cache, whatever this machine's network and
    cache hold: timm's ImageNet weights cannot be had. Set on huggingface_hub's constants,
    which it read once at import (environment variables set now would change nothing)."""
    from huggingface_hub import constants

    cache = tmp_path / "empty-hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
