//! STT jobs: transcribing recordings already on disk, on request (`/api/stt/*`).
//!
//! The queue is a directory of one JSON file per job (`<RECORDING_DIR>/.stt-jobs/`), each
//! rewritten atomically (temp + rename) whenever the job changes state, so it survives a
//! restart: at start every job is loaded, and one that was running when the process stopped
//! is queued again. The highest `priority` runs first, then the oldest. One job runs at a
//! time on the `stt-batch` thread, which cuts the file into utterances with the live
//! segmenter and hands them to the same engine workers, after live finals and partials: a
//! batch job never delays a live call.
//!
//! Refuses: files outside the recording directory, providers this server doesn't run, and
//! more than `QUEUED_MAX` waiting jobs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proto::rfc3339_ms;

/// Jobs waiting at once; a submit beyond it is refused (400) rather than queued forever.
const QUEUED_MAX: usize = 10_000;
/// Finished jobs kept (files and listing); the oldest beyond it are forgotten.
const FINISHED_MAX: usize = 1_000;
/// Longest recording a job transcribes (a day): bounds one job's memory.
pub const AUDIO_MAX_S: u64 = 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobUtterance {
    /// Channel of the file (0 for mono; one per stream in mixed.wav).
    pub channel: u16,
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
    pub confidence: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResult {
    /// Every utterance's text in time order.
    pub text: String,
    pub utterances: Vec<JobUtterance>,
    pub audio_seconds: f64,
    pub processing_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub job_id: String,
    pub status: JobStatus,
    pub audio_path: String,
    pub call_uuid: String,
    pub session_id: String,
    pub provider: String,
    /// Whisper language code ("en-US" is taken as "en"), or "auto".
    pub language: String,
    /// Higher runs first.
    pub priority: i64,
    /// What the provider charges: 0 for the embedded engine.
    pub estimated_cost: f64,
    pub submitted_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// Times the job was started (a restart while running starts it again).
    pub attempts: u32,
    pub error: Option<String>,
    pub result: Option<JobResult>,
    /// Submission order (ties of priority run oldest first).
    #[serde(default)]
    pub seq: u64,
}

/// A submit request (`POST /api/stt/submit`), as the reference server's clients send it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobRequest {
    pub audio_path: Option<String>,
    pub call_uuid: Option<String>,
    pub session_id: Option<String>,
    pub provider: Option<String>,
    pub language: Option<String>,
    pub priority: Option<i64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(String),
    #[error("live transcription is not running: {0}")]
    Unavailable(String),
}

#[derive(Debug, Default, Serialize)]
pub struct JobCounters {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub purged: u64,
    pub audio_seconds: f64,
    pub processing_seconds: f64,
}

pub struct Jobs {
    dir: PathBuf,
    recording_root: PathBuf,
    /// The provider that runs jobs, or why none does.
    provider: Result<&'static str, String>,
    default_language: String,
    state: Mutex<State>,
    wake: Condvar,
    seq: AtomicU64,
}

#[derive(Default)]
struct State {
    jobs: BTreeMap<String, Job>,
    counters: JobCounters,
}

