//! Reading reply bodies from servers the kiosk does not control (the agent,
//! Daily, an operator's backend): never more than a set number of bytes, so
//! a broken or hostile server cannot fill the memory of a small box.

use bytes::{Bytes, BytesMut};

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reply larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the reply failed")]
    Read(#[source] reqwest::Error),
}

/// The whole body, or [`BodyError::TooLarge`] as soon as it passes `limit`
/// (at once when `Content-Length` says so).
pub async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.without_url()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// At most the first `limit` bytes of the body, as text (for error
/// messages); whatever cannot be read is left out.
pub async fn read_prefix(mut response: reqwest::Response, limit: usize) -> String {
    let mut body = Vec::new();
    while body.len() < limit {
        let Ok(Some(chunk)) = response.chunk().await else {
            break;
        };
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    let mut text = String::from_utf8_lossy(&body).into_owned();
    // A cut may split a character; lossy decoding marks it, drop the mark.
    if body.len() == limit && text.ends_with('\u{FFFD}') {
        text.pop();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering every request with `head` and then `chunks`
    /// (chunked transfer coding when `head` says so).
    async fn serve(head: &'static str, chunks: Vec<Vec<u8>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let chunks = chunks.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = socket.read(&mut request).await;
                    let _ = socket.write_all(head.as_bytes()).await;
                    for chunk in chunks {
                        let framed = [
                            format!("{:x}\r\n", chunk.len()).into_bytes(),
                            chunk,
                            b"\r\n".to_vec(),
                        ]
                        .concat();
                        if socket.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                    let _ = socket.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        format!("http://{addr}/")
    }

    const CHUNKED: &str =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_while_it_streams() {
        let url = serve(CHUNKED, vec![vec![b'y'; 1000]; 100]).await;
        let r = reqwest::get(&url).await.unwrap();
        assert!(matches!(
            read_limited(r, 5000).await,
            Err(BodyError::TooLarge { limit: 5000 })
        ));
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(read_limited(r, 100_000).await.unwrap().len(), 100_000);
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(read_prefix(r, 12).await, "y".repeat(12));
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let url = serve(
            "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n",
            vec![],
        )
        .await;
        let r = reqwest::get(&url).await.unwrap();
        assert!(matches!(
            read_limited(r, 64 * 1024).await,
            Err(BodyError::TooLarge { .. })
        ));
    }
}
