//! A WebVTT reader for the transcripts Daily stores: cues with their times,
//! who spoke and what was said.
//!
//! Daily documents that stored transcripts are WebVTT files but not how a
//! cue names its speaker, so both common forms are read: a voice span
//! (`<v Name>text`) and a `Name: text` prefix. The file comes from
//! storage the kiosk does not control, so everything is bounded: its size,
//! the number of cues and the times. A block that is not a cue is skipped
//! and counted; only a file that is not WebVTT at all is an error.

use std::time::Duration;

/// Largest file read: an hour of speech is well under 1 MiB.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Most cues read from one file.
pub const MAX_CUES: usize = 20_000;
/// Cue times beyond this are taken as garbage (a session lasts minutes).
pub const MAX_TIME: Duration = Duration::from_secs(24 * 3600);
/// Longest `Name:` prefix taken as a speaker rather than as text.
const MAX_SPEAKER_CHARS: usize = 64;

/// One cue: a stretch of speech.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cue {
    /// When it starts, from the start of the transcript.
    pub start: Duration,
    /// When it ends.
    pub end: Duration,
    /// Who spoke, when the cue says.
    pub speaker: Option<String>,
    /// What was said, markup removed, lines joined with a space.
    pub text: String,
}

/// A parsed file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebVtt {
    /// The cues, in file order.
    pub cues: Vec<Cue>,
    /// Blocks that were neither cues nor NOTE/STYLE/REGION blocks, or cues
    /// with bad times or no text.
    pub skipped: usize,
}

/// Why a file cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebVttError {
    /// Over [`MAX_BYTES`].
    #[error("WebVTT file larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Not UTF-8, as WebVTT must be.
    #[error("WebVTT file is not UTF-8")]
    NotUtf8,
    /// It does not start with `WEBVTT`.
    #[error("not a WebVTT file (no WEBVTT header)")]
    MissingHeader,
    /// Over [`MAX_CUES`].
    #[error("WebVTT file has more than {limit} cues")]
    TooManyCues {
        /// The limit.
        limit: usize,
    },
}

/// Reads a WebVTT file: BOM, CRLF or CR line ends, NOTE, STYLE and REGION
/// blocks, cue identifiers and settings, multi-line cues.
pub fn parse(bytes: &[u8]) -> Result<WebVtt, WebVttError> {
    if bytes.len() > MAX_BYTES {
        return Err(WebVttError::TooLarge { limit: MAX_BYTES });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| WebVttError::NotUtf8)?;
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines = text.split('\n');
    let header = lines.next().unwrap_or_default();
    let after = header
        .strip_prefix("WEBVTT")
        .ok_or(WebVttError::MissingHeader)?;
    if !(after.is_empty() || after.starts_with([' ', '\t'])) {
        return Err(WebVttError::MissingHeader);
    }
    // The header block runs to the first blank line.
    for line in lines.by_ref() {
        if is_blank(line) {
            break;
        }
    }
    let mut vtt = WebVtt::default();
    let mut block: Vec<&str> = Vec::new();
    for line in lines.chain(std::iter::once("")) {
        if !is_blank(line) {
            block.push(line);
            continue;
        }
        if block.is_empty() {
            continue;
        }
        match read_block(&block) {
            Block::Cue(cue) => {
                if vtt.cues.len() == MAX_CUES {
                    return Err(WebVttError::TooManyCues { limit: MAX_CUES });
                }
                vtt.cues.push(cue);
            }
            Block::Other => {}
            Block::Bad => vtt.skipped += 1,
        }
        block.clear();
    }
    Ok(vtt)
}

fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

enum Block {
    Cue(Cue),
    /// NOTE, STYLE or REGION.
    Other,
    Bad,
}

fn read_block(block: &[&str]) -> Block {
    let first = block[0];
    if ["NOTE", "STYLE", "REGION"].iter().any(|kw| {
        first
            .strip_prefix(kw)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    }) {
        return Block::Other;
    }
    // An optional identifier line comes before the timings.
    let (timing, payload) = if first.contains("-->") {
        (first, &block[1..])
    } else if block.len() > 1 && block[1].contains("-->") {
        (block[1], &block[2..])
    } else {
        return Block::Bad;
    };
    let Some((start, end)) = timings(timing) else {
        return Block::Bad;
    };
    let (speaker, text) = payload_text(payload);
    if text.is_empty() {
        return Block::Bad;
    }
    Block::Cue(Cue {
        start,
        end,
        speaker,
        text,
    })
}

