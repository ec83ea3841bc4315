//! Sound devices through cpal: listing them, finding the configured one and
//! choosing its stream format.

use cpal::traits::{DeviceTrait, HostTrait};
use cpal::{
    BufferSize, Device, SampleFormat, StreamConfig, SupportedBufferSize, SupportedStreamConfigRange,
};
use serde::Serialize;
use tracing::debug;

use super::AudioError;
use super::settings::DeviceSpec;
use super::units::SampleRate;

/// Capture or playback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A microphone.
    Input,
    /// A speaker.
    Output,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Input => "input",
            Direction::Output => "output",
        })
    }
}

/// One device as `kiosk-gateway devices` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// The host's identifier (ALSA PCM name); usable as `audio.input`/`audio.output`.
    pub id: String,
    /// Human-readable name; a unique part of it also selects the device.
    pub name: String,
    /// Microphone or speaker.
    pub direction: Direction,
    /// Whether it is the host's default device.
    pub is_default: bool,
    /// Rate and channels the device prefers, when it can be asked.
    pub default_rate_hz: Option<u32>,
    /// Channels the device prefers.
    pub default_channels: Option<u16>,
    /// Lowest sample rate it supports.
    pub min_rate_hz: Option<u32>,
    /// Highest sample rate it supports.
    pub max_rate_hz: Option<u32>,
    /// Most channels it supports.
    pub max_channels: Option<u16>,
}

/// `devices --json` output.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeviceList {
    /// Microphones.
    pub inputs: Vec<DeviceInfo>,
    /// Speakers.
    pub outputs: Vec<DeviceInfo>,
}

impl DeviceList {
    /// The list as technicians read it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (title, list) in [("Inputs", &self.inputs), ("Outputs", &self.outputs)] {
            out.push_str(&format!("{title}:\n"));
            if list.is_empty() {
                out.push_str("  (none)\n");
            }
            for d in list {
                let rates = match (d.min_rate_hz, d.max_rate_hz) {
                    (Some(lo), Some(hi)) if lo == hi => format!("{lo} Hz"),
                    (Some(lo), Some(hi)) => format!("{lo}-{hi} Hz"),
                    _ => "rates unknown".to_owned(),
                };
                let channels = d
                    .max_channels
                    .map_or("channels unknown".to_owned(), |c| format!("up to {c} ch"));
                out.push_str(&format!(
                    "  {}{}  [{}]  {rates}, {channels}\n",
                    if d.is_default { "* " } else { "" },
                    d.name,
                    d.id
                ));
            }
        }
        out
    }
}

fn device_id(device: &Device) -> String {
    device.id().map(|id| id.id().to_owned()).unwrap_or_default()
}

fn device_name(device: &Device) -> String {
    device
        .description()
        .map(|d| d.name().to_owned())
        .unwrap_or_else(|_| device_id(device))
}

fn ranges(device: &Device, direction: Direction) -> Vec<SupportedStreamConfigRange> {
    let result = match direction {
        Direction::Input => device.supported_input_configs().map(|c| c.collect()),
        Direction::Output => device.supported_output_configs().map(|c| c.collect()),
    };
    result.unwrap_or_default()
}

fn describe(device: &Device, direction: Direction, default_id: Option<&str>) -> DeviceInfo {
    let id = device_id(device);
    let default = match direction {
        Direction::Input => device.default_input_config(),
        Direction::Output => device.default_output_config(),
    }
    .ok();
    let ranges = ranges(device, direction);
    DeviceInfo {
        is_default: default_id == Some(id.as_str()),
        name: device_name(device),
        id,
        direction,
        default_rate_hz: default.as_ref().map(|c| c.sample_rate()),
        default_channels: default.as_ref().map(|c| c.channels()),
        min_rate_hz: ranges.iter().map(|r| r.min_sample_rate()).min(),
        max_rate_hz: ranges.iter().map(|r| r.max_sample_rate()).max(),
        max_channels: ranges.iter().map(|r| r.channels()).max(),
    }
}

/// Lists the host's inputs and outputs.
///
/// alsa-lib reports missing cards, PulseAudio or JACK on stderr while
/// probing; those messages are captured and logged at debug level instead
/// so a technician's listing stays readable.
pub fn list_devices() -> Result<DeviceList, AudioError> {
    let (list, messages) = with_alsa_messages(list_devices_quietly);
    if let Some(messages) = messages {
        debug!(alsa_lib = %messages, "alsa-lib messages while listing devices");
    }
    list
}

fn list_devices_quietly() -> Result<DeviceList, AudioError> {
    let host = cpal::default_host();
    let default_in = host.default_input_device().map(|d| device_id(&d));
    let default_out = host.default_output_device().map(|d| device_id(&d));
    let mut list = DeviceList::default();
    for device in host.devices().map_err(AudioError::Device)? {
        if device.supports_input() {
            list.inputs
                .push(describe(&device, Direction::Input, default_in.as_deref()));
        }
        if device.supports_output() {
            list.outputs
                .push(describe(&device, Direction::Output, default_out.as_deref()));
        }
    }
    Ok(list)
}

/// Runs `f` with alsa-lib's diagnostics, which it would otherwise print to
/// stderr, captured on this thread; returns them condensed to one line
/// (the first and the last distinct message, which name the cause and
/// the PCM that failed) so they can go into a structured log record.
pub fn with_alsa_messages<T>(f: impl FnOnce() -> T) -> (T, Option<String>) {
    let Ok(buffer) = alsa::Output::local_error_handler() else {
        return (f(), None);
    };
    let value = f();
    let text = buffer.borrow().to_string();
    (value, condense_alsa(&text))
}

