"""A trained model for prediction: the task's network with the weights of a checkpoint, and the file's sha256."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..deploy.kit_install import sha256_file as file_sha256
from ..engine import resolve_device
from ..errors import ModelFileError
from ..evaluation import read_checkpoint
from ..he import decrypt_state, is_encrypted
from ..tasks import TaskSpec, get_task


@dataclass(frozen=True)
class TrainedModel:
    """A task's network holding a checkpoint's weights, in eval mode on ``device``.

    Args:
        spec: the task.
        network: the task's network with the checkpoint's weights.
        params: the task's preprocessing parameters (the job's, or the task's defaults).
        path: the model file.
        sha256: the model file's sha256 (hex), written into every output.
        device: where the network runs.
    """

    spec: TaskSpec
    network: torch.nn.Module
    params: dict[str, Any]
    path: Path
    sha256: str
    device: torch.device

    def predict_labels(self, image: np.ndarray) -> np.ndarray:
        """Network input ``[C, ...]`` -> label map on the network's grid (uint8, argmax over the classes)."""
        with torch.inference_mode():
            logits = self.network(torch.from_numpy(np.ascontiguousarray(image)[None]).to(self.device))
        if logits.shape[1] != len(self.spec.segments) + 1:
            raise ModelFileError(
                "the network's output classes do not match the task's segments",
                fix="use a model trained for this task, with the job's network settings (--network)",
                path=str(self.path),
                detail=f"{logits.shape[1]} output channels, {len(self.spec.segments)} segment(s) + background",
            )
        return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()

    def probability(self, image: np.ndarray) -> float:
        """Network input ``[C, ...]`` of a classification task -> the malignant class's softmax probability."""
        with torch.inference_mode():
            logits = self.network(torch.from_numpy(np.ascontiguousarray(image)[None]).to(self.device))
        return float(torch.softmax(logits.float(), dim=1)[0, 1])


def load_model(
    path: str | Path,
    task: str,
    *,
    network: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    device: torch.device | None = None,
    he_context: str | Path | None = None,
) -> TrainedModel:
    """The ``task``'s network (built with the job's ``network`` settings) holding the weights of ``path``: a FLARE
    global model (``FL_global_model.pt``), a best model, a site's ``local_model.pt`` or a bare state dict, read with
    ``weights_only`` (:func:`read_weights`; ``he_context``: a hospital's client context, for an HE job's model)."""
    spec = prediction_task(task)
    network_module = spec.build_network(**(network or {}))
    return with_weights(network_module, path, task, params=params, device=device, he_context=he_context)


def prediction_task(task: str) -> TaskSpec:
    """The task, refused when it has no prediction (no ``prepare_input``)."""
    spec = get_task(task)
    if spec.prepare_input is None:
        raise ModelFileError("this task has no prediction", fix="give the task the model was trained for")
    return spec


def read_weights(path: Path, model: torch.nn.Module, he_context: str | Path | None = None) -> dict[str, Any]:
    """The checkpoint's weights (:func:`oncofl.evaluation.read_checkpoint`); an HE job's encrypted global model is
    decrypted with a hospital's client context (``he_context``), shaped as ``model``'s state."""
    try:
        state = read_checkpoint(path)
    except Exception as e:  # a missing file, not a torch file, pickled objects (refused by weights_only)
        raise ModelFileError(
            f"model file cannot be read as plain weights ({type(e).__name__})",
            fix="give the path of a model checkpoint saved by the job (FL_global_model.pt, best or local model)",
            path=str(path),
            detail=str(e),
        ) from e
    if not is_encrypted(state):
        return state
    if he_context is None:
        raise ModelFileError(
            "the model file is encrypted (an HE job's global model: the server never held it in clear)",
            fix="decrypt it at a hospital: pass --he-context <its kit>/startup/client_context.tenseal",
            path=str(path),
        )
    try:
        return decrypt_state(state, he_context, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    except Exception as e:  # not a TenSEAL context, a public context, another network
        raise ModelFileError(
            f"the encrypted model cannot be decrypted with this context ({type(e).__name__})",
            fix="pass a hospital's client_context.tenseal from this consortium's HE kits, and the job's network",
            path=str(path),
            detail=str(e)[:500],
        ) from e


def with_weights(
    model: torch.nn.Module,
    path: str | Path,
    task: str,
    *,
    params: dict[str, Any] | None = None,
    device: torch.device | None = None,
    he_context: str | Path | None = None,
) -> TrainedModel:
    """``model`` (an instance of the ``task``'s network, e.g. one a MONAI bundle config built) holding the weights of
    ``path`` (:func:`read_weights`), loaded strictly, as a :class:`TrainedModel` in eval mode on ``device``."""
    spec = prediction_task(task)
    path = Path(path)
    weights = read_weights(path, model, he_context)
    try:
        model.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()}, strict=True)
    except RuntimeError as e:
        raise ModelFileError(
            "model file does not fit this task's network",
            fix="check --task, and pass the job's network settings with --network",
            path=str(path),
            detail=str(e)[:500],
        ) from e
    device = device or resolve_device()
    return TrainedModel(spec, model.to(device).eval(), spec.params(params), path, file_sha256(path), device)
