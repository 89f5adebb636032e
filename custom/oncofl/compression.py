"""Smaller model updates: FLARE's quantization filters, on a GPU or a CPU.

A job with ``--compression T`` quantizes every training update at the site (:class:`UpdateQuantizer`, the last
filter before the PHI gate) and dequantizes it at the server (:class:`UpdateDequantizer`, before the aggregator),
so the server's robust aggregation, the sites' privacy guards (which run before the job's filters) and DP (whose
noise is added during training) all see full-precision numbers. ``T`` is one of :data:`COMPRESSIONS`:

* ``float16`` / ``bfloat16``: 2 bytes a value (bf16 keeps float32's range: tiny weight differences do not
  underflow to zero as they can in fp16);
* ``blockwise8``: 8 bits a value with one float32 scale per block of 4096 (bitsandbytes' dynamic map);
* ``float4`` / ``normfloat4``: 4 bits a value with one scale per block of 64.

The classes are FLARE's ``ModelQuantizer`` / ``ModelDequantizer`` (``nvflare.app_opt.pt.quantization``) with their
message format (the DXO meta ``processed_algorithm``, ``quant_state``, ``source_datatype``, ``quantized_flag``), with
four changes:

1. FLARE 2.9 moves every tensor to CUDA for the 8- and 4-bit types, so a server or site without a GPU cannot
   (de)quantize; here the same bitsandbytes functions run on the CPU;
2. ``bfloat16`` is added (FLARE has ``float16`` only);
3. a tensor is sent as it is where quantizing it would not make it smaller (a small bias whose 8-bit scales and code
   map outweigh it) or where it is not floating point (e.g. a step counter); its ``quant_state`` is then empty and its
   values keep their own dtype;
4. the server checks a site's message against the global model before it decodes anything: every tensor's name,
   element count and shape, the scales' and code map's sizes, the block size. A message that does not fit is refused
   with the reason (the filter raises: the update never reaches the aggregator); an update
   that arrives without compression is passed on as it is (the aggregator checks it as any other).

Each site logs one line per update (:data:`SITE_RECORD`: type, tensors quantized, bytes before and after) and the
server one per update decoded (:data:`SERVER_RECORD`): the record that the filters ran.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DXO, MetaKey
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.pt.quantization.dequantizer import ModelDequantizer
from nvflare.app_opt.pt.quantization.quantizer import ModelQuantizer

from oncofl.constants import COMPRESSIONS

SITE_RECORD = "update compressed"
SERVER_RECORD = "update decompressed"
BLOCKWISE8_BLOCK = 4096  # bitsandbytes' quantize_blockwise default, which FLARE uses on both sides
FOUR_BIT_TYPES = {"float4": "fp4", "normfloat4": "nf4"}
BLOCK_SIZES = (64, 128, 256, 512, 1024, 2048, 4096)
QUANT_META = (MetaKey.PROCESSED_ALGORITHM, "quant_state", "source_datatype", "quantized_flag")


class CompressionError(ValueError):
    """A compressed update that cannot be decoded; the text is ours, with the tensor's position in the update."""


def _nbytes(value: Any) -> int:
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    return int(value.nbytes) if isinstance(value, np.ndarray) else 0


def _quantize_tensor(values: np.ndarray, kind: str) -> tuple[np.ndarray, dict[str, Any]]:
    """One float tensor quantized (values, state) as FLARE's quantizer writes it."""
    import bitsandbytes.functional as bnb

    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    if kind == "float16":
        limit = float(np.finfo(np.float16).max)
        return np.asarray(np.clip(values, -limit, limit), dtype=np.float16), {}  # a 0-d tensor stays an array
    if kind == "bfloat16":
        return tensor.to(torch.bfloat16).view(torch.uint16).numpy(), {}
    if kind == "blockwise8":
        quantized, state = bnb.quantize_blockwise(tensor)
        return quantized.numpy(), {"absmax": state.absmax.numpy(), "code": state.code.numpy()}
    quantized, state = bnb.quantize_4bit(tensor, quant_type=FOUR_BIT_TYPES[kind])
    out = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state.as_dict().items()}
    out["shape"] = [int(n) for n in out["shape"]]  # plain ints on the wire
    return quantized.numpy(), out