impl Jobs {
    /// Opens (creating) the job directory under `recording_root` and loads every job in it;
    /// jobs left running by a stopped process are queued again. Unreadable files are skipped
    /// with a warning.
    pub fn open(
        recording_root: &Path,
        provider: Result<&'static str, String>,
        default_language: &str,
    ) -> std::io::Result<Jobs> {
        let dir = recording_root.join(".stt-jobs");
        std::fs::create_dir_all(&dir)?;
        let mut state = State::default();
        let mut seq = 0;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let job = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Job>(&b).ok());
            let Some(mut job) = job else {
                tracing::warn!(path = %path.display(), "unreadable STT job file skipped");
                continue;
            };
            if job.status == JobStatus::Running {
                job.status = JobStatus::Queued;
            }
            seq = seq.max(job.seq);
            state.jobs.insert(job.job_id.clone(), job);
        }
        let jobs = Jobs {
            dir,
            recording_root: recording_root
                .canonicalize()
                .unwrap_or_else(|_| recording_root.to_owned()),
            provider,
            default_language: default_language.to_owned(),
            state: Mutex::new(state),
            wake: Condvar::new(),
            seq: AtomicU64::new(seq + 1),
        };
        let queued = jobs
            .lock()
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::Queued)
            .count();
        if queued > 0 {
            tracing::info!(queued, "STT jobs waiting from before the restart");
        }
        Ok(jobs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every change is one insert).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, job: &Job) {
        let path = self.dir.join(format!("{}.json", job.job_id));
        let bytes = serde_json::to_vec_pretty(job).unwrap_or_default();
        if let Err(e) = crate::sink::recorder::write_atomic(&path, &bytes) {
            tracing::error!(path = %path.display(), error = %e, "cannot save STT job");
        }
    }

    /// Validates and queues a request.
    pub fn submit(&self, req: JobRequest, unix_ms: u64) -> Result<Job, SubmitError> {
        let invalid = |m: String| SubmitError::Invalid(m);
        let provider = match &self.provider {
            Ok(p) => *p,
            Err(why) => return Err(SubmitError::Unavailable(why.clone())),
        };
        let wanted = req.provider.as_deref().unwrap_or("").trim();
        if !(wanted.is_empty() || wanted == provider || wanted == "default") {
            return Err(invalid(format!(
                "unsupported provider {wanted:?}: this server transcribes with {provider:?}"
            )));
        }
        let audio = req.audio_path.as_deref().unwrap_or("").trim();
        if audio.is_empty() {
            return Err(invalid("audio_path is required".into()));
        }
        let path = self.resolve(audio)?;
        let language = match req.language.as_deref().map(str::trim) {
            None | Some("") => self.default_language.clone(),
            Some(l) => normalize_language(l)
                .ok_or_else(|| invalid(format!("invalid language {l:?}: e.g. en, en-US, auto")))?,
        };
        let priority = req.priority.unwrap_or(0);
        if !(-1000..=1000).contains(&priority) {
            return Err(invalid("priority must be between -1000 and 1000".into()));
        }
        let mut state = self.lock();
        let queued = state
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::Queued)
            .count();
        if queued >= QUEUED_MAX {
            return Err(invalid(format!(
                "the queue is full ({QUEUED_MAX} jobs waiting)"
            )));
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            job_id: format!("job_{unix_ms:012x}{seq:06x}"),
            status: JobStatus::Queued,
            audio_path: path.display().to_string(),
            call_uuid: req.call_uuid.unwrap_or_default(),
            session_id: req.session_id.unwrap_or_default(),
            provider: provider.to_owned(),
            language,
            priority,
            estimated_cost: 0.0,
            submitted_at: rfc3339_ms(unix_ms),
            started_at: None,
            completed_at: None,
            attempts: 0,
            error: None,
            result: None,
            seq,
        };
        self.save(&job);
        state.jobs.insert(job.job_id.clone(), job.clone());
        state.counters.submitted += 1;
        drop(state);
        self.wake.notify_all();
        Ok(job)
    }

    /// `audio` as a canonical path inside the recording directory (relative paths are taken
    /// from it), naming a regular file.
    fn resolve(&self, audio: &str) -> Result<PathBuf, SubmitError> {
        let candidate = Path::new(audio);
        let joined = match candidate.is_absolute() {
            true => candidate.to_owned(),
            false => self.recording_root.join(candidate),
        };
        let invalid = |m: &str| SubmitError::Invalid(format!("audio_path {audio:?}: {m}"));
        let path = joined.canonicalize().map_err(|_| invalid("no such file"))?;
        if !path.starts_with(&self.recording_root) || path.starts_with(&self.dir) {
            return Err(invalid("must be a recording under RECORDING_DIR"));
        }
        if !path.is_file() {
            return Err(invalid("not a file"));
        }
        Ok(path)
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        self.lock().jobs.get(id).cloned()
    }

    /// Jobs, newest first, optionally of one status.
    pub fn list(&self, status: Option<JobStatus>, limit: usize) -> Vec<Job> {
        let state = self.lock();
        let mut v: Vec<Job> = state
            .jobs
            .values()
            .filter(|j| status.is_none_or(|s| j.status == s))
            .cloned()
            .collect();
        v.sort_by_key(|j| std::cmp::Reverse(j.seq));
        v.truncate(limit);
        v
    }

    /// Drops every queued job (running and finished ones stay); how many.
    pub fn purge(&self) -> usize {
        let mut state = self.lock();
        let ids: Vec<String> = state
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::Queued)
            .map(|j| j.job_id.clone())
            .collect();
        for id in &ids {
            state.jobs.remove(id);
            let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
        }
        state.counters.purged += ids.len() as u64;
        ids.len()
    }

    /// GDPR erase of `call_id`: forgets (files too) every job submitted for that call or
    /// whose recording is gone, except a running one (it fails on its own: no file). How many.
    pub fn forget_call(&self, call_id: &str) -> usize {
        let mut state = self.lock();
        let ids: Vec<String> = state
            .jobs
            .values()
            .filter(|j| j.status != JobStatus::Running)
            .filter(|j| j.call_uuid == call_id || !Path::new(&j.audio_path).exists())
            .map(|j| j.job_id.clone())
            .collect();
        for id in &ids {
            state.jobs.remove(id);
            let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
        }
        ids.len()
    }

    /// Queue depth, running, and counters since start.
    pub fn stats(&self) -> serde_json::Value {
        let state = self.lock();
        let count = |s: JobStatus| state.jobs.values().filter(|j| j.status == s).count();
        serde_json::json!({
            "provider": self.provider.as_ref().ok(),
            "available": self.provider.is_ok(),
            "unavailable_reason": self.provider.as_ref().err(),
            "queue_depth": count(JobStatus::Queued),
            "running": count(JobStatus::Running),
            "completed": count(JobStatus::Completed),
            "failed": count(JobStatus::Failed),
            "since_start": state.counters,
        })
    }

    /// Waits up to `timeout` for a queued job, marks it running and returns it.
    pub(super) fn take_next(&self, timeout: Duration, unix_ms: u64) -> Option<Job> {
        let mut state = self.lock();
        let pick = |s: &State| {
            s.jobs
                .values()
                .filter(|j| j.status == JobStatus::Queued)
                .max_by(|a, b| a.priority.cmp(&b.priority).then(b.seq.cmp(&a.seq)))
                .map(|j| j.job_id.clone())
        };
        let mut id = pick(&state);
        if id.is_none() {
            state = self
                .wake
                .wait_timeout(state, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            id = pick(&state);
        }
        let job = state.jobs.get_mut(&id?)?;
        job.status = JobStatus::Running;
        job.attempts += 1;
        job.started_at = Some(rfc3339_ms(unix_ms));
        let job = job.clone();
        drop(state);
        self.save(&job);
        Some(job)
    }

    /// Records a job's outcome.
    pub(super) fn finish(&self, id: &str, outcome: Result<JobResult, String>, unix_ms: u64) {
        let mut state = self.lock();
        let Some(job) = state.jobs.get_mut(id) else {
            return; // Purged meanwhile.
        };
        job.completed_at = Some(rfc3339_ms(unix_ms));
        let failed = outcome.is_err();
        match outcome {
            Ok(r) => {
                job.status = JobStatus::Completed;
                job.result = Some(r);
            }
            Err(e) => {
                job.status = JobStatus::Failed;
                job.error = Some(e);
            }
        }
        let job = job.clone();
        match failed {
            true => state.counters.failed += 1,
            false => {
                state.counters.completed += 1;
                if let Some(r) = &job.result {
                    state.counters.audio_seconds += r.audio_seconds;
                    state.counters.processing_seconds += r.processing_seconds;
                }
            }
        }
        let mut finished: Vec<(u64, String)> = state
            .jobs
            .values()
            .filter(|j| matches!(j.status, JobStatus::Completed | JobStatus::Failed))
            .map(|j| (j.seq, j.job_id.clone()))
            .collect();
        let excess = finished.len().saturating_sub(FINISHED_MAX);
        finished.sort();
        for (_, old) in finished.into_iter().take(excess) {
            state.jobs.remove(&old);
            let _ = std::fs::remove_file(self.dir.join(format!("{old}.json")));
        }
        drop(state);
        self.save(&job);
    }
}

