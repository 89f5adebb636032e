"""Homomorphic encryption (CKKS, TenSEAL) of model updates: the server sums what it cannot read.

Jobs built with ``--he`` (see :mod:`oncofl.jobs.builder`) use FLARE's HE components: each site encrypts its result
(``HEModelEncryptor``) with the consortium's CKKS key from its startup kit (``client_context.tenseal``), the server
aggregates ciphertexts (``HEInTimeAccumulateWeightedAggregator``) holding only the public context
(``server_context.tenseal``), and sites decrypt the global model they receive (``HEModelDecryptor``). The kits come
from provisioning with FLARE's ``HEBuilder`` (``oncofl poc prepare --he``, or in ``provisioning/project.yml``);
the FLARE simulator has no startup kits, so HE jobs run in POC or production.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO
from nvflare.apis.fl_context import FLContext
from nvflare.app_opt.he.cross_site_model_eval import HECrossSiteModelEval
from nvflare.app_opt.he.homomorphic_encrypt import serialize_nested_dict


class HECrossSiteModelEvalFixed(HECrossSiteModelEval):
    """FLARE 2.9's HE cross-site evaluation, working.

    In 2.9 the base class stores models through ``_save_dxo_content``; ``HECrossSiteModelEval`` still overrides the
    older ``_save_validation_content``, which is no longer called. The encrypted models then go out as CKKS vectors
    bound to the server's public context, and copying the validate task fails ("the current context is public"):
    every validation ends in an error and ``cross_val_results.json`` stays empty while the job reports COMPLETED.
    Serializing the vectors to bytes first, as the HE workflow intends, fixes it; the sites' ``HEModelDecryptor``
    turns them back and decrypts.
    """

    def _save_dxo_content(self, name: str, save_dir: str, dxo: DXO, fl_ctx: FLContext) -> str:
        if isinstance(dxo.data, dict):
            serialize_nested_dict(dxo.data)
        return super()._save_dxo_content(name, save_dir, dxo, fl_ctx)


def is_encrypted(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's state holds CKKS ciphertexts (serialized vectors, bytes), as an HE job's server saves
    its global model."""
    return any(isinstance(value, (bytes, bytearray)) for value in state.values())


def decrypt_state(
    state: dict[str, bytes], context_file: str | Path, shapes: dict[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """What a hospital holding the consortium's secret key (its kit's ``startup/client_context.tenseal``) reads from
    an HE job's encrypted global model: every vector decrypted and shaped as the network's ``shapes``. The server's
    public context cannot decrypt (``ValueError``)."""
    import tenseal as ts

    context = ts.context_from(Path(context_file).read_bytes())
    if not context.has_secret_key():
        raise ValueError("the context holds no secret key (a server's public context cannot decrypt)")
    if set(state) != set(shapes):
        raise ValueError(f"the encrypted model's keys differ from the network's ({len(state)} vs {len(shapes)})")
    return {
        key: np.asarray(ts.ckks_vector_from(context, value).decrypt(), dtype=np.float32).reshape(shapes[key])
        for key, value in state.items()
    }
