"""A Pipecat 1.14 bot for interop tests, built the way a stock Pipecat bot is.

Pipeline (Pipecat's own classes, fake services only where a cloud API would be):

    SmallWebRTCTransport.input()
    -> SegmentSTT          (SegmentedSTTService: one transcript per VAD segment)
    -> user aggregator     (LLMContextAggregatorPair, Silero VAD on the frames
                            the transport received, Pipecat's default turn
                            strategies: VAD start, smart-turn v3 stop)
    -> ScriptedLLM         (LLMService: "Reply N." " Thank you." per turn)
    -> WavTTS              (TTSService: plays a WAV per sentence)
    -> SmallWebRTCTransport.output()
    -> assistant aggregator

RTVI is what PipelineWorker adds by default in 1.14: its own RTVIProcessor
(bot-ready after client-ready) and RTVIObserver (every message the client
sees is made by Pipecat from the frames above). Nothing here writes an RTVI
message by hand.

Realism that matters for a client: Pipecat hears silence only through audio
frames. A client that sends no packets in pauses leaves the VAD in
"speaking". Stock 1.14 has a rescue for a muted microphone (the user
aggregator's `audio_idle_timeout`, 1.0 s, which forces a speech stop and
logs "no audio received while speaking"); it is off here unless
--audio-idle-timeout is given, so a client that goes quiet on the wire gets
no turns ended.

HTTP (aiohttp on 127.0.0.1; Pipecat's own runner needs FastAPI):
  POST  /api/offer  {sdp, type, pc_id?, restart_pc?} -> {sdp, type, pc_id}
  PATCH /api/offer  {pc_id, candidates: [{candidate, sdp_mid, sdp_mline_index}]}
  POST  /start      (Pipecat Cloud-like) any JSON body, e.g. {} or the daily
                    mode's {room_url, token, kiosk_id, ...} -> {"sessionId": UUID}
  POST|PATCH /sessions/{id}/api/offer   as /api/offer, for a started session
With --api-key KEY, /start and /sessions/... need `Authorization: Bearer KEY`
(else 401). --log PATH appends one JSON line per request: method, path,
status, authorization ("absent" | "valid" | "invalid"; never the key), and
for /start the session id and room_url.
--record-rtvi PATH appends every data-channel message the bot sends, as the
JSON text that went on the wire, one per line.

Prints "LISTENING <port>" on stdout once ready.
"""

import argparse
import asyncio
import dataclasses
import json
import sys
import uuid
import wave
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np
from aiohttp import web
from aiortc.sdp import candidate_from_sdp
from loguru import logger

from pipecat.audio.utils import create_stream_resampler
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings, STTSettings, TTSSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.services.tts_service import TTSService
from pipecat.transports.base_transport import TransportParams
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.utils.time import time_now_iso8601
from pipecat.workers.runner import WorkerRunner

HERE = Path(__file__).resolve().parent
DEFAULT_REPLY = HERE / "reply_48k.wav"

ARGS: argparse.Namespace


def speech_seconds(pcm: bytes, sample_rate: int) -> float:
    """Length of the speech in a segment: from the first to the last 20 ms
    frame louder than -45 dBFS (the segment carries up to 1 s of audio from
    before the VAD fired and the VAD's stop time after it)."""
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    n = sample_rate // 50
    frames = samples[: len(samples) // n * n].reshape(-1, n)
    if not len(frames):
        return 0.0
    rms = np.sqrt((frames**2).mean(axis=1)) / 32768.0
    loud = np.nonzero(rms > 10 ** (-45 / 20))[0]
    if not len(loud):
        return 0.0
    return (loud[-1] - loud[0] + 1) * 0.02


def settings(cls, **given):
    """A service's settings with every field a fake has no use for set to
    None, as Pipecat asks of services (it logs an error for NOT_GIVEN)."""
    values = {f.name: None for f in dataclasses.fields(cls) if f.init}
    values.update(given)
    return cls(**values)


class SegmentSTT(SegmentedSTTService):
    """Transcribes each VAD segment as "utterance N, S seconds"."""

    def __init__(self, **kwargs):
        super().__init__(trailing_silence_secs=0, settings=settings(STTSettings), **kwargs)
        self._count = 0

    @property
    def wants_wav_segments(self) -> bool:
        return False

    def can_generate_metrics(self) -> bool:
        return True

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        await self.start_processing_metrics()
        self._count += 1
        secs = speech_seconds(audio, self.sample_rate)
        await self.stop_processing_metrics()
        text = f"utterance {self._count}, {secs:.1f} seconds"
        logger.info(f"STT: {text} (segment {len(audio) / 2 / self.sample_rate:.2f} s)")
        yield TranscriptionFrame(text, self._user_id, time_now_iso8601())


class ScriptedLLM(LLMService):
    """Answers each user turn with two sentences, streamed in tokens."""

    def __init__(self, **kwargs):
        super().__init__(
            settings=settings(
                LLMSettings, filter_incomplete_user_turns=False, use_provider_thinking_default=False
            ),
            **kwargs,
        )
        self._turns = 0

    def can_generate_metrics(self) -> bool:
        return True

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            self._turns += 1
            await self.push_frame(LLMFullResponseStartFrame())
            await self.start_processing_metrics()
            await self.start_ttfb_metrics()
            for i, token in enumerate(["Reply", f" {self._turns}.", " Thank", " you."]):
                if i == 0:
                    await self.stop_ttfb_metrics()
                await self._push_llm_text(token)
            await self.stop_processing_metrics()
            await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)


