#!/usr/bin/env python3
"""Quantize a whisper.cpp ggml model to q8_0, byte for byte as whisper.cpp's quantizer does.

    ggml_quantize.py INPUT_FILE OUTPUT_FILE

INPUT_FILE is an f16 (or f32) ggml model such as the one .ci/ct2_to_ggml.py writes. The output
is what `quantize INPUT_FILE OUTPUT_FILE q8_0` (whisper.cpp's examples/quantize, i.e.
whisper_model_quantize and ggml_common_quantize_0 in examples/common-ggml.cpp) would write:

- the header is copied, except that ftype becomes GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR
  + GGML_FTYPE_MOSTLY_Q8_0; mel filters and token list are copied unchanged;
- a tensor is quantized only if it is 2-D and its name does not match the skip list; every
  other tensor keeps its type and bytes (so 1-D tensors stay f32 and the 3-D conv weights f16,
  which is also what whisper.cpp's loader expects of a quantized model);
- q8_0 is ggml's quantize_row_q8_0_ref (ggml/src/ggml-quants.c) on the f16 values widened to
  f32: blocks of 32 values, scale d = amax / 127 stored as f16, quants roundf(x * (1 / d)).

Building whisper.cpp's quantize tool is not needed for this: the q8_0 reference quantizer is
deterministic scalar code, which numpy reproduces exactly as long as every step is done in the
same precision (see quantize_q8_0). Only numpy and the standard library are needed.
"""
import re
import struct
import sys
from pathlib import Path

import numpy as np

GGML_MAGIC = 0x67676D6C
# ggml/include/ggml.h
GGML_QNT_VERSION = 2
GGML_QNT_VERSION_FACTOR = 1000
GGML_FTYPE_MOSTLY_Q8_0 = 7
GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q8_0 = 0, 1, 8
QK8_0 = 32
BLOCK_Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", (QK8_0,))])  # 34 bytes, no padding

# examples/quantize/quantize.cpp: regexes (matched against the whole name, as std::regex_match
# does) of tensors left as they are. Everything else (".*") is a quantization candidate.
TO_SKIP = [
    "encoder.conv1.bias",
    "encoder.conv2.bias",
    "encoder.positional_embedding",
    "decoder.positional_embedding",
]


def quantize_q8_0(x):
    """quantize_row_q8_0_ref on a float32 array whose size is a multiple of 32.

    The C code works in float32 throughout: d = amax / 127, id = 1.0f / d, then x * id, each
    one correctly rounded float32 operation, which numpy's float32 arithmetic matches. roundf
    rounds halves away from zero, unlike np.round (halves to even), and ties do happen: some
    5,000 of ggml-base's 70.6 million quantized values land exactly on a half. As |x * id| is
    at most about 127, adding ±0.5 in float64 is exact and truncating then gives roundf's
    result. The scale goes to f16 with round-to-nearest-even, as GGML_FP32_TO_FP16 and numpy's
    astype both do.
    """
    blocks = x.reshape(-1, QK8_0)
    amax = np.abs(blocks).max(axis=1)
    d = amax / np.float32(127)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)  # all-zero block: id = 0, quants 0
    scaled = (blocks * inv[:, None]).astype(np.float64)
    out = np.empty(len(blocks), dtype=BLOCK_Q8_0)
    out["d"] = d.astype(np.float16)
    out["qs"] = np.trunc(scaled + np.copysign(0.5, scaled)).astype(np.int8)
    return out.tobytes()


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: ggml_quantize.py INPUT_FILE OUTPUT_FILE")
    inp, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    buf = memoryview(inp.read_bytes())
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    magic, *hparams = take("12i")
    if magic != GGML_MAGIC:
        sys.exit(f"ggml_quantize: {inp}: bad magic; not a whisper.cpp ggml model")
    if hparams[-1] not in (0, 1):
        sys.exit(f"ggml_quantize: {inp}: ftype {hparams[-1]}; expected an f32 or f16 model")
    n_mel, n_fft = take("2i")
    pos += 4 * n_mel * n_fft
    (n_vocab,) = take("i")
    for _ in range(n_vocab):
        (n,) = take("I")
        pos += n
    if pos > len(buf):
        sys.exit(f"ggml_quantize: {inp}: truncated before the tensors")

    skip = [re.compile(s) for s in TO_SKIP]
    n_quantized = 0
    with open(out_path, "wb") as out:
        out.write(struct.pack("<12i", GGML_MAGIC, *hparams[:-1],
                              GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR + GGML_FTYPE_MOSTLY_Q8_0))
        out.write(buf[48:pos])  # mel filters and tokens, unchanged
        while pos < len(buf):
            n_dims, length, ttype = take("3i")
            ne = take(f"{n_dims}i")
            raw_name = bytes(buf[pos:pos + length])
            name = raw_name.decode("utf-8")
            pos += length
            if ttype not in (GGML_TYPE_F32, GGML_TYPE_F16):
                sys.exit(f"ggml_quantize: {name}: tensor type {ttype}; expected f32 or f16")
            nelements = int(np.prod(ne, dtype=np.int64))
            dtype = np.dtype("<f4" if ttype == GGML_TYPE_F32 else "<f2")
            nbytes = nelements * dtype.itemsize
            if pos + nbytes > len(buf):
                sys.exit(f"ggml_quantize: {name}: truncated tensor data")
            data = buf[pos:pos + nbytes]
            pos += nbytes

            quantize = n_dims == 2 and not any(s.fullmatch(name) for s in skip)
            if quantize and ne[0] % QK8_0:
                sys.exit(f"ggml_quantize: {name}: row of {ne[0]} values is not a multiple of {QK8_0}")
            header = struct.pack(f"<3i{n_dims}i", n_dims, length, GGML_TYPE_Q8_0 if quantize else ttype, *ne)
            out.write(header + raw_name)
            if quantize:
                out.write(quantize_q8_0(np.frombuffer(data, dtype=dtype).astype(np.float32)))
                n_quantized += 1
            else:
                out.write(data)
    print(f"ggml_quantize: wrote {out_path} ({n_quantized} tensors quantized to q8_0)")


if __name__ == "__main__":
    main()
