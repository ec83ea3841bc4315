//! SIP messages on the wire: a UDP datagram parsed into a start line,
//! headers and body (with `ezk-sip-types`), and requests and responses
//! printed back. Whatever a peer sends, parsing ends in a message or an
//! error, never a panic.

use std::fmt::Write as _;

use bytes::Bytes;
use ezk_sip_types::header::typed::{CSeq, CallID, ContentLength, FromTo, Via};
use ezk_sip_types::msg::{Line, MessageLine, PullParser};
use ezk_sip_types::parse::Parse;
use ezk_sip_types::{Headers, Method, Name, StatusCode};

/// Largest datagram taken as a SIP message. SIP over UDP keeps messages
/// under the path MTU (RFC 3261 section 18.1.1); anything much larger from
/// a peer is not a message worth parsing.
pub const MAX_MESSAGE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("datagram of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("message head is not UTF-8")]
    NotUtf8,
    #[error("message head does not end")]
    Incomplete,
    #[error("malformed start line")]
    StartLine,
    #[error("malformed header line")]
    HeaderLine,
    #[error("body shorter than its Content-Length")]
    ShortBody,
    #[error("missing or malformed {0} header")]
    Header(&'static str),
}

/// What one datagram on the SIP port held.
#[derive(Debug)]
pub enum Datagram {
    /// A CRLF keep-alive (RFC 5626 section 3.5.1).
    KeepAlive,
    Message(Box<SipMessage>),
}

/// A parsed request or response.
#[derive(Debug)]
pub struct SipMessage {
    pub line: MessageLine,
    pub headers: Headers,
    pub body: Bytes,
}

impl SipMessage {
    pub fn parse(data: &[u8]) -> Result<Datagram, MessageError> {
        if data.len() > MAX_MESSAGE {
            return Err(MessageError::TooLarge(data.len()));
        }
        if !data.is_empty() && data.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            return Ok(Datagram::KeepAlive);
        }
        let buffer = Bytes::copy_from_slice(data);
        let mut parser = PullParser::new(&buffer, 0);
        let mut line = None;
        let mut headers = Headers::new();
        for item in &mut parser {
            let text = item.map_err(|_| MessageError::Incomplete)?;
            let text = std::str::from_utf8(text).map_err(|_| MessageError::NotUtf8)?;
            if line.is_none() {
                let (_, parsed) =
                    MessageLine::parse(&buffer)(text).map_err(|_| MessageError::StartLine)?;
                line = Some(parsed);
            } else {
                let (_, header) =
                    Line::parse(&buffer, text).map_err(|_| MessageError::HeaderLine)?;
                headers.insert(header.name, header.value);
            }
        }
        let line = line.ok_or(MessageError::StartLine)?;
        let head_end = parser.head_end().min(buffer.len());
        let body = match headers.try_get_named::<ContentLength>() {
            Some(Ok(ContentLength(0))) => Bytes::new(),
            Some(Ok(ContentLength(len))) => {
                let end = head_end
                    .checked_add(len)
                    .filter(|&end| end <= buffer.len())
                    .ok_or(MessageError::ShortBody)?;
                buffer.slice(head_end..end)
            }
            Some(Err(_)) => return Err(MessageError::Header("Content-Length")),
            // Over UDP the datagram ends the body.
            None => buffer.slice(head_end..),
        };
        Ok(Datagram::Message(Box::new(Self {
            line,
            headers,
            body,
        })))
    }

    pub fn status(&self) -> Option<u16> {
        match &self.line {
            MessageLine::Response(status) => Some(status.code.into_u16()),
            MessageLine::Request(_) => None,
        }
    }

    pub fn method(&self) -> Option<&Method> {
        self.line.request_method()
    }

    pub fn reason(&self) -> String {
        match &self.line {
            MessageLine::Response(status) => status
                .reason
                .as_ref()
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default(),
            MessageLine::Request(_) => String::new(),
        }
    }

    pub fn cseq(&self) -> Result<CSeq, MessageError> {
        self.headers
            .get_named::<CSeq>()
            .map_err(|_| MessageError::Header("CSeq"))
    }

    pub fn call_id(&self) -> Result<String, MessageError> {
        self.headers
            .get_named::<CallID>()
            .map(|id| id.0.as_str().to_owned())
            .map_err(|_| MessageError::Header("Call-ID"))
    }

    /// The branch of the topmost Via: what ties a response to its request.
    pub fn branch(&self) -> Result<String, MessageError> {
        let via = self
            .headers
            .get_named::<Via>()
            .map_err(|_| MessageError::Header("Via"))?;
        via.params
            .get_val("branch")
            .map(|b| b.as_str().to_owned())
            .ok_or(MessageError::Header("Via"))
    }

    pub fn to_tag(&self) -> Result<Option<String>, MessageError> {
        self.tag(Name::TO, "To")
    }

    pub fn sender_tag(&self) -> Result<Option<String>, MessageError> {
        self.tag(Name::FROM, "From")
    }

    fn tag(&self, name: Name, label: &'static str) -> Result<Option<String>, MessageError> {
        self.headers
            .get::<FromTo>(name)
            .map(|h| h.tag.map(|t| t.as_str().to_owned()))
            .map_err(|_| MessageError::Header(label))
    }

    /// The first raw value of a header, as sent.
    pub fn raw(&self, name: &Name) -> Option<&str> {
        self.headers.get_raw(name).next().map(|v| v.as_str())
    }

    /// Every raw value of a header, in order, with comma-joined values split
    /// (outside quotes and angle brackets).
    pub fn raw_all(&self, name: &Name) -> Vec<String> {
        self.headers
            .get_raw(name)
            .flat_map(|v| split_list(v.as_str()))
            .collect()
    }
}

