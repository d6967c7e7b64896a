//! Copies finished recordings to S3-compatible object storage (issue 11, `docs/cluster.md`),
//! on its own thread so file reads and hashing never delay SIP or media.
//!
//! Every two seconds the uploader looks for finished session directories (session.json there,
//! no session.partial.json, transcripts written or given up on) without an upload record, and
//! uploads each file under `<S3_PREFIX><day>/<session>/<file>`, session.json last:
//! - a file up to `S3_PART_SIZE_MB` in one PUT, a bigger one in parts;
//! - every request carries the body's MD5 and SHA-256, so the store refuses a corrupted
//!   transfer; afterwards HEAD must show the expected size and ETag;
//! - progress (files done, the multipart upload id and its parts) is kept in
//!   `.upload-state.json`, so an upload cut by an outage or a restart continues where it
//!   stopped instead of starting again;
//! - once every file is verified, `.upload.json` records what is where. Only then may
//!   `S3_LOCAL_RETENTION` delete the local audio (session.json and the record stay).
//!
//! GDPR erase queues the call's remote keys in `.s3-erase/`; the uploader deletes them,
//! retrying until the store confirms.
//!
//! Refuses: deleting anything local before the store has verified it, and giving up. A failed
//! round backs off (1 s doubling to 60 s) and tries again; `/health` says degraded meanwhile.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::UploadConfig;

pub mod s3;
pub mod sigv4;

use s3::{S3Error, S3};

/// Written in a session directory once every file is in the bucket and verified.
pub const MARKER: &str = ".upload.json";
/// Upload progress of a session directory.
const STATE: &str = ".upload-state.json";
/// Remote keys waiting for deletion (GDPR erase), one JSON file per request.
pub const ERASE_DIR: &str = ".s3-erase";
const SCAN_EVERY: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long a session waits for its transcripts before going up without them.
const TRANSCRIPT_WAIT: Duration = Duration::from_secs(600);

/// Counters for /health and /metrics.
#[derive(Debug, Default)]
pub struct UploadStatus {
    pub sessions: AtomicU64,
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub parts: AtomicU64,
    pub failures: AtomicU64,
    /// Multipart uploads continued after an interruption.
    pub resumed: AtomicU64,
    pub local_deleted: AtomicU64,
    pub remote_erased: AtomicU64,
    /// Sessions found waiting at the last round.
    pub pending: AtomicU64,
    /// Whether the last round went through.
    pub ok: AtomicBool,
    last_error: crate::proto::LastError,
}

impl UploadStatus {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.get()
    }
    fn set_error(&self, e: Option<String>) {
        self.last_error.set(e);
    }
}

/// One object as uploaded and verified.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectRecord {
    pub file: String,
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub sha256: String,
}

/// `.upload.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadRecord {
    pub bucket: String,
    pub uploaded_ms: u64,
    pub objects: Vec<ObjectRecord>,
    #[serde(default)]
    pub local_deleted_ms: Option<u64>,
}

/// `.upload-state.json`: what is done, and the multipart upload in progress.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    done: Vec<ObjectRecord>,
    current: Option<Multipart>,
    /// The key being uploaded now (so an erase racing the upload knows it).
    #[serde(default)]
    in_flight: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Multipart {
    file: String,
    #[serde(default)]
    key: String,
    upload_id: String,
    part_size: u64,
    sha256: String,
    /// (number, ETag, MD5 hex) of the parts the store took.
    parts: Vec<(u32, String, String)>,
}

#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("verification of {key} failed: {why}")]
    Verify { key: String, why: String },
    #[error("stopping")]
    Stopping,
}

fn io(what: impl std::fmt::Display, e: std::io::Error) -> UploadError {
    UploadError::Io(what.to_string(), e)
}

