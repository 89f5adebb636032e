"""Update compression (oncofl.compression): FLARE's quantization filters on a CPU, the server's checks of what a site
sends, FLARE's message format and serialization, and the job option that wires them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.decomposers import numpy_decomposers
from nvflare.app_opt.pt.quantization.dequantizer import ModelDequantizer
from nvflare.app_opt.pt.quantization.quantizer import ModelQuantizer
from nvflare.fuel.utils import fobs

from oncofl.aggregation import RobustAggregator
from oncofl.compression import (
    COMPRESSIONS,
    CompressionError,
    UpdateDequantizer,
    UpdateQuantizer,
    dequantize_update,
    quantize_update,
)
from oncofl.jobs import breast_wdbc, prostate_mri_seg
from oncofl.privacy import PHIGuardFilter

# the largest error of a value, relative to the largest magnitude of its tensor (blockwise8: of its block of 4096)
TOLERANCE = {"float16": 1e-3, "bfloat16": 4e-3, "blockwise8": 1e-2, "float4": 0.2, "normfloat4": 0.2}
BYTES_PER_VALUE = {"float16": 2, "bfloat16": 2, "blockwise8": 1, "float4": 0.5, "normfloat4": 0.5}


def model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(size=(16, 8, 3, 3)).astype(np.float32),
        "fc.weight": rng.normal(size=(64, 300)).astype(np.float32) * 0.01,
        "fc.bias": rng.normal(size=(2,)).astype(np.float32),  # too small to be worth quantizing
        "fc.scale": np.array(1.5, dtype=np.float32),  # a 0-d tensor
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),  # not floating point: sent as it is
    }


def encode(kind: str, seed: int = 0) -> tuple[dict, dict, tuple[int, int, int]]:
    params, states, sources, sizes = quantize_update(model(seed), kind)
    return params, {MetaKey.PROCESSED_ALGORITHM: kind, "quant_state": states, "source_datatype": sources}, sizes


@pytest.mark.parametrize("kind", COMPRESSIONS)
def test_each_type_round_trips_within_its_precision_and_is_smaller(kind):
    reference = model()
    params, meta, (count, before, after) = encode(kind)
    decoded = dequantize_update(params, meta, reference)
    sixteen_bit = kind in ("float16", "bfloat16")  # 2 bytes a value, no scales: even the bias and scalar shrink
    assert count == (4 if sixteen_bit else 2) and params["bn.num_batches_tracked"].dtype == np.int64
    for name, value in reference.items():
        assert decoded[name].shape == value.shape and decoded[name].dtype == value.dtype, name
        scale = float(np.max(np.abs(value))) or 1.0
        assert float(np.max(np.abs(decoded[name] - value))) <= TOLERANCE[kind] * scale, name
    if not sixteen_bit:  # the bias's 8/4-bit scales and code map would outweigh it: sent as it was
        assert params["fc.bias"].dtype == np.float32
        np.testing.assert_array_equal(decoded["fc.bias"], reference["fc.bias"])
    quantized = [k for k in reference if reference[k].dtype == np.float32 and (sixteen_bit or reference[k].size > 2)]
    expected = sum(reference[k].size for k in quantized) * BYTES_PER_VALUE[kind]
    as_is = sum(reference[k].nbytes for k in reference if k not in quantized)
    assert expected <= after - as_is <= expected * 1.1 + 2 * 1100, (kind, after)  # + scales and code maps
    assert before == sum(v.nbytes for v in reference.values())


def test_bfloat16_keeps_tiny_weight_differences_that_float16_flushes_to_zero():
    diff = {"w": np.full((1000,), 1e-8, dtype=np.float32)}
    for kind, survives in (("float16", False), ("bfloat16", True)):
        params, meta, _ = (
            lambda p: (p[0], {MetaKey.PROCESSED_ALGORITHM: kind, "quant_state": p[1], "source_datatype": p[2]}, p[3])
        )(quantize_update(dict(diff), kind))
        assert (float(dequantize_update(params, meta)["w"][0]) > 0) is survives, kind


def test_flare_own_float16_filters_read_ours_and_ours_read_theirs():
    """The message format is FLARE's: its dequantizer decodes our quantizer's message and ours decodes its
    quantizer's (float16: FLARE's 8- and 4-bit paths need CUDA; scripts/gpu_check.sh covers them on a GPU)."""
    ctx = FLContext()
    floats = {k: v for k, v in model().items() if v.dtype.kind == "f"}  # FLARE's quantizer refuses an int tensor
    ours = UpdateQuantizer("float16").process_dxo(DXO(DataKind.WEIGHT_DIFF, dict(floats)), Shareable(), ctx)
    theirs_decoded = ModelDequantizer().process_dxo(ours, Shareable(), ctx)
    theirs = ModelQuantizer("float16").process_dxo(DXO(DataKind.WEIGHT_DIFF, dict(floats)), Shareable(), ctx)
    ours_decoded = dequantize_update(theirs.data, theirs.meta, floats)
    for name, value in floats.items():
        np.testing.assert_allclose(theirs_decoded.data[name], value, atol=1e-3 * float(np.max(np.abs(value))))
        np.testing.assert_allclose(ours_decoded[name], value, atol=1e-3 * float(np.max(np.abs(value))))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (FLARE's 8- and 4-bit paths)")
@pytest.mark.parametrize("kind", ["blockwise8", "float4", "normfloat4"])
def test_flare_own_8_and_4_bit_filters_on_a_gpu_read_ours_and_ours_read_theirs(kind):
    ctx = FLContext()
    floats = {k: v for k, v in model().items() if v.dtype.kind == "f" and v.ndim}
    ours = UpdateQuantizer(kind).process_dxo(DXO(DataKind.WEIGHT_DIFF, dict(floats)), Shareable(), ctx)
    theirs_decoded = ModelDequantizer().process_dxo(ours, Shareable(), ctx)
    theirs = ModelQuantizer(kind).process_dxo(DXO(DataKind.WEIGHT_DIFF, dict(floats)), Shareable(), ctx)
    ours_decoded = dequantize_update(theirs.data, theirs.meta, floats)
    for name, value in floats.items():
        tolerance = TOLERANCE[kind] * float(np.max(np.abs(value)))
        np.testing.assert_allclose(np.reshape(theirs_decoded.data[name], value.shape), value, atol=tolerance)
        np.testing.assert_allclose(ours_decoded[name], value, atol=tolerance)


def server_context(weights: dict[str, np.ndarray] | None) -> FLContext:
    ctx = FLContext()
    if weights is not None:
        ctx.set_prop(AppConstants.GLOBAL_MODEL, {"weights": weights}, private=True, sticky=False)
    ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    return ctx


def site_result(kind: str, update: dict[str, np.ndarray], steps: int = 10) -> Shareable:
    """A site's train result as it leaves: quantized, through the PHI gate, serialized by FLARE and read back."""
    dxo = DXO(DataKind.WEIGHT_DIFF, update, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps})
    shareable = UpdateQuantizer(kind).process(dxo.to_shareable(), FLContext())
    shareable = PHIGuardFilter().process(shareable, FLContext())
    numpy_decomposers.register()
    received = fobs.loads(fobs.dumps(shareable))
    received.set_peer_props({ReservedKey.IDENTITY_NAME: "site-1"})
    return received