def quantize_update(params: dict[str, Any], kind: str) -> tuple[dict, dict, dict, tuple[int, int, int]]:
    """``params`` quantized in place: (params, quant_state, source_datatype, (tensors quantized, bytes before,
    bytes after, scales and maps included)). A tensor that is not floating point, or that quantizing would not make
    smaller, is left as it is with an empty state."""
    if kind not in COMPRESSIONS:
        raise ValueError(f"unknown compression {kind!r}; available: {', '.join(COMPRESSIONS)}")
    quant_state: dict[str, dict] = {}
    source: dict[str, str] = {}
    before = after = quantized_count = 0
    for name in list(params):
        values = params[name]
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
        values = np.asarray(values)
        source[name] = values.dtype.name
        quant_state[name] = {}
        before += values.nbytes
        if values.dtype in (np.float32, np.float64) and values.size:
            quantized, state = _quantize_tensor(values, kind)
            if quantized.nbytes + _nbytes(state) < values.nbytes:
                values, quant_state[name] = quantized, state
                source[name] = "float32"  # what the server restores (the aggregator works in float32/float64)
                quantized_count += 1
        params[name] = values
        after += values.nbytes + _nbytes(quant_state[name])
    return params, quant_state, source, (quantized_count, before, after)


class UpdateQuantizer(ModelQuantizer):
    """Site: quantizes every model update leaving the site (FLARE's ModelQuantizer, CPU-capable; see the module).

    Args:
        quantization_type: one of :data:`COMPRESSIONS`.
    """

    def __init__(self, quantization_type: str = "float16") -> None:
        if quantization_type not in COMPRESSIONS:
            raise ValueError(f"unknown compression {quantization_type!r}; available: {', '.join(COMPRESSIONS)}")
        super().__init__(quantization_type="float16")  # FLARE's check knows no bfloat16; the type is set below
        self.quantization_type = quantization_type

    def quantization(self, params: dict, fl_ctx: FLContext):
        params, quant_state, source, (count, before, after) = quantize_update(params, self.quantization_type)
        ratio = before / after if after else 0.0
        self.log_info(
            fl_ctx,
            f"{SITE_RECORD} ({self.quantization_type}): {count} of {len(params)} tensors quantized, "
            f"{before} -> {after} bytes (x{ratio:.2f} smaller)",
        )
        return params, quant_state, source


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(n, (int, np.integer)) and n >= 0 for n in value):
        raise CompressionError("its 4-bit state has no valid shape")
    return tuple(int(n) for n in value)


def _array(state: Mapping[str, Any], key: str, size: int) -> np.ndarray:
    value = state.get(key)
    if not isinstance(value, np.ndarray) or value.dtype != np.float32 or value.size != size:
        raise CompressionError(f"its {key} is not a float32 array of {size} values")
    if not np.all(np.isfinite(value)):
        raise CompressionError(f"its {key} holds non-finite values")
    return value


def _decode_blockwise8(values: np.ndarray, state: Mapping[str, Any]) -> np.ndarray:
    import bitsandbytes.functional as bnb

    absmax = _array(state, "absmax", math.ceil(values.size / BLOCKWISE8_BLOCK))
    code = _array(state, "code", 256)
    out = bnb.dequantize_blockwise(
        torch.from_numpy(values), absmax=torch.from_numpy(absmax), code=torch.from_numpy(code)
    )
    return out.numpy()


def _decode_4bit(values: np.ndarray, state: Mapping[str, Any], kind: str) -> np.ndarray:
    import bitsandbytes.functional as bnb

    if state.get("quant_type") != FOUR_BIT_TYPES[kind] or state.get("dtype") != "float32":
        raise CompressionError("its 4-bit state names another type")
    blocksize = state.get("blocksize")
    if blocksize not in BLOCK_SIZES:
        raise CompressionError("its 4-bit block size is not one bitsandbytes uses")
    shape = _shape(state.get("shape"))
    count = math.prod(shape)
    if values.size != math.ceil(count / 2):
        raise CompressionError("its 4-bit values do not match its shape")
    quant = bnb.QuantState(
        absmax=torch.from_numpy(_array(state, "absmax", math.ceil(count / blocksize))),
        shape=torch.Size(shape),
        code=torch.from_numpy(_array(state, "quant_map", 16)),
        blocksize=blocksize,
        quant_type=FOUR_BIT_TYPES[kind],
        dtype=torch.float32,
    )
    return bnb.dequantize_4bit(torch.from_numpy(values), quant, quant_type=FOUR_BIT_TYPES[kind]).numpy()


