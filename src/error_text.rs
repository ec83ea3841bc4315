//! Errors as text. Each error's message describes its own layer only and
//! its cause is its `source()`, so a log line or a reply that shows only
//! `Display` would drop the cause: show [`error_chain`] instead.

/// The error and its causes on one line, for log fields and replies.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