@pytest.mark.parametrize("kind", COMPRESSIONS)
def test_a_quantized_update_reaches_the_robust_aggregator_as_float32_within_precision(kind):
    global_weights = model(1)
    update = {k: (v * 0.01).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in model(2).items()}
    ctx = server_context(global_weights)
    shareable = UpdateDequantizer().process(site_result(kind, dict(update)), ctx)  # quantized in place
    dxo = from_shareable(shareable)
    assert not any(k in dxo.meta for k in (MetaKey.PROCESSED_ALGORITHM, "quant_state", "quantized_flag"))
    assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 10
    aggregator = RobustAggregator()
    assert aggregator.accept(shareable, ctx)
    contribution = aggregator._contributions["site-1"]
    for name, value in update.items():
        scale = float(np.max(np.abs(value))) or 1.0
        assert np.max(np.abs(contribution.update[name] - value)) <= TOLERANCE[kind] * scale, name


def test_an_uncompressed_update_is_passed_on_as_it_is():
    update = model(3)
    shareable = DXO(DataKind.WEIGHTS, dict(update)).to_shareable()
    out = from_shareable(UpdateDequantizer().process(shareable, server_context(model(1))))
    for name, value in update.items():
        np.testing.assert_array_equal(out.data[name], value)


def crafted(kind: str, change) -> tuple[dict, dict]:
    params, meta, _ = encode(kind)
    change(params, meta["quant_state"], meta)
    return params, meta


