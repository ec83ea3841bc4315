"""A minimal aiortc client making the call `kiosk-gateway call` makes.

The yardstick for `call`'s CPU and memory (scripts/measure-call): the same
SmallWebRTC offer to a Pipecat bot's /api/offer, the same audio sent the
same way, and the bot's reply received and decoded, written in the plainest
aiortc a Python client would use.

  python aiortc_call.py --offer-url URL --input WAV [--seconds S] [--pause-ms MS]

Like `call`: a data channel "rtvi" (ordered) that sends RTVI client-ready
once open; the input WAV (16-bit PCM, any rate, mono) sent as one 20 ms
Opus packet every 20 ms for the whole call: the file, then `pause` of
near-silence (uniform noise at -70 dBFS RMS), over and over; every packet
the bot sends decoded (aiortc decodes what `recv()` hands out). No STUN
server. Prints a JSON summary on stdout at the end: whether bot-ready came,
the user and bot transcripts, and the milliseconds of audio received.
"""

import argparse
import asyncio
import fractions
import json
import time
import wave

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

FRAME_SECONDS = 0.020
NOISE_FLOOR_DBFS = -70.0


def call_audio(path: str, pause_ms: int) -> tuple[int, np.ndarray]:
    """One repetition of what is sent: the file padded to whole frames, then the pause."""
    with wave.open(path) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise SystemExit(f"{path}: mono 16-bit PCM expected")
        rate = w.getframerate()
        speech = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    frame = int(rate * FRAME_SECONDS)
    speech_frames = -(-len(speech) // frame)
    pause_frames = pause_ms // int(FRAME_SECONDS * 1000)
    total = (speech_frames + pause_frames) * frame
    rng = np.random.default_rng(0x9E3779B9)
    amplitude = 32768 * 10 ** (NOISE_FLOOR_DBFS / 20) * 3**0.5
    out = rng.uniform(-amplitude, amplitude, total).astype(np.int16)
    out[: len(speech)] = speech
    return rate, out


class LoopedAudio(MediaStreamTrack):
    """The call's audio, 20 ms a frame, paced to real time."""

    kind = "audio"

    def __init__(self, rate: int, samples: np.ndarray):
        super().__init__()
        self.rate = rate
        self.samples = samples
        self.frame = int(rate * FRAME_SECONDS)
        self.pts = 0
        self.start = None

    async def recv(self) -> AudioFrame:
        if self.start is None:
            self.start = time.monotonic()
        else:
            wait = self.start + self.pts / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        at = self.pts % len(self.samples)
        chunk = self.samples[at : at + self.frame]
        frame = AudioFrame(format="s16", layout="mono", samples=self.frame)
        frame.planes[0].update(chunk.tobytes())
        frame.sample_rate = self.rate
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, self.rate)
        self.pts += self.frame
        return frame


async def receive(track: MediaStreamTrack, heard: dict) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        heard["samples"] += frame.samples
        heard["rate"] = frame.sample_rate


async def main(args: argparse.Namespace) -> dict:
    rate, samples = call_audio(args.input, args.pause_ms)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    summary = {"bot_ready": False, "transcripts": [], "audio_received_ms": 0}
    heard = {"samples": 0, "rate": 48000}
    receivers = []

    dc = pc.createDataChannel("rtvi", ordered=True)

    @dc.on("open")
    def on_open():
        dc.send(
            json.dumps(
                {
                    "label": "rtvi-ai",
                    "type": "client-ready",
                    "id": "1",
                    "data": {"version": "2.0.0", "about": {"library": "aiortc-call"}},
                }
            )
        )

    @dc.on("message")
    def on_message(message):
        msg = json.loads(message)
        kind, data = msg.get("type"), msg.get("data") or {}
        if kind == "bot-ready":
            summary["bot_ready"] = True
        elif kind == "user-transcription" and data.get("final"):
            summary["transcripts"].append({"role": "user", "text": data.get("text")})
        elif kind == "bot-output" and data.get("spoken") and data.get("aggregated_by") == "sentence":
            summary["transcripts"].append({"role": "bot", "text": data.get("text")})

    @pc.on("track")
    def on_track(track):
        if track.kind == "audio":
            receivers.append(asyncio.ensure_future(receive(track, heard)))

    pc.addTrack(LoopedAudio(rate, samples))
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        body = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        async with http.post(args.offer_url, json=body) as response:
            response.raise_for_status()
            answer = await response.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    await asyncio.sleep(args.seconds)
    await pc.close()
    for task in receivers:
        task.cancel()
    summary["audio_received_ms"] = heard["samples"] * 1000 // heard["rate"]
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--offer-url", required=True)
    parser.add_argument("--input", required=True, help="mono 16-bit PCM WAV")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pause-ms", type=int, default=1500)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