/// "en-US" → "en"; "auto" stays; anything else must look like a language code.
fn normalize_language(l: &str) -> Option<String> {
    let l = l.to_ascii_lowercase();
    if l == "auto" {
        return Some(l);
    }
    let base = l.split(['-', '_']).next()?;
    ((2..=3).contains(&base.len()) && base.bytes().all(|b| b.is_ascii_lowercase()))
        .then(|| base.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(root: &Path) -> Jobs {
        Jobs::open(root, Ok("embedded"), "en").unwrap()
    }

    fn request(path: &str) -> JobRequest {
        JobRequest {
            audio_path: Some(path.into()),
            ..Default::default()
        }
    }

    /// A job submitted, started and interrupted by a restart is queued again with its id;
    /// a finished one stays finished.
    #[test]
    fn queue_survives_a_restart() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a.wav"), b"RIFF").unwrap();
        let jobs = store(root.path());
        let a = jobs.submit(request("a.wav"), 1).unwrap();
        let b = jobs.submit(request("a.wav"), 2).unwrap();
        assert_eq!(a.status, JobStatus::Queued);
        let running = jobs.take_next(Duration::ZERO, 3).unwrap();
        assert_eq!(running.job_id, a.job_id);
        drop(jobs);
        let jobs = store(root.path());
        assert_eq!(jobs.get(&a.job_id).unwrap().status, JobStatus::Queued);
        let again = jobs.take_next(Duration::ZERO, 4).unwrap();
        assert_eq!(
            (again.job_id.as_str(), again.attempts),
            (a.job_id.as_str(), 2)
        );
        let result = JobResult {
            text: "hi".into(),
            utterances: vec![],
            audio_seconds: 1.0,
            processing_seconds: 0.1,
        };
        jobs.finish(&a.job_id, Ok(result), 5);
        drop(jobs);
        let jobs = store(root.path());
        assert_eq!(jobs.get(&a.job_id).unwrap().status, JobStatus::Completed);
        assert_eq!(jobs.get(&b.job_id).unwrap().status, JobStatus::Queued);
        // New ids never collide with reloaded ones.
        let c = jobs.submit(request("a.wav"), 2).unwrap();
        assert!(c.seq > b.seq);
    }

    /// Higher priority first, then submission order.
    #[test]
    fn priority_then_age() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a.wav"), b"RIFF").unwrap();
        let jobs = store(root.path());
        let low = jobs.submit(request("a.wav"), 1).unwrap();
        let mut r = request("a.wav");
        r.priority = Some(5);
        let high = jobs.submit(r, 2).unwrap();
        let low2 = jobs.submit(request("a.wav"), 3).unwrap();
        let order: Vec<String> = (0..3)
            .map(|i| jobs.take_next(Duration::ZERO, 10 + i).unwrap().job_id)
            .collect();
        assert_eq!(order, [high.job_id, low.job_id, low2.job_id]);
        assert!(jobs.take_next(Duration::ZERO, 20).is_none());
    }

    /// Paths outside the recordings, missing files, other providers and bad languages are
    /// refused with a message; so is everything when no engine runs.
    #[test]
    fn refusals() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a.wav"), b"RIFF").unwrap();
        let jobs = store(root.path());
        let refused = |r: JobRequest| jobs.submit(r, 1).unwrap_err().to_string();
        assert!(refused(request("/etc/passwd")).contains("under RECORDING_DIR"));
        assert!(refused(request("../../etc/passwd")).contains("audio_path"));
        assert!(refused(request("missing.wav")).contains("no such file"));
        assert!(refused(request(".stt-jobs")).contains("RECORDING_DIR"));
        assert!(refused(JobRequest::default()).contains("required"));
        let mut r = request("a.wav");
        r.provider = Some("google".into());
        assert!(refused(r).contains("unsupported provider"));
        let mut r = request("a.wav");
        r.language = Some("en-US".into());
        assert_eq!(jobs.submit(r, 1).unwrap().language, "en");
        let mut r = request("a.wav");
        r.language = Some("english!".into());
        assert!(refused(r).contains("invalid language"));
        let off = Jobs::open(root.path(), Err("model missing".into()), "en").unwrap();
        let e = off.submit(request("a.wav"), 1).unwrap_err();
        assert!(matches!(e, SubmitError::Unavailable(_)), "{e}");
    }

    /// GDPR erase: jobs of the call, and jobs whose recording was erased, are forgotten.
    #[test]
    fn forget_call_removes_its_jobs() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a.wav"), b"RIFF").unwrap();
        std::fs::write(root.path().join("b.wav"), b"RIFF").unwrap();
        let jobs = store(root.path());
        let mut r = request("a.wav");
        r.call_uuid = Some("call-1".into());
        jobs.submit(r, 1).unwrap();
        let b = jobs.submit(request("b.wav"), 2).unwrap();
        let keep = jobs.submit(request("a.wav"), 3).unwrap();
        std::fs::remove_file(root.path().join("b.wav")).unwrap();
        assert_eq!(jobs.forget_call("call-1"), 2);
        assert!(jobs.get(&b.job_id).is_none());
        let left: Vec<String> = store(root.path())
            .list(None, 10)
            .into_iter()
            .map(|j| j.job_id)
            .collect();
        assert_eq!(left, [keep.job_id]);
    }

    #[test]
    fn purge_drops_only_queued() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a.wav"), b"RIFF").unwrap();
        let jobs = store(root.path());
        let a = jobs.submit(request("a.wav"), 1).unwrap();
        jobs.submit(request("a.wav"), 2).unwrap();
        jobs.take_next(Duration::ZERO, 3).unwrap();
        assert_eq!(jobs.purge(), 1);
        assert_eq!(jobs.list(None, 10).len(), 1);
        assert_eq!(jobs.list(Some(JobStatus::Running), 10)[0].job_id, a.job_id);
        assert_eq!(store(root.path()).list(None, 10).len(), 1);
    }
}