ATTACKS = {
    "unknown type": ("blockwise8", lambda p, s, m: m.update({MetaKey.PROCESSED_ALGORITHM: "zip"}), "unknown"),
    "a tensor without state": ("blockwise8", lambda p, s, m: s.pop("fc.weight"), "do not match"),
    "a tensor the model lacks": (
        "float16",
        lambda p, s, m: [d.update({"/data/DOE^JANE/x": d["fc.bias"]}) for d in (p, s, m["source_datatype"])],
        "not in the global model",
    ),
    "4-bit shape claims 1e12 values": (
        "normfloat4",
        lambda p, s, m: s["fc.weight"].update({"shape": [1000000, 1000000]}),
        "element count",
    ),
    "4-bit shape of the right count but a wrong size of values": (
        "float4",
        lambda p, s, m: p.update({"fc.weight": p["fc.weight"][:10]}),
        "do not match its shape",
    ),
    "4-bit odd block size": ("float4", lambda p, s, m: s["fc.weight"].update({"blocksize": 3}), "block size"),
    "4-bit type swapped": ("float4", lambda p, s, m: s["fc.weight"].update({"quant_type": "nf4"}), "another type"),
    "blockwise absmax too short": (
        "blockwise8",
        lambda p, s, m: s["fc.weight"].update({"absmax": s["fc.weight"]["absmax"][:0]}),
        "absmax",
    ),
    "blockwise infinite scale": (
        "blockwise8",
        lambda p, s, m: s["fc.weight"]["absmax"].__setitem__(0, np.inf),
        "non-finite",
    ),
    "blockwise code map of a string": (
        "blockwise8",
        lambda p, s, m: s["fc.weight"].update({"code": "x" * 256}),
        "code",
    ),
    "values that are a string": ("bfloat16", lambda p, s, m: p.update({"fc.weight": "weights"}), "not an array"),
    "float16 values claimed as blockwise8": (
        "float16",
        lambda p, s, m: m.update({MetaKey.PROCESSED_ALGORITHM: "blockwise8"}),
        "are not blockwise8",
    ),
    "source type not float32": (
        "bfloat16",
        lambda p, s, m: m["source_datatype"].update({"fc.weight": "float64"}),
        "source type",
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_crafted_message_is_refused_with_our_text_before_it_is_decoded(attack):
    kind, change, reason = ATTACKS[attack]
    params, meta = crafted(kind, change)
    with pytest.raises(CompressionError, match=reason) as error:
        dequantize_update(params, meta, model())
    assert "DOE" not in str(error.value) and "/data" not in str(error.value)  # positions, never the site's names


def test_the_server_filter_refuses_a_crafted_update_so_flare_drops_it_from_the_round():
    shareable = site_result("normfloat4", model(2))
    dxo = from_shareable(shareable)
    dxo.meta["quant_state"]["fc.weight"]["shape"] = [1 << 20, 1 << 20]
    dxo.update_shareable(shareable)
    with pytest.raises(CompressionError, match="tensor #4 cannot be decoded: its element count"):
        UpdateDequantizer().process(shareable, server_context(model(1)))


def test_the_job_option_wires_the_quantizer_before_the_phi_gate_and_the_decoder_before_the_aggregator(tmp_path):
    job = breast_wdbc.export(tmp_path, compression="blockwise8")
    client = json.loads((job / "app/config/config_fed_client.json").read_text())
    server = json.loads((job / "app/config/config_fed_server.json").read_text())
    train_chain = next(c for c in client["task_result_filters"] if "train" in c["tasks"])
    paths = [f["path"] for f in train_chain["filters"]]
    assert paths == ["oncofl.compression.UpdateQuantizer", "oncofl.privacy.PHIGuardFilter"]
    assert train_chain["filters"][0]["args"] == {"quantization_type": "blockwise8"}
    other = [c for c in client["task_result_filters"] if "train" not in c["tasks"]]
    assert all("UpdateQuantizer" not in json.dumps(c) for c in other)  # cross-site evaluation's models: as they are
    (chain,) = server["task_result_filters"]
    assert chain["tasks"] == ["train"] and chain["filters"][0]["path"] == "oncofl.compression.UpdateDequantizer"
    assert client["executors"][0]["executor"]["args"]["send_weight_diff"] is True  # exchange "auto": differences
    job = breast_wdbc.export(tmp_path, compression="float16", exchange="full")
    client = json.loads((job / "app/config/config_fed_client.json").read_text())
    assert client["executors"][0]["executor"]["args"].get("send_weight_diff", False) is False
    plain = json.loads((breast_wdbc.export(tmp_path) / "app/config/config_fed_server.json").read_text())
    assert "task_result_filters" not in plain or not plain["task_result_filters"]


@pytest.mark.parametrize(
    "options, reason",
    [
        ({"compression": "int2"}, "unknown compression"),
        ({"compression": "float16", "he": True}, "--compression"),
        ({"compression": "float16", "algorithm": "scaffold"}, "--compression"),
        ({"exchange": "delta"}, "unknown exchange"),
        ({"exchange": "full", "privacy_filter": "percentile"}, "weight differences"),
    ],
)
def test_compression_options_the_job_cannot_carry_are_refused_at_export(tmp_path, options, reason):
    with pytest.raises(ValueError, match=reason):
        prostate_mri_seg.export(tmp_path, **options)