/// The running uploader thread.
pub struct Uploader {
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Uploader {
    /// Starts the uploader thread over `root` (the recording directory).
    pub fn spawn(
        config: &UploadConfig,
        root: PathBuf,
        status: Arc<UploadStatus>,
    ) -> Result<Uploader, String> {
        let s3 = S3::new(config)?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let ctx = Ctx {
            s3,
            root,
            prefix: config.prefix.clone(),
            part_size: u64::from(config.part_size_mb) << 20,
            retention: config.local_retention_s.map(Duration::from_secs),
            pace: Mutex::new(Pace::new(config.max_mbps)),
            status,
            stop: stopped,
        };
        let thread = std::thread::Builder::new()
            .name("siprec-upload".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => rt.block_on(run(ctx)),
                    Err(e) => tracing::error!(error = %e, "upload: no runtime"),
                }
            })
            .map_err(|e| format!("upload thread: {e}"))?;
        Ok(Uploader {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops after the request in flight (progress is on disk for the next start).
    pub fn stop(mut self, wait: Duration) {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + wait;
        if let Some(thread) = self.thread.take() {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!("upload: still busy at exit; it continues at the next start");
            }
        }
    }
}

struct Ctx {
    s3: S3,
    root: PathBuf,
    prefix: String,
    part_size: u64,
    retention: Option<Duration>,
    pace: Mutex<Pace>,
    status: Arc<UploadStatus>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Ctx {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// Spaces requests so uploads average at most `S3_MAX_MBPS`.
struct Pace {
    bytes_per_s: f64,
    next: Instant,
}

impl Pace {
    fn new(mbps: u32) -> Pace {
        Pace {
            bytes_per_s: f64::from(mbps) * 1e6 / 8.0,
            next: Instant::now(),
        }
    }
    /// When a body of `n` bytes may start.
    fn reserve(&mut self, n: u64, now: Instant) -> Instant {
        if self.bytes_per_s <= 0.0 {
            return now;
        }
        let start = self.next.max(now);
        self.next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_s);
        start
    }
}

async fn run(ctx: Ctx) {
    let mut stop = ctx.stop.clone();
    let mut backoff = Duration::ZERO;
    let mut finished: HashSet<PathBuf> = HashSet::new();
    tracing::info!(bucket = ctx.s3.bucket(), "upload to object storage enabled");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SCAN_EVERY + backoff) => {}
            _ = stop.changed() => break,
        }
        match round(&ctx, &mut finished).await {
            Ok(()) => {
                backoff = Duration::ZERO;
                if !ctx.status.ok.swap(true, Relaxed) && ctx.status.last_error().is_some() {
                    tracing::info!("upload: object storage reachable again");
                }
                ctx.status.set_error(None);
            }
            Err(UploadError::Stopping) => break,
            Err(e) => {
                ctx.status.failures.fetch_add(1, Relaxed);
                if ctx.status.ok.swap(false, Relaxed) || ctx.status.last_error().is_none() {
                    tracing::warn!(error = %e, "upload: failed; retrying with backoff");
                }
                ctx.status.set_error(Some(e.to_string()));
                backoff = (backoff * 2).clamp(Duration::from_secs(1), BACKOFF_MAX);
            }
        }
    }
}

/// Directories remembered as done before the set is cleared (and markers read again once).
const FINISHED_MAX: usize = 100_000;

/// One pass: queued erasures, then sessions waiting, then local retention. One item failing
/// does not hold up the others, unless the store is unreachable (then the round stops and
/// backs off); the first error is the round's.
async fn round(ctx: &Ctx, finished: &mut HashSet<PathBuf>) -> Result<(), UploadError> {
    let mut first: Option<UploadError> = None;
    if let Err(e) = erase_queued(ctx).await {
        first = Some(e);
    }
    if finished.len() > FINISHED_MAX {
        finished.clear();
    }
    let (waiting, uploaded) = scan(&ctx.root, finished);
    ctx.status.pending.store(waiting.len() as u64, Relaxed);
    let unreachable = |e: &UploadError| matches!(e, UploadError::S3(S3Error::Transport(_)));
    if !first.as_ref().is_some_and(unreachable) {
        for dir in waiting {
            if ctx.stopping() {
                return Err(UploadError::Stopping);
            }
            match upload_session(ctx, &dir).await {
                Ok(()) => {
                    let left = ctx.status.pending.load(Relaxed).saturating_sub(1);
                    ctx.status.pending.store(left, Relaxed);
                }
                Err(UploadError::Stopping) => return Err(UploadError::Stopping),
                Err(e) => {
                    let stop = unreachable(&e);
                    if first.is_none() {
                        first = Some(e);
                    } else {
                        tracing::warn!(error = %e, dir = %dir.display(), "upload: session failed");
                    }
                    if stop {
                        break;
                    }
                }
            }
        }
    }
    for dir in uploaded {
        retain(ctx, &dir, finished);
    }
    first.map_or(Ok(()), Err)
}