/// `start --> end [settings]`, both within [`MAX_TIME`] and in order.
fn timings(line: &str) -> Option<(Duration, Duration)> {
    let (start, rest) = line.split_once("-->")?;
    let end = rest.split_whitespace().next()?;
    let start = timestamp(start.trim())?;
    let end = timestamp(end)?;
    (start <= end && end <= MAX_TIME).then_some((start, end))
}

/// `[hh:]mm:ss.ttt`.
fn timestamp(s: &str) -> Option<Duration> {
    let (clock, millis) = s.split_once('.')?;
    let parts: Vec<&str> = clock.split(':').collect();
    let (hours, minutes, seconds) = match parts.as_slice() {
        [m, s] => ("0", *m, *s),
        // More than 6 hour digits cannot be within MAX_TIME, and could overflow.
        [h, m, s] if h.len() >= 2 && h.len() <= 6 => (*h, *m, *s),
        _ => return None,
    };
    let digits = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit());
    if !hours.bytes().all(|b| b.is_ascii_digit())
        || !digits(minutes, 2)
        || !digits(seconds, 2)
        || !digits(millis, 3)
    {
        return None;
    }
    let (h, m, sec, ms): (u64, u64, u64, u64) = (
        hours.parse().ok()?,
        minutes.parse().ok()?,
        seconds.parse().ok()?,
        millis.parse().ok()?,
    );
    if m > 59 || sec > 59 {
        return None;
    }
    Some(Duration::from_millis(((h * 60 + m) * 60 + sec) * 1000 + ms))
}

/// The speaker (first voice span, else a `Name: ` prefix) and the text
/// without markup.
fn payload_text(lines: &[&str]) -> (Option<String>, String) {
    let joined = lines.join("\n");
    let voice = voice_name(&joined);
    let text = lines
        .iter()
        .map(|l| decode_entities(&strip_tags(l)).trim().to_string())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if voice.is_some() {
        return (voice, text);
    }
    match text.split_once(':') {
        Some((name, rest))
            if rest.starts_with(' ')
                && !name.trim().is_empty()
                && name.chars().count() <= MAX_SPEAKER_CHARS
                && !rest.trim().is_empty() =>
        {
            (Some(name.trim().to_string()), rest.trim().to_string())
        }
        _ => (None, text),
    }
}

/// The annotation of the first `<v Name>` or `<v.class Name>` span.
fn voice_name(payload: &str) -> Option<String> {
    let start = payload.find("<v")?;
    let tag = &payload[start + 2..];
    let close = tag.find('>')?;
    let tag = &tag[..close];
    // `<v.loud Name>`: classes come before the first space.
    if !(tag.starts_with(' ') || tag.starts_with('\t') || tag.starts_with('.')) {
        return None;
    }
    let (_, name) = tag.split_once([' ', '\t'])?;
    let name = decode_entities(name.trim());
    (!name.is_empty()).then_some(name)
}

