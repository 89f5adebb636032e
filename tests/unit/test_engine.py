import numpy as np
import pytest
import torch

from oncofl.engine import DeviceData, Trainer, amp_dtype, resolve_device
from oncofl.errors import JobError, SiteConfigError
from oncofl.tasks import get_task

TASK = get_task("prostate_seg")


def blob_data(n: int, device: torch.device) -> DeviceData:
    """Bright ellipsoid 'glands' at random offsets, 32 x 32 x 16: learnable in a few steps."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in (32, 32, 16)), indexing="ij"), -1)
    images, labels = [], []
    for _ in range(n):
        center = np.array([16, 16, 8]) + rng.integers(-4, 5, 3)
        mask = (((grid - center) / np.array([7, 5, 4])) ** 2).sum(-1) < 1
        images.append((0.3 + 0.4 * mask + rng.normal(0, 0.05, mask.shape))[None].astype(np.float32))
        labels.append(mask[None].astype(np.uint8))
    return DeviceData.from_numpy(np.stack(images), np.stack(labels), device)


def test_gpu_ids_without_cuda_is_a_clear_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SiteConfigError, match="CUDA is not available") as info:
        resolve_device((0,), site="site-2")
    assert "[site-2]" in info.value.server_message() and '"gpu_ids": []' in info.value.fix
    assert resolve_device(()) == torch.device("cpu")
    assert amp_dtype(torch.device("cpu")) is None


def run_rounds(device: torch.device) -> tuple[float, float, int]:
    torch.manual_seed(0)
    data = blob_data(8, device)
    trainer = Trainer(TASK, device, learning_rate=3e-3, seed=0)
    before = trainer.evaluate(data, batch_size=4)
    steps = 0
    for _ in range(4):
        stats = trainer.train(data, epochs=3, batch_size=4)
        steps += stats.steps
    return before, trainer.evaluate(data, batch_size=4), steps


def test_training_on_the_cpu_learns():
    before, after, steps = run_rounds(torch.device("cpu"))
    assert steps == 4 * 3 * 2
    assert after > 0.6 and after > before + 0.4, (before, after)


def test_abort_is_honoured_between_steps():
    trainer = Trainer(TASK, torch.device("cpu"), learning_rate=1e-3, seed=0)
    calls = iter([False, True])
    stats = trainer.train(blob_data(8, torch.device("cpu")), epochs=2, batch_size=2, should_abort=lambda: next(calls))
    assert stats.aborted and stats.steps == 1


def test_state_round_trip_and_mismatch():
    trainer = Trainer(TASK, torch.device("cpu"), learning_rate=1e-3, seed=0)
    state = trainer.state()
    trainer.load_state(state)
    with pytest.raises(JobError, match="does not match") as info:
        trainer.load_state({k: v for k, v in list(state.items())[1:]})
    first = next(iter(state))  # the tensor names stay in the local detail, out of the server's message
    assert first in info.value.detail and first not in info.value.server_message()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_the_gpu_with_amp_learns_like_the_cpu():
    device = resolve_device()
    assert amp_dtype(device) in (torch.bfloat16, torch.float16)
    before, after, _ = run_rounds(device)
    assert after > 0.6 and after > before + 0.4, (before, after)