fn condense_alsa(text: &str) -> Option<String> {
    let mut distinct: Vec<&str> = Vec::new();
    for line in text.lines() {
        // "snd_pcm_open_noupdate: Unknown PCM default"
        let message = line.trim();
        if !message.is_empty() && !distinct.contains(&message) {
            distinct.push(message);
        }
    }
    match distinct.as_slice() {
        [] => None,
        [only] => Some((*only).to_string()),
        [first, .., last] => Some(format!("{first} ... {last}")),
    }
}

/// Finds the configured device: the default, an exact id or name, or a
/// unique part of a name.
pub fn find_device(spec: &DeviceSpec, direction: Direction) -> Result<Device, AudioError> {
    let host = cpal::default_host();
    let not_found = |detail: String| AudioError::DeviceNotFound { direction, detail };
    let wanted = match spec {
        DeviceSpec::Default => {
            let device = match direction {
                Direction::Input => host.default_input_device(),
                Direction::Output => host.default_output_device(),
            };
            return device.ok_or_else(|| not_found("no default device".into()));
        }
        DeviceSpec::Named(name) => name,
        DeviceSpec::Wav(path) => {
            return Err(not_found(format!("{} is a WAV file", path.display())));
        }
        DeviceSpec::Disabled => return Err(not_found("disabled in the configuration".into())),
    };
    let candidates: Vec<Device> = host
        .devices()
        .map_err(AudioError::Device)?
        .filter(|d| match direction {
            Direction::Input => d.supports_input(),
            Direction::Output => d.supports_output(),
        })
        .collect();
    if let Some(exact) = candidates
        .iter()
        .find(|d| &device_id(d) == wanted || &device_name(d) == wanted)
    {
        return Ok(exact.clone());
    }
    let partial: Vec<&Device> = candidates
        .iter()
        .filter(|d| {
            device_id(d).contains(wanted.as_str()) || device_name(d).contains(wanted.as_str())
        })
        .collect();
    match partial.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(not_found(format!("no device matches {wanted:?}"))),
        many => Err(not_found(format!(
            "{wanted:?} matches several devices: {}",
            many.iter()
                .map(|d| device_id(d))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Sample formats the engine converts in its callbacks.
fn format_rank(format: SampleFormat) -> Option<u8> {
    match format {
        SampleFormat::I16 => Some(0),
        SampleFormat::F32 => Some(1),
        _ => None,
    }
}

/// The stream format the engine will use with a device.
#[derive(Clone, Debug)]
pub struct ChosenConfig {
    /// Rate, channels and buffer size.
    pub config: StreamConfig,
    /// Sample format.
    pub format: SampleFormat,
}

impl ChosenConfig {
    /// The stream's sample rate.
    pub fn rate(&self) -> SampleRate {
        SampleRate(self.config.sample_rate)
    }
}

/// Picks the best supported format: 48 kHz when offered (no resampling for
/// Opus), otherwise the device's preferred rate; mono when offered,
/// otherwise the fewest channels (downmixed or duplicated in the callback);
/// 16-bit integer before float, as USB audio delivers natively.
pub fn choose_config(device: &Device, direction: Direction) -> Result<ChosenConfig, AudioError> {
    // A device that cannot list its formats (no card behind "default", a
    // busy or vanished PCM) says why; reporting that as "no usable format"
    // would send a technician looking in the wrong place.
    let ranges: Vec<SupportedStreamConfigRange> = match direction {
        Direction::Input => device.supported_input_configs().map(|c| c.collect()),
        Direction::Output => device.supported_output_configs().map(|c| c.collect()),
    }
    .map_err(AudioError::Device)?;
    let default_rate = match direction {
        Direction::Input => device.default_input_config(),
        Direction::Output => device.default_output_config(),
    }
    .map(|c| c.sample_rate())
    .unwrap_or(SampleRate::OPUS.hz());
    let best = ranges
        .into_iter()
        .filter_map(|r| format_rank(r.sample_format()).map(|rank| (rank, r)))
        .min_by_key(|(rank, r)| (!r.contains_rate(SampleRate::OPUS.hz()), r.channels(), *rank))
        .map(|(_, r)| r)
        .ok_or(AudioError::NoUsableFormat { direction })?;
    let rate = if best.contains_rate(SampleRate::OPUS.hz()) {
        SampleRate::OPUS.hz()
    } else if best.contains_rate(default_rate) {
        default_rate
    } else {
        best.max_sample_rate()
    };
    let supported = best.with_sample_rate(rate);
    let mut config = supported.config();
    // Ask for 10 ms callbacks, the DSP tick, where the device allows it:
    // shorter device buffers are less latency and a quicker barge-in.
    let ten_ms = SampleRate(rate).samples_in(super::units::FRAME_MS) as u32;
    if let SupportedBufferSize::Range { min, max } = supported.buffer_size()
        && (*min..=*max).contains(&ten_ms)
    {
        config.buffer_size = BufferSize::Fixed(ten_ms);
    }
    Ok(ChosenConfig {
        format: supported.sample_format(),
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::condense_alsa;

    #[test]
    fn alsa_chatter_is_condensed_to_its_cause_and_outcome() {
        let text = "parse_card: cannot find card '0'\n\
            _snd_config_evaluate: function snd_func_card_inum returned error: No such file or directory\n\
            parse_card: cannot find card '0'\n\
            snd_pcm_open_noupdate: Unknown PCM default\n";
        assert_eq!(
            condense_alsa(text).as_deref(),
            Some("parse_card: cannot find card '0' ... snd_pcm_open_noupdate: Unknown PCM default")
        );
        assert_eq!(condense_alsa("\n"), None);
        assert_eq!(
            condense_alsa("snd_pcm_open: Unknown PCM x\n").as_deref(),
            Some("snd_pcm_open: Unknown PCM x")
        );
    }
}
