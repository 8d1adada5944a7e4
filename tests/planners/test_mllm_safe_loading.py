"""The local MLLM planners load safely by default: safetensors only, no remote code."""

from __future__ import annotations

import pytest

from sow.planners.mllm.base import MLLMOptions, load_kwargs
from sow.safety.security import reset_load_policy, set_load_policy


@pytest.fixture(autouse=True)
def clean_policy(monkeypatch):
    monkeypatch.delenv("SOW_ALLOW_PICKLE", raising=False)
    monkeypatch.delenv("SOW_TRUST_REMOTE_CODE", raising=False)
    reset_load_policy()
    yield
    reset_load_policy()


def test_defaults_refuse_pickles_and_remote_code():
    kwargs = load_kwargs(MLLMOptions(device="cpu"))
    assert kwargs["use_safetensors"] is True and kwargs["trust_remote_code"] is False


def test_the_users_flags_are_passed_on():
    set_load_policy(allow_pickle=True, trust_remote_code=True)
    kwargs = load_kwargs(MLLMOptions(device="cpu"))
    assert "use_safetensors" not in kwargs and kwargs["trust_remote_code"] is True