/// Session directories waiting for upload, and those uploaded whose retention is pending.
fn scan(root: &Path, finished: &HashSet<PathBuf>) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut waiting = Vec::new();
    let mut uploaded = Vec::new();
    let Ok(days) = std::fs::read_dir(root) else {
        return (waiting, uploaded);
    };
    let mut days: Vec<PathBuf> = days
        .flatten()
        .filter(|d| {
            let name = d.file_name().to_string_lossy().to_string();
            name.len() == 10 && name.as_bytes()[4] == b'-' && name.as_bytes()[7] == b'-'
        })
        .map(|d| d.path())
        .collect();
    days.sort();
    for day in days {
        let Ok(sessions) = std::fs::read_dir(&day) else {
            continue;
        };
        let mut sessions: Vec<PathBuf> = sessions.flatten().map(|s| s.path()).collect();
        sessions.sort();
        for dir in sessions {
            if finished.contains(&dir) {
                continue;
            }
            if dir.join(MARKER).exists() {
                uploaded.push(dir);
            } else if ready(&dir) {
                waiting.push(dir);
            }
        }
    }
    (waiting, uploaded)
}

/// Finished: session.json written, recovery not pending, transcripts written or overdue.
fn ready(dir: &Path) -> bool {
    let json = dir.join("session.json");
    if !json.exists() || dir.join("session.partial.json").exists() {
        return false;
    }
    let Ok(text) = std::fs::read(&json) else {
        return false;
    };
    let doc: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
    if doc["transcripts"].is_null() || dir.join("transcript.json").exists() {
        return true;
    }
    let age = std::fs::metadata(&json)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default();
    age >= TRANSCRIPT_WAIT
}

/// Files of a session directory in upload order: session.json last.
fn session_files(dir: &Path) -> Result<Vec<String>, UploadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io(dir.display(), e))?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.') && n != "session.partial.json" && !n.ends_with(".tmp"))
        .collect();
    names.sort_by_key(|n| (n == "session.json", n.clone()));
    Ok(names)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "opus" | "ogg" => "audio/ogg",
        "json" => "application/json",
        "vtt" => "text/vtt",
        _ => "application/octet-stream",
    }
}