/// Splits a header value list on commas that are not inside quotes or `<>`.
fn split_list(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let (mut quoted, mut angle, mut start) = (false, false, 0);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                items.push(value[start..i].trim().to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(value[start..].trim().to_owned());
    items.retain(|i| !i.is_empty());
    items
}

/// A message to send, printed with a correct Content-Length.
pub struct Outgoing {
    pub start: String,
    pub headers: Vec<(Name, String)>,
    pub body: Option<(&'static str, String)>,
}

impl Outgoing {
    pub fn request(method: &Method, uri: &str) -> Self {
        Self {
            start: format!("{method} {uri} SIP/2.0"),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn response(code: u16, reason: &str) -> Self {
        Self {
            start: format!("SIP/2.0 {code} {reason}"),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: Name, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_body(mut self, content_type: &'static str, body: String) -> Self {
        self.body = Some((content_type, body));
        self
    }

    /// The headers as `ezk-sip-types` holds them (for digest authentication).
    pub fn ezk_headers(&self) -> Headers {
        let mut headers = Headers::new();
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.as_str());
        }
        headers
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut text = String::with_capacity(512);
        let _ = write!(text, "{}\r\n", self.start);
        for (name, value) in &self.headers {
            let _ = write!(text, "{}: {value}\r\n", name.as_print_str());
        }
        match &self.body {
            Some((content_type, body)) => {
                let _ = write!(
                    text,
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
            None => text.push_str("Content-Length: 0\r\n\r\n"),
        }
        text.into_bytes()
    }
}

/// Reason phrases for the responses the user agent sends.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        481 => "Call/Transaction Does Not Exist",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        _ => StatusCode::from(code).text().unwrap_or("Unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RINGING: &[u8] = b"SIP/2.0 180 Ringing\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKabc;rport=5070\r\n\
From: <sip:kiosk@127.0.0.1>;tag=f1\r\n\
To: <sip:room@127.0.0.1>;tag=t9\r\n\
Call-ID: c1@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Record-Route: <sip:p1;lr>, <sip:p2;lr>\r\n\
Record-Route: <sip:p3;lr>\r\n\
Content-Length: 0\r\n\r\n";

    fn message(data: &[u8]) -> SipMessage {
        match SipMessage::parse(data).unwrap() {
            Datagram::Message(m) => *m,
            Datagram::KeepAlive => panic!("keep-alive"),
        }
    }

    #[test]
    fn a_response_gives_its_dialog_fields() {
        let m = message(RINGING);
        assert_eq!(m.status(), Some(180));
        assert_eq!(m.reason(), "Ringing");
        assert_eq!(m.branch().unwrap(), "z9hG4bKabc");
        assert_eq!(m.to_tag().unwrap().as_deref(), Some("t9"));
        assert_eq!(m.sender_tag().unwrap().as_deref(), Some("f1"));
        assert_eq!(m.call_id().unwrap(), "c1@127.0.0.1");
        assert_eq!(m.cseq().unwrap().cseq, 1);
        assert_eq!(
            m.raw_all(&Name::RECORD_ROUTE),
            ["<sip:p1;lr>", "<sip:p2;lr>", "<sip:p3;lr>"]
        );
    }

    #[test]
    fn the_body_is_cut_at_its_content_length() {
        let data = b"BYE sip:k@127.0.0.1 SIP/2.0\r\nCSeq: 2 BYE\r\nContent-Length: 3\r\n\r\nabcdef";
        let m = message(data);
        assert_eq!(m.method(), Some(&Method::BYE));
        assert_eq!(&m.body[..], b"abc");
        let short = b"BYE sip:k@127.0.0.1 SIP/2.0\r\nContent-Length: 30\r\n\r\nabc";
        assert_eq!(
            SipMessage::parse(short).unwrap_err(),
            MessageError::ShortBody
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            SipMessage::parse(b"\r\n\r\n").unwrap(),
            Datagram::KeepAlive
        ));
        for bad in [
            &b""[..],
            b"hello",
            b"\x80\x81\r\n\r\n",
            b"SIP/2.0 abc\r\n\r\n",
            b"INVITE\r\n\r\n",
            b"SIP/2.0 200 OK\r\nno colon here\r\n\r\n",
            b"SIP/2.0 200 OK\r\nContent-Length: -5\r\n\r\n",
            b"SIP/2.0 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            assert!(SipMessage::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            SipMessage::parse(&vec![b'a'; MAX_MESSAGE + 1]).unwrap_err(),
            MessageError::TooLarge(MAX_MESSAGE + 1)
        );
        let m = message(b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n");
        assert!(m.branch().is_err() && m.cseq().is_err() && m.call_id().is_err());
    }

    #[test]
    fn outgoing_messages_carry_their_length() {
        let bytes = Outgoing::response(200, "OK")
            .header(Name::CSEQ, "1 BYE")
            .with_body("application/sdp", "v=0\r\n".into())
            .to_bytes();
        let m = message(&bytes);
        assert_eq!(m.status(), Some(200));
        assert_eq!(&m.body[..], b"v=0\r\n");
        assert_eq!(m.raw(&Name::CONTENT_TYPE), Some("application/sdp"));
    }
}
