#!/usr/bin/env bash
# Records what a Pipecat bot (tests/interop/bot.py) sends on the data channel
# during a `kiosk-gateway call`, into fixtures/rtvi/pipecat-<version>/.
# See fixtures/rtvi/pipecat-1.14/README.md for what each recording is.
#
# Usage, from the repository root:
#   cargo build --bin kiosk-gateway
#   bash tests/interop/record-fixtures.sh [KIOSK_GATEWAY_BINARY]
# Python: $KIOSK_PIPECAT_PYTHON, else .venv-pipecat/bin/python.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${1:-${CARGO_TARGET_DIR:-$root/target}/debug/kiosk-gateway}"
python="${KIOSK_PIPECAT_PYTHON:-$root/.venv-pipecat/bin/python}"
version="$("$python" -c 'from importlib.metadata import version; print(version("pipecat-ai"))')"
out="$root/fixtures/rtvi/pipecat-${version%.*}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# The visitor: the four utterances of multi_utterance_16k.wav (ground truth
# in fixtures/audio/README.md), 1 s of its room noise before, 2 s after each
# (1 s after the last), at 48 kHz for `call`. tests/pipecat/interop_run.rs builds the
# same microphone for the daemon.
src="$root/fixtures/audio/multi_utterance_16k.wav"
cut() { sox "$src" "$work/$1.wav" trim "$2" "=$3"; }
cut lead 0 1.0
cut u1 1.0 3.73
cut u2 5.23 6.697
cut u3 8.697 9.912
cut u4 11.112 12.421
cut n15 3.73 5.23
cut n05 3.73 4.23
cut n10 3.73 4.73
sox "$work/n15.wav" "$work/n05.wav" "$work/pause.wav"
sox "$work"/{lead,u1,pause,u2,pause,u3,pause,u4,n10}.wav -r 48000 "$work/four_48k.wav"
# The fixture itself (pauses of 1.5, 2.0 and 1.2 s), at 48 kHz.
sox "$src" -r 48000 "$work/fixture_48k.wav"

# record NAME MIC SECONDS BOT-ARGS...
record() {
  local name="$1" mic="$2" seconds="$3"
  shift 3
  rm -f "$work/port" "$work/$name.jsonl"
  "$python" "$root/tests/interop/bot.py" --port 0 --record-rtvi "$work/$name.jsonl" "$@" \
    >"$work/port" 2>"$work/$name.bot.log" &
  local bot=$!
  for _ in $(seq 1 60); do [ -s "$work/port" ] && break; sleep 0.5; done
  local port
  port="$(awk '{print $2}' "$work/port")"
  "$bin" call --offer-url "http://127.0.0.1:$port/api/offer" --input "wav:$work/$mic" \
    --seconds "$seconds" --pause-ms 60000 --bind 127.0.0.1:0 --no-stun --json \
    >"$work/$name.call.json" 2>"$work/$name.call.log"
  kill "$bot"
  wait "$bot" || true
  cp "$work/$name.jsonl" "$out/$name.jsonl"
  echo "$name: $(wc -l <"$out/$name.jsonl") messages" >&2
}

# What tests/pipecat/interop_run.rs runs: turns end 0.6 s after the VAD stopped.
record four-turns four_48k.wav 18 --turn-stop speech-timeout --vad-stop-secs 0.4
# Pipecat's defaults: smart-turn v3 decides when a turn ends.
record smart-turn four_48k.wav 24
# The fixture's shorter pauses: the visitor talks over the bot's answers.
record barge-in fixture_48k.wav 17 --turn-stop speech-timeout --vad-stop-secs 0.4