fn load_progress(dir: &Path) -> Progress {
    std::fs::read(dir.join(STATE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_progress(dir: &Path, p: &Progress) -> Result<(), UploadError> {
    let bytes = serde_json::to_vec(p).unwrap_or_default();
    crate::sink::recorder::fsutil::write_atomic(&dir.join(STATE), &bytes)
        .map_err(|e| io(dir.display(), std::io::Error::other(e.to_string())))
}

async fn upload_session(ctx: &Ctx, dir: &Path) -> Result<(), UploadError> {
    let rel = dir
        .strip_prefix(&ctx.root)
        .unwrap_or(dir)
        .to_string_lossy()
        .to_string();
    let mut progress = load_progress(dir);
    if let Err(e) = upload_files(ctx, dir, &rel, &mut progress).await {
        if dir.exists() {
            return Err(e);
        }
        // Erased (GDPR) while it went up: whatever reached the store goes too.
        return remove_remote(ctx, &progress).await;
    }
    let record = UploadRecord {
        bucket: ctx.s3.bucket().to_owned(),
        uploaded_ms: crate::cluster::unix_ms(),
        objects: progress.done.clone(),
        local_deleted_ms: None,
    };
    if !dir.exists() {
        // Erased while it went up: its copies go too.
        for o in &record.objects {
            ctx.s3.delete(&o.key).await?;
        }
        return Ok(());
    }
    let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
    crate::sink::recorder::fsutil::write_atomic(&dir.join(MARKER), &bytes)
        .map_err(|e| io(dir.display(), std::io::Error::other(e.to_string())))?;
    let _ = std::fs::remove_file(dir.join(STATE));
    ctx.status.sessions.fetch_add(1, Relaxed);
    tracing::info!(session = %rel, objects = record.objects.len(), "upload: session stored");
    Ok(())
}

async fn upload_files(
    ctx: &Ctx,
    dir: &Path,
    rel: &str,
    progress: &mut Progress,
) -> Result<(), UploadError> {
    for name in session_files(dir)? {
        if progress.done.iter().any(|o| o.file == name) {
            continue;
        }
        let key = format!("{}{rel}/{name}", ctx.prefix);
        progress.in_flight = Some(key.clone());
        save_progress(dir, progress)?;
        let record = upload_file(ctx, dir, &name, &key, progress).await?;
        progress.done.push(record);
        progress.in_flight = None;
        save_progress(dir, progress)?;
    }
    Ok(())
}

/// Deletes every object of `progress` from the store and aborts its multipart upload.
async fn remove_remote(ctx: &Ctx, progress: &Progress) -> Result<(), UploadError> {
    if let Some(mp) = &progress.current {
        let _ = ctx.s3.abort_multipart(&mp.key, &mp.upload_id).await;
    }
    let keys = progress
        .done
        .iter()
        .map(|o| &o.key)
        .chain(&progress.in_flight);
    for key in keys {
        ctx.s3.delete(key).await?;
    }
    Ok(())
}

async fn paced(ctx: &Ctx, n: u64) {
    let start = ctx
        .pace
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .reserve(n, Instant::now());
    tokio::time::sleep_until(start.into()).await;
}

async fn upload_file(
    ctx: &Ctx,
    dir: &Path,
    name: &str,
    key: &str,
    progress: &mut Progress,
) -> Result<ObjectRecord, UploadError> {
    let path = dir.join(name);
    let size = std::fs::metadata(&path)
        .map_err(|e| io(path.display(), e))?
        .len();
    let ct = content_type(name);
    let (etag, sha256) = if size <= ctx.part_size {
        let data = std::fs::read(&path).map_err(|e| io(path.display(), e))?;
        let sha = sigv4::sha256_hex(&data);
        let md5 = sigv4::hex(&sigv4::md5(&data));
        paced(ctx, size).await;
        ctx.s3.put_object(key, Bytes::from(data), ct, &sha).await?;
        verify(ctx, key, size, &md5, &sha).await?;
        (md5, sha)
    } else {
        multipart(ctx, dir, name, key, size, progress).await?
    };
    ctx.status.files.fetch_add(1, Relaxed);
    ctx.status.bytes.fetch_add(size, Relaxed);
    Ok(ObjectRecord {
        file: name.to_owned(),
        key: key.to_owned(),
        size,
        etag,
        sha256,
    })
}

fn file_sha256(path: &Path) -> Result<String, UploadError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| io(path.display(), e))?;
    let mut hasher = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io(path.display(), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(sigv4::hex(&hasher.finish()))
}

fn read_part(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, UploadError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| io(path.display(), e))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| io(path.display(), e))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(|e| io(path.display(), e))?;
    Ok(buf)
}

