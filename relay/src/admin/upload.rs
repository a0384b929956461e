//! Reading request bodies without trusting the client: a small body whole into memory, an upload
//! (a backup to restore, an update bundle) streamed to a private file, each with a size limit
//! and one deadline for the whole body.

use super::api::error;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;

fn too_large(max: u64) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {max} bytes"),
    )
}

fn too_slow() -> Response {
    error(
        StatusCode::REQUEST_TIMEOUT,
        "the request body did not arrive in time",
    )
}

/// Reads a body of at most `max` bytes that must be complete within `deadline`. A declared
/// length over the limit is refused before reading anything.
pub(super) async fn read_small_body(
    body: Body,
    declared: Option<u64>,
    max: usize,
    deadline: std::time::Duration,
) -> Result<Vec<u8>, Response> {
    use futures::StreamExt;
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max as u64));
    }
    let end = tokio::time::Instant::now() + deadline;
    let mut data = Vec::new();
    let mut stream = body.into_data_stream();
    loop {
        match tokio::time::timeout_at(end, stream.next()).await {
            Err(_) => return Err(too_slow()),
            Ok(None) => return Ok(data),
            Ok(Some(Err(e))) => {
                tracing::debug!("admin: reading the body failed: {e}");
                return Err(error(StatusCode::BAD_REQUEST, "the body could not be read"));
            }
            Ok(Some(Ok(chunk))) => {
                if data.len() + chunk.len() > max {
                    return Err(too_large(max as u64));
                }
                data.extend_from_slice(&chunk);
            }
        }
    }
}

/// An upload on disk, removed when dropped.
pub(super) struct Upload(std::path::PathBuf);

impl Upload {
    pub(super) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where an upload goes: a file `<prefix>-<random>.tmp` in `dir`, at most `max` bytes
/// arriving within `timeout`.
pub(super) struct UploadTo<'a> {
    pub dir: std::path::PathBuf,
    pub prefix: &'a str,
    pub max: u64,
    pub timeout: std::time::Duration,
}

/// Streams an upload (a backup to restore, an update bundle) into a private file as it
/// arrives, never whole into memory.
pub(super) async fn upload_to_file(
    to: &UploadTo<'_>,
    declared: Option<u64>,
    body: Body,
) -> Result<Upload, Response> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let max = to.max;
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let internal = |e: std::io::Error| {
        tracing::error!("admin: cannot store the upload: {e}");
        error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    };
    let dir = &to.dir;
    tokio::fs::create_dir_all(&dir).await.map_err(internal)?;
    let name = {
        use rand::RngCore;
        let mut b = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut b);
        format!("{}-{}.tmp", to.prefix, super::b64(&b))
    };
    let upload = Upload(dir.join(name));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(upload.path())
        .await
        .map_err(internal)?;
    let end = tokio::time::Instant::now() + to.timeout;
    let mut stream = body.into_data_stream();
    let mut written = 0u64;
    loop {
        match tokio::time::timeout_at(end, stream.next()).await {
            Err(_) => return Err(too_slow()),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::debug!("admin: reading the upload failed: {e}");
                return Err(error(StatusCode::BAD_REQUEST, "the body could not be read"));
            }
            Ok(Some(Ok(chunk))) => {
                written += chunk.len() as u64;
                if written > max {
                    return Err(too_large(max));
                }
                file.write_all(&chunk).await.map_err(internal)?;
            }
        }
    }
    file.flush().await.map_err(internal)?;
    Ok(upload)
}