class WavTTS(TTSService):
    """"Synthesizes" every sentence as the same recorded reply."""

    def __init__(self, reply: Path, **kwargs):
        # As Pipecat's HTTP TTS services (OpenAI, Kokoro, Piper): the base
        # class opens each audio context with TTSStartedFrame and closes it
        # with TTSStoppedFrame.
        super().__init__(
            settings=settings(TTSSettings),
            push_start_frame=True,
            push_stop_frames=True,
            **kwargs,
        )
        with wave.open(str(reply), "rb") as w:
            assert w.getnchannels() == 1 and w.getsampwidth() == 2, "mono 16-bit WAV"
            self._reply_rate = w.getframerate()
            self._reply = w.readframes(w.getnframes())
        self._resampler = create_stream_resampler()

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        await self.start_tts_usage_metrics(text)
        audio = await self._resampler.resample(self._reply, self._reply_rate, self.sample_rate)
        await self.stop_ttfb_metrics()
        chunk = self.sample_rate // 50 * 2 * 5  # 100 ms
        for i in range(0, len(audio), chunk):
            yield TTSAudioRawFrame(
                audio=audio[i : i + chunk],
                sample_rate=self.sample_rate,
                num_channels=1,
                context_id=context_id,
            )


class AudioRecorder(FrameProcessor):
    """Writes the audio frames the transport received to --record-audio
    (mono 16-bit WAV at the pipeline's input rate), and logs gaps between
    frames longer than 100 ms: Pipecat hears nothing in a gap."""

    def __init__(self, path: str, **kwargs):
        super().__init__(**kwargs)
        self._path = path
        self._wav = None
        self._last = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            now = asyncio.get_running_loop().time()
            if self._last is not None and now - self._last > 0.1:
                logger.info(f"no audio frames for {now - self._last:.2f} s")
            self._last = now
            if self._wav is None:
                self._wav = wave.open(self._path, "wb")
                self._wav.setnchannels(frame.num_channels)
                self._wav.setsampwidth(2)
                self._wav.setframerate(frame.sample_rate)
            self._wav.writeframes(frame.audio)
        await self.push_frame(frame, direction)

    async def cleanup(self):
        await super().cleanup()
        if self._wav is not None:
            self._wav.close()


class RecordingConnection(SmallWebRTCConnection):
    """A SmallWebRTC connection that also writes what it sends to --record-rtvi."""

    def send_app_message(self, message):
        logger.debug(f"data channel out: {json.dumps(message)}")
        if ARGS.record_rtvi:
            with open(ARGS.record_rtvi, "a") as f:
                f.write(json.dumps(message) + "\n")
        super().send_app_message(message)