/// Uploads `name` in parts, continuing the upload recorded in `progress` when it is this
/// file's (same content), and verifies the assembled object. Returns (ETag, SHA-256).
async fn multipart(
    ctx: &Ctx,
    dir: &Path,
    name: &str,
    key: &str,
    size: u64,
    progress: &mut Progress,
) -> Result<(String, String), UploadError> {
    let path = dir.join(name);
    let sha = file_sha256(&path)?;
    let mut mp = match progress.current.take() {
        Some(m) if m.file == name && m.sha256 == sha && m.part_size > 0 => {
            ctx.status.resumed.fetch_add(1, Relaxed);
            tracing::info!(
                key,
                parts_done = m.parts.len(),
                "upload: continuing multipart"
            );
            m
        }
        stale => {
            if let Some(old) = stale.filter(|o| !o.key.is_empty()) {
                let _ = ctx.s3.abort_multipart(&old.key, &old.upload_id).await;
            }
            let upload_id = ctx
                .s3
                .create_multipart(key, content_type(name), &sha)
                .await?;
            Multipart {
                file: name.to_owned(),
                key: key.to_owned(),
                upload_id,
                part_size: ctx.part_size,
                sha256: sha.clone(),
                parts: Vec::new(),
            }
        }
    };
    progress.current = Some(mp.clone());
    save_progress(dir, progress)?;
    let total = size.div_ceil(mp.part_size) as u32;
    for n in 1..=total {
        if mp.parts.iter().any(|p| p.0 == n) {
            continue;
        }
        if ctx.stopping() {
            return Err(UploadError::Stopping);
        }
        let offset = u64::from(n - 1) * mp.part_size;
        let len = mp.part_size.min(size - offset);
        let data = read_part(&path, offset, len)?;
        let md5 = sigv4::hex(&sigv4::md5(&data));
        paced(ctx, len).await;
        let result = ctx
            .s3
            .upload_part(key, &mp.upload_id, n, Bytes::from(data))
            .await;
        let (etag, md5_etag) = match result {
            Ok(answer) => answer,
            Err(e) => {
                forget_if_gone(dir, progress, &e)?;
                return Err(e.into());
            }
        };
        if md5_etag && looks_like_md5(&etag) && etag != md5 {
            let why = format!("part {n}: ETag {etag}, MD5 {md5}");
            return Err(UploadError::Verify {
                key: key.to_owned(),
                why,
            });
        }
        mp.parts.push((n, etag, md5));
        progress.current = Some(mp.clone());
        save_progress(dir, progress)?;
        ctx.status.parts.fetch_add(1, Relaxed);
    }
    mp.parts.sort_by_key(|p| p.0);
    let parts: Vec<(u32, String)> = mp.parts.iter().map(|p| (p.0, p.1.clone())).collect();
    if let Err(e) = ctx.s3.complete_multipart(key, &mp.upload_id, &parts).await {
        // A completion that went through but whose answer was lost: the object is there.
        if verify(ctx, key, size, &expected_etag(&mp), &sha)
            .await
            .is_err()
        {
            forget_if_gone(dir, progress, &e)?;
            return Err(e.into());
        }
    }
    let etag = expected_etag(&mp);
    verify(ctx, key, size, &etag, &sha).await?;
    progress.current = None;
    Ok((etag, sha))
}

