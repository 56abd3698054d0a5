"""resolve_device: the one place that turns --device into a torch.device."""

from __future__ import annotations

import pytest
import torch

from ignite_app.train.devices import available_devices, resolve_device
from ignite_app.errors import UserError


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine with neither CUDA nor MPS, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend to have cuda:0 and cuda:1 (no CUDA call is made while resolving)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("spec", ["auto", "cpu", "CPU", " cpu "])
def test_cpu_machine_resolves_to_cpu(no_gpu, spec):
    assert resolve_device(spec) == torch.device("cpu")


def test_cpu_machine_lists_only_cpu(no_gpu):
    assert available_devices() == ["cpu"]


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cpu:1", "mps:0", "auto:0", "cuda:", "cuda:-1", ""])
def test_malformed_specs_name_the_valid_forms_and_this_machines_devices(no_gpu, spec):
    with pytest.raises(UserError, match=rf"invalid --device '{spec}': use auto, cpu, cuda, cuda:N or mps \(this machine has: cpu\)$"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:7"])
def test_cuda_without_a_gpu_is_refused(no_gpu, spec):
    with pytest.raises(UserError, match=rf"--device {spec} is not available: this machine has no CUDA GPU \(this machine has: cpu\)"):
        resolve_device(spec)


def test_mps_when_unavailable_is_refused(no_gpu):
    with pytest.raises(UserError, match=r"--device mps is not available on this machine \(this machine has: cpu\)"):
        resolve_device("mps")


def test_fake_cuda_machine_lists_its_gpus(two_gpus):
    assert available_devices() == ["cpu", "cuda:0", "cuda:1"]


@pytest.mark.parametrize(
    "spec, expected",
    [("auto", torch.device("cuda", 0)), ("cuda", torch.device("cuda", 0)), ("cuda:1", torch.device("cuda", 1)),
     ("cpu", torch.device("cpu"))],
)
def test_fake_cuda_machine_resolves(two_gpus, spec, expected):
    assert resolve_device(spec) == expected


def test_fake_cuda_machine_refuses_a_missing_index(two_gpus):
    with pytest.raises(UserError, match=r"--device cuda:2 is not available \(this machine has: cpu, cuda:0, cuda:1\)"):
        resolve_device("cuda:2")


def test_fake_mps_machine(monkeypatch, no_gpu):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    assert available_devices() == ["cpu", "mps"]
