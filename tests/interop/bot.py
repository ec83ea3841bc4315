"""A small Pipecat bot for interop tests: SmallWebRTC transport, echoes the
caller's audio back, and speaks RTVI (bot-ready after client-ready,
bot-started/stopped-speaking around the echo, a server-message per connection).

Serves the SmallWebRTC signaling routes on 127.0.0.1 with aiohttp (Pipecat's
own runner needs FastAPI, which this bot does not need):
  POST  /api/offer  {sdp, type, pc_id?, restart_pc?} -> {sdp, type, pc_id}
  PATCH /api/offer  {pc_id, candidates: [{candidate, sdp_mid, sdp_mline_index}]}

Prints "LISTENING <port>" on stdout once ready.
"""

import argparse
import asyncio
import sys

from aiohttp import web
from aiortc.sdp import candidate_from_sdp
from loguru import logger

from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.processors.frameworks.rtvi import RTVIServerMessageFrame
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

SAMPLE_RATE = 48000


class Echo(FrameProcessor):
    """Turns what the caller says into what the bot says."""

    async def process_frame(self, frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(
                OutputAudioRawFrame(
                    audio=frame.audio,
                    sample_rate=frame.sample_rate,
                    num_channels=frame.num_channels,
                )
            )
        else:
            await self.push_frame(frame, direction)


async def run_bot(connection: SmallWebRTCConnection):
    transport = SmallWebRTCTransport(
        webrtc_connection=connection,
        params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
    )
    pipeline = Pipeline([transport.input(), Echo(), transport.output()])
    task = PipelineTask(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE
        ),
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(transport, client):
        await task.queue_frame(RTVIServerMessageFrame(data={"echo": "ready"}))

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        await task.cancel()

    await PipelineRunner(handle_sigint=False).run(task)


connections: dict[str, SmallWebRTCConnection] = {}


async def offer(request: web.Request) -> web.Response:
    body = await request.json()
    pc_id = body.get("pc_id")
    if pc_id and pc_id in connections:
        connection = connections[pc_id]
        await connection.renegotiate(
            sdp=body["sdp"], type=body["type"], restart_pc=bool(body.get("restart_pc"))
        )
    else:
        connection = SmallWebRTCConnection()
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
        candidate = candidate_from_sdp(c["candidate"].removeprefix("candidate:"))
        candidate.sdpMid = c["sdp_mid"]
        candidate.sdpMLineIndex = c["sdp_mline_index"]
        await connection.add_ice_candidate(candidate)
    return web.Response(status=204)


async def main(port: int):
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    app = web.Application()
    app.router.add_post("/api/offer", offer)
    app.router.add_patch("/api/offer", patch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]
    print(f"LISTENING {bound}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=7860)
    asyncio.run(main(parser.parse_args().port))