fn expected_etag(mp: &Multipart) -> String {
    let md5s: Vec<[u8; 16]> = mp
        .parts
        .iter()
        .map(|p| {
            let mut out = [0u8; 16];
            for (i, b) in out.iter_mut().enumerate() {
                *b = u8::from_str_radix(p.2.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
            }
            out
        })
        .collect();
    s3::multipart_etag(&md5s)
}

/// After the store says the multipart upload no longer exists, the next round starts the
/// file again.
fn forget_if_gone(dir: &Path, progress: &mut Progress, e: &S3Error) -> Result<(), UploadError> {
    if e.code() == Some("NoSuchUpload") {
        progress.current = None;
        save_progress(dir, progress)?;
    }
    Ok(())
}

/// An MD5-style ETag (`<32 hex>` or `<32 hex>-<parts>`); stores with server-side KMS
/// encryption give other ETags, which are then not compared.
fn looks_like_md5(etag: &str) -> bool {
    let hex = etag.split('-').next().unwrap_or("");
    hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn verify(ctx: &Ctx, key: &str, size: u64, etag: &str, sha: &str) -> Result<(), UploadError> {
    let fail = |why: String| UploadError::Verify {
        key: key.to_owned(),
        why,
    };
    let info = ctx
        .s3
        .head(key)
        .await?
        .ok_or_else(|| fail("not in the bucket".into()))?;
    if info.size != size {
        return Err(fail(format!("{} bytes stored, {size} sent", info.size)));
    }
    if info.md5_etag && looks_like_md5(&info.etag) && info.etag != etag {
        return Err(fail(format!("ETag {}, expected {etag}", info.etag)));
    }
    if info.sha256.as_deref().is_some_and(|s| s != sha) {
        return Err(fail("SHA-256 metadata differs".into()));
    }
    Ok(())
}

/// Deletes local audio once the retention after a verified upload has passed.
fn retain(ctx: &Ctx, dir: &Path, finished: &mut HashSet<PathBuf>) {
    let Some(retention) = ctx.retention else {
        finished.insert(dir.to_owned());
        return;
    };
    let marker = dir.join(MARKER);
    let Some(mut record) = std::fs::read(&marker)
        .ok()
        .and_then(|b| serde_json::from_slice::<UploadRecord>(&b).ok())
    else {
        return;
    };
    if record.local_deleted_ms.is_some() {
        finished.insert(dir.to_owned());
        return;
    }
    let now = crate::cluster::unix_ms();
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    if record.uploaded_ms.saturating_add(retention_ms) > now {
        return;
    }
    for o in &record.objects {
        if o.file == "session.json" {
            continue;
        }
        match std::fs::remove_file(dir.join(&o.file)) {
            Ok(()) => {
                ctx.status.local_deleted.fetch_add(1, Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "upload: local delete failed");
                return;
            }
        }
    }
    record.local_deleted_ms = Some(now);
    let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
    if crate::sink::recorder::fsutil::write_atomic(&marker, &bytes).is_ok() {
        finished.insert(dir.to_owned());
    }
}

/// The remote keys of these session directories (uploaded, or partly), queued for deletion
/// by the uploader; returns how many. Called by GDPR erase before the directories go.
pub fn queue_erase(root: &Path, dirs: &[PathBuf], reference: &str) -> std::io::Result<usize> {
    let mut keys: Vec<String> = Vec::new();
    for dir in dirs {
        if let Some(r) = std::fs::read(dir.join(MARKER))
            .ok()
            .and_then(|b| serde_json::from_slice::<UploadRecord>(&b).ok())
        {
            keys.extend(r.objects.into_iter().map(|o| o.key));
        }
        let progress = load_progress(dir);
        keys.extend(progress.done.into_iter().map(|o| o.key));
        keys.extend(progress.in_flight);
        keys.extend(progress.current.map(|m| m.key).filter(|k| !k.is_empty()));
    }
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return Ok(0);
    }
    let queue = root.join(ERASE_DIR);
    std::fs::create_dir_all(&queue)?;
    let name = format!("{reference}-{}.json", crate::cluster::unix_ms());
    let bytes = serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default();
    crate::sink::recorder::fsutil::write_atomic(&queue.join(name), &bytes)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(keys.len())
}

async fn erase_queued(ctx: &Ctx) -> Result<(), UploadError> {
    let queue = ctx.root.join(ERASE_DIR);
    let Ok(entries) = std::fs::read_dir(&queue) else {
        return Ok(());
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    for file in files {
        if file.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let doc: serde_json::Value = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let keys: Vec<String> = doc["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        for key in &keys {
            ctx.s3.delete(key).await?;
        }
        ctx.status
            .remote_erased
            .fetch_add(keys.len() as u64, Relaxed);
        std::fs::remove_file(&file).map_err(|e| io(file.display(), e))?;
        tracing::info!(objects = keys.len(), "upload: erased remote copies (GDPR)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_spreads_bodies() {
        let mut p = Pace::new(8); // 1 MB/s
        let t0 = Instant::now();
        assert_eq!(p.reserve(500_000, t0), t0);
        let second = p.reserve(500_000, t0);
        assert_eq!(second - t0, Duration::from_millis(500));
        let mut off = Pace::new(0);
        assert_eq!(off.reserve(1 << 30, t0), t0);
    }

    #[test]
    fn etag_shapes() {
        assert!(looks_like_md5("d41d8cd98f00b204e9800998ecf8427e"));
        assert!(looks_like_md5("d52b0dc77d83ebcb3ec912e151026b04-2"));
        assert!(!looks_like_md5("kms-opaque-etag"));
        let mp = Multipart {
            file: "f".into(),
            upload_id: "u".into(),
            part_size: 1,
            sha256: String::new(),
            parts: vec![(1, String::new(), sigv4::hex(&sigv4::md5(b"a")))],
            key: "k".into(),
        };
        assert_eq!(expected_etag(&mp), s3::multipart_etag(&[sigv4::md5(b"a")]));
    }

    #[test]
    fn session_files_put_session_json_last() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "session.json",
            "1.wav",
            "mix.wav",
            ".upload-state.json",
            "x.tmp",
        ] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        assert_eq!(
            session_files(dir.path()).unwrap(),
            ["1.wav", "mix.wav", "session.json"]
        );
    }
}