def _element_count(values: Any, state: Any, kind: str) -> int:
    """How many values a tensor decodes to, from its message alone (before anything is decoded)."""
    if not isinstance(values, np.ndarray) or not isinstance(state, Mapping):
        raise CompressionError("it is not an array with a quantization state")
    if state and kind in FOUR_BIT_TYPES:
        return math.prod(_shape(state.get("shape")))
    return int(values.size)


def _decode_tensor(values: np.ndarray, state: Mapping[str, Any], source: Any, kind: str) -> np.ndarray:
    """One tensor as float32 (or as it was sent, where it was not quantized: then its dtype is its source's)."""
    if not state and values.dtype.name == source and values.dtype.kind in "fiub":
        return values  # sent as it was: not floating point, or not worth quantizing
    if source != "float32":
        raise CompressionError("its source type is not float32")
    if not state and kind == "float16" and values.dtype == np.float16:
        return values.astype(np.float32)
    if not state and kind == "bfloat16" and values.dtype == np.uint16:
        return (values.astype(np.uint32) << 16).view(np.float32)
    if state and kind == "blockwise8" and values.dtype == np.uint8:
        return _decode_blockwise8(np.ascontiguousarray(values), state)
    if state and kind in FOUR_BIT_TYPES and values.dtype == np.uint8:
        return _decode_4bit(np.ascontiguousarray(values), state, kind)
    raise CompressionError(f"its values ({values.dtype}) are not {kind} quantized values")


def dequantize_update(
    data: Any, meta: Mapping[str, Any], reference: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """A site's quantized update decoded to float32, checked against the global model ``reference`` (name, element
    count and shape of every tensor) before it is decoded. Raises :class:`CompressionError`."""
    kind = meta.get(MetaKey.PROCESSED_ALGORITHM)
    if kind not in COMPRESSIONS:
        raise CompressionError("the update names an unknown compression type")
    states, sources = meta.get("quant_state"), meta.get("source_datatype")
    if not all(isinstance(m, Mapping) for m in (data, states, sources)) or not set(data) == set(states) == set(sources):
        raise CompressionError("the update's tensors, quantization states and source types do not match")
    out = {}
    for position, name in enumerate(sorted(data, key=str)):
        if reference is not None and name not in reference:
            raise CompressionError(f"tensor #{position} is not in the global model")
        values = data[name]
        if isinstance(values, np.generic):  # FLARE's float16 quantizer turns a 0-d tensor into a numpy scalar
            values = np.asarray(values)
        try:
            count = _element_count(values, states[name], kind)
            if reference is not None and count != np.size(reference[name]):
                raise CompressionError("its element count is not the global model's")
            value = _decode_tensor(values, states[name], sources[name], kind)
        except CompressionError as e:
            raise CompressionError(f"tensor #{position} cannot be decoded: {e}") from None
        except Exception as e:  # whatever else a crafted state makes bitsandbytes raise
            raise CompressionError(f"tensor #{position} cannot be decoded ({type(e).__name__})") from None
        if value.size != count:
            raise CompressionError(f"tensor #{position} cannot be decoded: its values do not match its size")
        out[name] = value.reshape(np.shape(reference[name])) if reference is not None else value
    return out


class UpdateDequantizer(ModelDequantizer):
    """Server: decodes the sites' quantized updates before the aggregator sees them (see the module)."""

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        site = str(shareable.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default="?"))
        if dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM) is None and not dxo.get_meta_prop("quantized_flag"):
            self.log_info(fl_ctx, f"{SERVER_RECORD}: the update from {site} arrived uncompressed, passed on as it is")
            return None
        global_model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        reference = global_model["weights"] if global_model is not None else None
        before = _nbytes(dxo.data) + _nbytes(dxo.meta.get("quant_state") or {})
        try:
            dxo.data = dequantize_update(dxo.data, dxo.meta, reference)
        except CompressionError as e:
            self.log_warning(fl_ctx, f"the update from {site} is refused: {e}")
            raise
        kind = dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM)
        dxo.remove_meta_props(list(QUANT_META))
        after = _nbytes(dxo.data)
        checked = "checked against the global model" if reference is not None else "no global model to check against"
        self.log_info(fl_ctx, f"{SERVER_RECORD} ({kind}) from {site}: {before} -> {after} bytes, {checked}")
        return dxo