async def run_bot(connection: SmallWebRTCConnection):
    transport = SmallWebRTCTransport(
        webrtc_connection=connection,
        params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
    )
    stt = SegmentSTT()
    llm = ScriptedLLM()
    tts = WavTTS(ARGS.reply)
    context = LLMContext([{"role": "system", "content": "You are a station kiosk."}])
    user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=ARGS.vad_stop_secs)),
            audio_idle_timeout=ARGS.audio_idle_timeout,
            # None: Pipecat's default (VAD start, smart-turn v3 stop).
            user_turn_strategies=(
                UserTurnStrategies(
                    stop=[
                        SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=ARGS.speech_timeout)
                    ]
                )
                if ARGS.turn_stop == "speech-timeout"
                else None
            ),
        ),
    )
    recorder = [AudioRecorder(ARGS.record_audio)] if ARGS.record_audio else []
    pipeline = Pipeline(
        [
            transport.input(),
            *recorder,
            stt,
            user_aggregator,
            llm,
            tts,
            transport.output(),
            assistant_aggregator,
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(enable_metrics=ARGS.metrics, enable_usage_metrics=ARGS.metrics),
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


connections: dict[str, SmallWebRTCConnection] = {}
sessions: dict[str, dict] = {}


async def offer(request: web.Request) -> web.Response:
    body = await request.json()
    pc_id = body.get("pc_id")
    if pc_id and pc_id in connections:
        connection = connections[pc_id]
        await connection.renegotiate(
            sdp=body["sdp"], type=body["type"], restart_pc=bool(body.get("restart_pc"))
        )
    else:
        connection = RecordingConnection()
        await connection.initialize(sdp=body["sdp"], type=body["type"])

        @connection.event_handler("closed")
        async def closed(conn):
            connections.pop(conn.pc_id, None)

        asyncio.create_task(run_bot(connection))
    answer = connection.get_answer()
    connections[answer["pc_id"]] = connection
    return web.json_response(answer)


async def patch(request: web.Request) -> web.Response:
    body = await request.json()
    connection = connections.get(body["pc_id"])
    if connection is None:
        return web.json_response({"detail": "Peer connection not found"}, status=404)
    for c in body["candidates"]:
        if c.get("candidate"):
            candidate = candidate_from_sdp(c["candidate"].removeprefix("candidate:"))
            candidate.sdpMid = c["sdp_mid"]
            candidate.sdpMLineIndex = c["sdp_mline_index"]
        else:
            candidate = None
        await connection.add_ice_candidate(candidate)
    return web.Response(status=204)


async def start(request: web.Request) -> web.Response:
    try:
        body = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError:
        return web.json_response({"error": "body is not JSON"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "body is not a JSON object"}, status=400)
    session_id = str(uuid.uuid4())
    sessions[session_id] = {"room_url": body.get("room_url")}
    request["log"].update(session_id=session_id, room_url=body.get("room_url"))
    return web.json_response({"sessionId": session_id})


async def session_offer(request: web.Request) -> web.Response:
    if request.match_info["session_id"] not in sessions:
        return web.json_response({"detail": "Session not found"}, status=404)
    if request.method == "PATCH":
        return await patch(request)
    return await offer(request)


def authorization(request: web.Request) -> str:
    value = request.headers.get("Authorization")
    if value is None:
        return "absent"
    return "valid" if ARGS.api_key and value == f"Bearer {ARGS.api_key}" else "invalid"


@web.middleware
async def gate(request: web.Request, handler) -> web.StreamResponse:
    entry = {
        "method": request.method,
        "path": request.path,
        "authorization": authorization(request),
    }
    request["log"] = entry
    guarded = request.path == "/start" or request.path.startswith("/sessions/")
    try:
        if guarded and ARGS.api_key and entry["authorization"] != "valid":
            response = web.json_response({"error": "unauthorized"}, status=401)
        else:
            response = await handler(request)
    except web.HTTPException as e:
        response = e
    entry["status"] = response.status
    if ARGS.log:
        with open(ARGS.log, "a") as f:
            f.write(json.dumps(entry) + "\n")
    return response


async def main():
    logger.remove()
    logger.add(sys.stderr, level=ARGS.log_level)
    app = web.Application(middlewares=[gate])
    app.router.add_post("/api/offer", offer)
    app.router.add_patch("/api/offer", patch)
    app.router.add_post("/start", start)
    app.router.add_post("/sessions/{session_id}/api/offer", session_offer)
    app.router.add_patch("/sessions/{session_id}/api/offer", session_offer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, ARGS.host, ARGS.port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]
    print(f"LISTENING {bound}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860, help="0 picks a free port")
    parser.add_argument("--api-key", help="bearer key /start and /sessions/... require")
    parser.add_argument("--log", help="append one JSON line per HTTP request here")
    parser.add_argument("--record-rtvi", help="append every data-channel message sent here")
    parser.add_argument(
        "--record-audio", help="write the audio the bot received here (WAV; one connection)"
    )
    parser.add_argument("--reply", type=Path, default=DEFAULT_REPLY, help="mono 16-bit WAV")
    parser.add_argument(
        "--audio-idle-timeout",
        type=float,
        default=0.0,
        help="end a user's speech after this long without audio frames "
        "(Pipecat 1.14's default is 1.0; 0, the default here, never does)",
    )
    parser.add_argument(
        "--turn-stop",
        choices=["smart-turn", "speech-timeout"],
        default="smart-turn",
        help="how a user turn ends: Pipecat's default, the smart-turn v3 model "
        "(it hears espeak's flat voice as unfinished and waits for more), or "
        "0.6 s after the VAD stopped (SpeechTimeoutUserTurnStopStrategy)",
    )
    parser.add_argument(
        "--speech-timeout",
        type=float,
        default=0.6,
        help="with --turn-stop speech-timeout: seconds after the VAD stopped (Pipecat's default 0.6)",
    )
    parser.add_argument(
        "--vad-stop-secs",
        type=float,
        default=0.2,
        help="Silero VAD stop_secs (Pipecat's default 0.2; the visitor fixture's "
        '"Hello there, I would like..." has a 160 ms pause at the comma)',
    )
    parser.add_argument("--metrics", action="store_true", help="enable Pipecat metrics")
    parser.add_argument("--log-level", default="INFO")
    ARGS = parser.parse_args()
    asyncio.run(main())
