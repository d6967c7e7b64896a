#!/usr/bin/env python3
"""A real Deepgram-style live transcription server for the `deepgram` provider's tests:
WebSocket /v1/listen (Deepgram's streaming protocol: binary linear16 audio frames in,
{"type":"CloseStream"} to finish, "Results" JSON messages out, then close), with the text from
faster-whisper running the same Whisper base weights that .ci/model.sh installs. Not a canned
reply: the transcript is what the engine hears in the audio that arrived.

    deepgram_whisper_server.py PORT CT2_MODEL_DIR [--api-key KEY]

Checks "Authorization: Token KEY", encoding=linear16 and sample_rate=16000 in the query, and
answers interim results (is_final false) every ~2 s of audio when interim_results=true.
Prints "ready" on stdout once it listens."""
import asyncio
import json
import sys
import urllib.parse

import numpy as np
import websockets
from faster_whisper import WhisperModel

port = int(sys.argv[1])
model = WhisperModel(sys.argv[2], device="cpu", compute_type="int8", cpu_threads=1)
api_key = sys.argv[sys.argv.index("--api-key") + 1] if "--api-key" in sys.argv else None
lock = asyncio.Lock()


def transcribe(pcm, language):
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    segments, _ = model.transcribe(audio, language=language, beam_size=1, temperature=0.0,
                                   condition_on_previous_text=False, vad_filter=False)
    segments = list(segments)
    text = " ".join(s.text.strip() for s in segments)
    conf = float(np.mean([np.exp(s.avg_logprob) for s in segments])) if segments else 0.0
    return text, conf


def results(text, conf, start, duration, final):
    return json.dumps({
        "type": "Results", "channel_index": [0, 1], "start": start, "duration": duration,
        "is_final": final, "speech_final": final,
        "channel": {"alternatives": [{"transcript": text, "confidence": conf, "words": []}]},
    })


async def handler(ws):
    req = ws.request
    url = urllib.parse.urlparse(req.path)
    q = dict(urllib.parse.parse_qsl(url.query))
    if url.path != "/v1/listen":
        return await ws.close(1008, "not found")
    if api_key and req.headers.get("Authorization") != f"Token {api_key}":
        return await ws.close(1008, "bad credentials")
    if q.get("encoding") != "linear16" or q.get("sample_rate") != "16000":
        return await ws.close(1003, "linear16 at 16000 Hz only")
    language = q.get("language", "en")
    interim = q.get("interim_results") == "true"
    pcm = bytearray()
    next_interim = 64000  # bytes: 2 s of 16 kHz 16-bit audio
    async for message in ws:
        if isinstance(message, bytes):
            pcm.extend(message)
            if interim and len(pcm) >= next_interim:
                next_interim += 64000
                async with lock:
                    text, conf = await asyncio.to_thread(transcribe, bytes(pcm), language)
                await ws.send(results(text, conf, 0.0, len(pcm) / 32000, False))
            continue
        if json.loads(message).get("type") == "CloseStream":
            break
    async with lock:
        text, conf = await asyncio.to_thread(transcribe, bytes(pcm), language)
    await ws.send(results(text, conf, 0.0, len(pcm) / 32000, True))
    await ws.send(json.dumps({"type": "Metadata", "duration": len(pcm) / 32000, "channels": 1}))
    await ws.close()


async def main():
    async with websockets.serve(handler, "127.0.0.1", port, max_size=None):
        print("ready", flush=True)
        await asyncio.Future()


asyncio.run(main())
