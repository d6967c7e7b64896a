#!/usr/bin/env python3
"""A real OpenAI-compatible transcription server for the `openai` provider's tests:
POST /v1/audio/transcriptions (multipart/form-data: file, model, language, response_format)
answered by faster-whisper running the same Whisper base weights that .ci/model.sh installs
(the CTranslate2 model in its cache), greedy, on the CPU. Not a canned reply: the text is
what the engine hears.

    openai_whisper_server.py PORT CT2_MODEL_DIR [--api-key KEY] [--fail-first N]

--fail-first N answers the first N requests with 503, to exercise the client's retries.
Prints "ready" on stdout once it listens."""
import email.parser
import email.policy
import io
import json
import math
import sys
import threading
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from faster_whisper import WhisperModel

port = int(sys.argv[1])
model_dir = sys.argv[2]
api_key = sys.argv[sys.argv.index("--api-key") + 1] if "--api-key" in sys.argv else None
fail_first = int(sys.argv[sys.argv.index("--fail-first") + 1]) if "--fail-first" in sys.argv else 0
model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=1)
lock = threading.Lock()
state = {"requests": 0}


def parts(content_type, body):
    """Form fields of a multipart/form-data body: name -> bytes."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        out[name] = part.get_payload(decode=True)
    return out


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, doc):
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with lock:
            state["requests"] += 1
            n = state["requests"]
        if self.path != "/v1/audio/transcriptions":
            return self.reply(404, {"error": {"message": "not found"}})
        if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
            return self.reply(401, {"error": {"message": "bad key"}})
        if n <= fail_first:
            return self.reply(503, {"error": {"message": "warming up"}})
        form = parts(self.headers.get("Content-Type", ""), body)
        with wave.open(io.BytesIO(form["file"])) as w:
            assert w.getsampwidth() == 2 and w.getnchannels() == 1
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        assert rate == 16000, rate
        audio = pcm.astype(np.float32) / 32768.0
        language = (form.get("language") or b"en").decode() or None
        with lock:  # one decode at a time: the box has two cores
            segments, _ = model.transcribe(
                audio, language=language, beam_size=1, temperature=0.0,
                condition_on_previous_text=False, vad_filter=False,
            )
            segments = list(segments)
        text = " ".join(s.text.strip() for s in segments)
        if (form.get("response_format") or b"json") == b"verbose_json":
            return self.reply(200, {
                "text": text,
                "language": language,
                "duration": len(audio) / 16000,
                "segments": [
                    {"start": s.start, "end": s.end, "text": s.text, "avg_logprob": s.avg_logprob}
                    for s in segments
                ],
            })
        self.reply(200, {"text": text})


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("ready", flush=True)
server.serve_forever()
