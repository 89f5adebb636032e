"""Score a model checkpoint on a held-out datalist (outside FLARE: for reports and end-to-end tests)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .engine import DeviceData, resolve_device
from .he import is_encrypted
from .site.runtime import build_trainer, load_splits
from .site.settings import TrainSettings
from .site_config import SiteConfig
from .tasks import get_task


def holdout_metric(
    checkpoint: str | Path | None,
    data_root: str | Path,
    *,
    task: str = "prostate_seg",
    split: str = "testing",
    cache_dir: str | Path | None = None,
    batch_size: int = 4,
    network: dict | None = None,
    params: dict | None = None,
    datalist: str | Path | None = None,
    converted_root: str | Path | None = None,
) -> float:
    """The task's key metric of ``checkpoint`` on ``<data_root>/datalist.json[split]``.

    ``checkpoint=None`` scores the network as ``network`` builds it (its ``init_seed``), i.e. exactly the model the
    job's server starts from. ``datalist`` names another datalist file whose paths are relative to ``data_root``
    (e.g. ``oncofl datasets prepare``'s ``holdout/datalist.json``, with ``converted_root`` its ``converted/``).
    """
    data_root = Path(data_root).resolve()
    spec = get_task(task)
    config = SiteConfig(
        data_root=data_root,
        datalist=Path(datalist).resolve() if datalist else data_root / "datalist.json",
        cache_dir=Path(cache_dir) if cache_dir else data_root / ".oncofl_cache",
        converted_root=Path(converted_root).resolve() if converted_root else None,
        site_name="holdout",
    )
    split_data = load_splits(config, spec, spec.params(params), splits=(split,))[split]
    device = resolve_device()
    trainer = build_trainer(spec, device, TrainSettings(task=task, network=network))
    if checkpoint is not None:
        trainer.load_state(load_checkpoint(checkpoint))
    data = DeviceData.from_numpy(split_data.images, split_data.labels, device)
    return trainer.evaluate(data, batch_size=batch_size)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor | bytes]:
    """The state of a checkpoint as stored (a FLARE global model, a best model, a site's local model, or a bare state
    dict): tensors, or CKKS ciphertexts (bytes) where an HE job's server saved it. Read with ``weights_only``: tensors
    and plain containers only, so a crafted file (say, one downloaded from a server) cannot run code when it is
    loaded."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} is not a plain weights checkpoint (it holds other Python objects): refused") from e
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict (a {type(state).__name__})")
    return dict(state)


def load_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """The model weights of a checkpoint (:func:`read_checkpoint`); an encrypted one is refused."""
    state = read_checkpoint(path)
    if is_encrypted(state):
        raise ValueError(f"{path} is encrypted (an HE job's global model): decrypt it with a site's client context")
    return {k: v.numpy() for k, v in state.items()}