fn strip_tags(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_tag = false;
    for c in line.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", " ")
        .replace("&lrm;", "\u{200E}")
        .replace("&rlm;", "\u{200F}")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn reads_voice_spans_and_prefixes() {
        let vtt = parse(
            b"WEBVTT\n\n00:00:01.000 --> 00:00:02.500\n<v Lobby kiosk>Hello there</v>\n\n\
              00:02.600 --> 00:04.000\nAssistant: Hi, how can I help?\n",
        )
        .unwrap();
        assert_eq!(
            vtt.cues,
            [
                Cue {
                    start: ms(1000),
                    end: ms(2500),
                    speaker: Some("Lobby kiosk".into()),
                    text: "Hello there".into()
                },
                Cue {
                    start: ms(2600),
                    end: ms(4000),
                    speaker: Some("Assistant".into()),
                    text: "Hi, how can I help?".into()
                },
            ]
        );
        assert_eq!(vtt.skipped, 0);
    }

    #[test]
    fn voice_span_with_class_and_entities() {
        let vtt =
            parse(b"WEBVTT\n\n00:01.000 --> 00:02.000\n<v.loud Ann &amp; Bo>Fish &lt;3</v>\n")
                .unwrap();
        assert_eq!(vtt.cues[0].speaker.as_deref(), Some("Ann & Bo"));
        assert_eq!(vtt.cues[0].text, "Fish <3");
    }

    #[test]
    fn multi_line_cues_identifiers_and_settings() {
        let vtt = parse(
            b"WEBVTT - stored transcript\nKind: captions\n\n1\n\
              00:00:05.000 --> 00:00:07.000 align:start line:0\n<v Bot>first line\nsecond <i>line</i>\n",
        )
        .unwrap();
        assert_eq!(vtt.cues.len(), 1);
        assert_eq!(vtt.cues[0].text, "first line second line");
        assert_eq!(vtt.cues[0].speaker.as_deref(), Some("Bot"));
    }

    #[test]
    fn note_style_and_region_blocks_are_not_cues() {
        let vtt = parse(
            b"WEBVTT\n\nNOTE written by the recogniser\n00:00.000 --> 00:01.000 is in the note\n\n\
              STYLE\n::cue { color: red }\n\nREGION\nid:fred\n\n00:01.000 --> 00:02.000\nBot: ok\n",
        )
        .unwrap();
        assert_eq!(vtt.cues.len(), 1);
        assert_eq!(vtt.skipped, 0);
    }

    #[test]
    fn bom_and_crlf() {
        let vtt =
            parse(b"\xEF\xBB\xBFWEBVTT\r\n\r\n00:01.000 --> 00:02.000\r\nBot: hi\r\n").unwrap();
        assert_eq!(vtt.cues[0].text, "hi");
        let cr = parse(b"WEBVTT\r\r00:01.000 --> 00:02.000\rBot: hi\r").unwrap();
        assert_eq!(cr.cues.len(), 1);
    }

    #[test]
    fn text_with_a_colon_is_not_always_a_speaker() {
        let vtt = parse(
            b"WEBVTT\n\n00:01.000 --> 00:02.000\nMeet at 10:30 please\n\n\
              00:03.000 --> 00:04.000\nhttps://example.org is the site\n",
        )
        .unwrap();
        assert_eq!(vtt.cues[0].speaker, None);
        assert_eq!(vtt.cues[1].speaker, None);
        assert_eq!(vtt.cues[1].text, "https://example.org is the site");
    }

    #[test]
    fn missing_header_and_bad_encoding_are_errors() {
        assert_eq!(parse(b""), Err(WebVttError::MissingHeader));
        assert_eq!(
            parse(b"00:01.000 --> 00:02.000\nhi\n"),
            Err(WebVttError::MissingHeader)
        );
        assert_eq!(parse(b"WEBVTTX\n\n"), Err(WebVttError::MissingHeader));
        assert_eq!(
            parse(b"<html>error</html>"),
            Err(WebVttError::MissingHeader)
        );
        assert_eq!(parse(b"WEBVTT\n\n\xff\xfe"), Err(WebVttError::NotUtf8));
    }

    #[test]
    fn garbage_blocks_and_absurd_times_are_skipped() {
        let vtt = parse(
            b"WEBVTT\n\njust some words\n\n\
              99999999:00:00.000 --> 99999999:00:01.000\nBot: too late\n\n\
              30:00:00.000 --> 30:00:01.000\nBot: past a day\n\n\
              00:05.000 --> 00:01.000\nBot: backwards\n\n\
              00:61.000 --> 00:62.000\nBot: no such second\n\n\
              00:01.000 --> 00:02.000\n<v Bot></v>\n\n\
              00:01.000 --> 00:02.000\nBot: fine\n",
        )
        .unwrap();
        assert_eq!(vtt.cues.len(), 1);
        assert_eq!(vtt.cues[0].text, "fine");
        assert_eq!(vtt.skipped, 6);
    }

    #[test]
    fn size_and_cue_count_are_bounded() {
        let big = vec![b'a'; MAX_BYTES + 1];
        assert_eq!(parse(&big), Err(WebVttError::TooLarge { limit: MAX_BYTES }));
        let mut many = String::from("WEBVTT\n\n");
        for _ in 0..=MAX_CUES {
            many.push_str("00:01.000 --> 00:02.000\nx\n\n");
        }
        assert_eq!(
            parse(many.as_bytes()),
            Err(WebVttError::TooManyCues { limit: MAX_CUES })
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_random_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_on_random_text_after_a_header(
            body in "[0-9:.\\-> <>/vNOTE\n\r\tA-Za-z&;]{0,600}"
        ) {
            let vtt = format!("WEBVTT\n\n{body}");
            if let Ok(v) = parse(vtt.as_bytes()) {
                for cue in v.cues {
                    proptest::prop_assert!(cue.start <= cue.end && cue.end <= MAX_TIME);
                    proptest::prop_assert!(!cue.text.is_empty());
                }
            }
        }
    }
}
