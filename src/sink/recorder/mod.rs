//! The recorder thread: drains the data plane's rings and writes, per recording session, one WAV
//! per stream and optionally one multichannel `mixed.wav`, all aligned to the session's clock.
//!
//! Every file of a recording session lasts exactly `end_ns - start_ns` (in samples, rounded):
//! late start, hold, RTP gaps and loss become silence, because each stream's samples are placed
//! on a `timeline::StreamTimeline` and committed `commit_delay_ms` behind the clock. Headers are
//! patched every `header_patch_interval_ms`, so a SIGKILL leaves valid files (see `wav`).
//!
//! Driving contract: the control plane sends `RecorderCommand`s and reads `RecorderEvent`s on
//! the `RecorderHandle`; data-plane workers push `MediaFrame`s into the rings given to `spawn`.
//! A `StartSession` must be sent before the first frame of that recording session is pushed.
//! Dropping the command sender is the same as `Shutdown`.
//!
//! Refuses: to block the data plane (rings are only popped), to overwrite an existing file, to
//! let one recording session's disk error affect another (it fails alone, with `SessionFailed`
//! and headers valid for what is on disk), to panic on a frame it can't place (frames of unknown
//! sessions, streams, or of a sample rate other than the stream's are counted and dropped), and
//! to change a leg's own file's rate: `mixed.wav` runs at its members' highest rate and slower
//! legs are resampled into it (`mixrate.rs`), while each leg's file keeps its native rate.

mod appendfile;
mod audio;
mod encrypt;
mod error;
mod flac;
pub(crate) mod fsutil;
mod mixrate;
mod oggopus;
mod recover;
pub mod timeline;
mod wav;
pub use appendfile::IO_LATENCY;

pub use audio::{file_name, read_audio, AudioFormat, AudioWriter};
pub use encrypt::{decrypt_file, is_encrypted, Keyring, Opened};
pub use error::RecorderError;
pub use flac::read_flac;
pub use fsutil::{sanitize_component, write_atomic};
pub use oggopus::read_ogg_opus;
pub use recover::{recover, recover_dirs, Recovered, RECOVERED};
pub use timeline::{position_at, StreamTimeline, TimelineStats};
pub use wav::{read_wav, WavInfo, WavWriter};

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use tracing::{info, warn};

use crate::media::activity::{ActivityTotals, CallActivity, SpeakerChange};
use crate::media::{MediaFrame, StreamKey, FRAME_SAMPLES_MAX};
use crate::proto::pii;
use crate::ring::Consumer;

/// When WAV data is fdatasynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Never fsync; a power loss may lose what the page cache held (a SIGKILL loses nothing).
    Never,
    /// Fdatasync with each header patch (and at close); the header then only describes synced
    /// data, so a power loss loses at most one patch interval.
    Periodic,
    /// Fdatasync once, when the file is closed.
    OnClose,
}

/// How far past the BYE a recording keeps audio that arrived before it (the last packet's
/// ptime, with room for 120 ms packets and jitter).
const TAIL_MAX_NS: u64 = 200 * NANOS_PER_MS;

/// The recorder's configuration, captured at `spawn`.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// Also write `mixed.wav`, one channel per stream of the initial offer.
    pub combine_legs: bool,
    /// How far behind the clock samples are committed to files, in ms: the longest a frame may
    /// be late (jitter, reordering) and still be recorded. Default 300.
    /// Memory: (commit_delay_ms + 2000) × rate / 1000 × 2 B per stream (37 KiB at 8 kHz).
    pub commit_delay_ms: u32,
    /// How often headers are rewritten to describe what is on disk, in ms. Default 1000: a
    /// SIGKILL loses at most this much of each file's tail (it stays on disk, undescribed).
    pub header_patch_interval_ms: u32,
    pub fsync: FsyncPolicy,
    /// File format of every recording file (`RECORDING_FORMAT`). Default WAV.
    pub format: AudioFormat,
    /// Opus bit rate per channel, bit/s (`RECORDING_OPUS_BITRATE`). Default 32000.
    pub opus_bitrate: u32,
    /// Encryption at rest (`RECORDING_ENCRYPTION_KEY_FILE`): every file under the keyring's
    /// active key. Default none.
    pub encryption: Option<std::sync::Arc<Keyring>>,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            combine_legs: true,
            commit_delay_ms: 300,
            header_patch_interval_ms: 1000,
            fsync: FsyncPolicy::Periodic,
            format: AudioFormat::Wav,
            opus_bitrate: 32_000,
            encryption: None,
        }
    }
}

/// One stream to record.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// Stream index in the recording session (`StreamKey::stream`).
    pub index: u32,
    /// File name without extension, already sanitized: "<label or index>". Sanitized again and
    /// made unique within the session (suffix `-<index>`) before use.
    pub file_stem: String,
    pub sample_rate: u32,
    /// Give this stream a channel in `mixed.wav` (only honoured in `StartSession`).
    pub in_mixed: bool,
}

#[derive(Debug)]
pub enum RecorderCommand {
    /// Starts recording into `dir` (created with its parents). Files start at `start_ns`.
    StartSession {
        session: u64,
        dir: PathBuf,
        start_ns: u64,
        streams: Vec<StreamSpec>,
    },
    /// A stream added by re-INVITE: its own file, silence from the session's start, never in
    /// `mixed.wav` (whose channel count is fixed).
    AddStream { session: u64, spec: StreamSpec },
    /// Finalizes once the clock reaches `end_ns + commit_delay`: commits exactly to `end_ns`,
    /// patches, fsyncs per policy, closes, then emits `SessionClosed`. Send it promptly: audio
    /// already committed past a stale `end_ns` is kept, so such files run longer.
    StopSession { session: u64, end_ns: u64 },
    /// Finalizes every recording session at "now" (or its `end_ns`, if earlier) and exits.
    Shutdown,
}

/// One file a closed recording session left on disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordedFile {
    pub path: PathBuf,
    /// The stream's index, or `None` for `mixed.wav`.
    pub stream: Option<u32>,
    pub channels: u16,
    pub sample_rate: u32,
    pub frames: u64,
    /// The id of the key the file is encrypted with (never the key); absent when plain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StreamRecordStats {
    pub index: u32,
    pub frames_received: u64,
    pub samples_late_dropped: u64,
    pub resyncs: u64,
    /// Samples beyond the timeline's buffer even after re-anchoring (the recorder stalled).
    pub samples_early_dropped: u64,
    /// Frames whose sample rate differed from the stream's (no resampling yet).
    pub frames_rate_mismatch_dropped: u64,
}

#[derive(Debug)]
pub enum RecorderEvent {
    /// The recording session was finalized. `error` is set when finalizing hit an error; the
    /// files are then valid for what reached the disk.
    SessionClosed {
        session: u64,
        files: Vec<RecordedFile>,
        streams: Vec<StreamRecordStats>,
        error: Option<String>,
    },
    /// The recording session could not start or hit a write error while recording. Its files
    /// were closed with headers valid for what is on disk; later commands for it are ignored.
    SessionFailed { session: u64, error: String },
    /// Talk time, dead air, overtalk and speaker changes so far: every 5 s of call time, and
    /// once more (`final_`) just before `SessionClosed`.
    Activity {
        session: u64,
        totals: ActivityTotals,
        changes: Vec<SpeakerChange>,
        final_: bool,
    },
}

/// The control plane's end of the recorder.
pub struct RecorderHandle {
    pub commands: Sender<RecorderCommand>,
    pub events: Receiver<RecorderEvent>,
    /// Counters for metrics exposition, updated by the recorder thread.
    pub counters: Arc<RecorderCounters>,
}

/// Recorder-wide counters (relaxed atomics, read by the metrics endpoint).
#[derive(Debug, Default)]
pub struct RecorderCounters {
    /// Frames popped from the rings, whatever became of them.
    pub frames_popped: AtomicU64,
    /// Frames for a recording session or stream the recorder does not know (already closed).
    pub frames_unknown_dropped: AtomicU64,
    /// Frames with `len` above `FRAME_SAMPLES_MAX` (a data-plane bug).
    pub frames_malformed_dropped: AtomicU64,
    pub sessions_closed: AtomicU64,
    pub sessions_failed: AtomicU64,
}

/// The monotonic clock that `MediaFrame::arrival_ns` is read from.
pub trait MonotonicClock: Send + 'static {
    fn now_ns(&self) -> u64;
}

/// `CLOCK_MONOTONIC`, in nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemMonotonicClock;

impl MonotonicClock for SystemMonotonicClock {
    fn now_ns(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always supported on
        // Linux, so the call cannot fail.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        debug_assert_eq!(rc, 0);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

/// Starts the recorder thread (named "recorder"). It owns `rings` and `clock` until it exits.
pub fn spawn<C: MonotonicClock>(
    config: RecorderConfig,
    rings: Vec<Consumer<MediaFrame>>,
    clock: C,
) -> std::io::Result<(RecorderHandle, std::thread::JoinHandle<()>)> {
    let (handle, recorder) = new_recorder(config, rings);
    let join = std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || recorder.run(clock))?;
    Ok((handle, join))
}

/// The recorder without its thread: the caller owns time and calls `step(now)` for each turn
/// of the thread's loop. Simulations drive it this way (tests/simulation.rs).
pub fn stepped(
    config: RecorderConfig,
    rings: Vec<Consumer<MediaFrame>>,
) -> (RecorderHandle, SteppedRecorder) {
    let (handle, recorder) = new_recorder(config, rings);
    (handle, SteppedRecorder(recorder))
}

/// See [`stepped`].
pub struct SteppedRecorder(Recorder);

impl SteppedRecorder {
    /// One turn at `now_ns` (the frames' clock): commands, rings, commits, header patches.
    /// False once a shutdown was asked for; then call `finish`.
    pub fn step(&mut self, now_ns: u64) -> bool {
        self.0.step(now_ns) != Turn::Shutdown
    }

    /// Closes every session still open, as the thread does on its way out.
    pub fn finish(self, now_ns: u64) {
        self.0.finish(now_ns);
    }
}

fn new_recorder(
    config: RecorderConfig,
    rings: Vec<Consumer<MediaFrame>>,
) -> (RecorderHandle, Recorder) {
    let (command_tx, command_rx) = crossbeam_channel::unbounded();
    let (event_tx, event_rx) = crossbeam_channel::unbounded();
    let counters = Arc::new(RecorderCounters::default());
    let recorder = Recorder {
        commit_delay_ns: u64::from(config.commit_delay_ms) * NANOS_PER_MS,
        patch_interval_ns: u64::from(config.header_patch_interval_ms.max(1)) * NANOS_PER_MS,
        config,
        rings,
        commands: command_rx,
        events: event_tx,
        counters: counters.clone(),
        sessions: HashMap::new(),
        next_commit_ns: 0,
        next_patch_ns: 0,
        shutdown_requested: false,
        scratch_ids: Vec::new(),
    };
    let handle = RecorderHandle {
        commands: command_tx,
        events: event_rx,
        counters,
    };
    (handle, recorder)
}

/// What one turn of the loop found.
#[derive(Debug, PartialEq, Eq)]
enum Turn {
    Busy,
    /// No command and empty rings: the thread sleeps a little.
    Idle,
    Shutdown,
}

struct Recorder {
    config: RecorderConfig,
    commit_delay_ns: u64,
    patch_interval_ns: u64,
    rings: Vec<Consumer<MediaFrame>>,
    commands: Receiver<RecorderCommand>,
    events: Sender<RecorderEvent>,
    counters: Arc<RecorderCounters>,
    sessions: HashMap<u64, RecordingSession>,
    next_commit_ns: u64,
    next_patch_ns: u64,
    shutdown_requested: bool,
    scratch_ids: Vec<u64>,
}

impl Recorder {
    fn run<C: MonotonicClock>(mut self, clock: C) {
        info!(rings = self.rings.len(), "recorder started");
        loop {
            match self.step(clock.now_ns()) {
                Turn::Busy => {}
                Turn::Idle => std::thread::sleep(IDLE_SLEEP),
                Turn::Shutdown => break,
            }
        }
        self.finish(clock.now_ns());
        info!("recorder stopped");
    }

    /// One turn of the loop at `now`.
    fn step(&mut self, now: u64) -> Turn {
        // One per turn: opening a session's files takes a millisecond or, when ext4 looks for
        // a free inode among many recently deleted ones, hundreds; calls set up by the hundred
        // must not keep the rings undrained meanwhile (a ring holds 20 ms at 200,000
        // packets/s). A frame of a session still queued pulls its command forward.
        let commands = self.drain_commands(COMMANDS_PER_TURN);
        if self.shutdown_requested {
            return Turn::Shutdown;
        }
        let drained = self.drain_rings(FRAMES_PER_RING_BATCH);
        if self.shutdown_requested {
            return Turn::Shutdown;
        }
        // Drain before committing: a frame that arrived in time must not turn late because
        // it waited in a ring while this thread was descheduled. With a backlog left in a
        // ring, the commit waits, but not beyond COMMIT_BACKLOG_WAIT_NS (memory is bounded).
        let due = now >= self.next_commit_ns;
        let overdue = now >= self.next_commit_ns.saturating_add(COMMIT_BACKLOG_WAIT_NS);
        if due && (drained != Drained::Backlog || overdue) {
            self.commit_all(now);
            self.finalize_due(now);
            self.next_commit_ns = now + COMMIT_INTERVAL_NS;
        }
        if now >= self.next_patch_ns {
            self.patch_all();
            self.next_patch_ns = now + self.patch_interval_ns;
        }
        if !commands && drained == Drained::Empty {
            Turn::Idle
        } else {
            Turn::Busy
        }
    }

    /// Closes every session still open (shutdown), at `now`.
    fn finish(mut self, now: u64) {
        // Frames already in the rings belong to the recordings; take them before closing.
        self.drain_rings(FRAMES_PER_RING_SHUTDOWN);
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            let session = self.sessions.remove(&id).expect("id taken from the map");
            let end_ns = session.end_ns.map_or(now, |end| end.min(now));
            self.close(session, end_ns);
        }
    }

    /// Handles up to `max` queued commands, in order; returns whether there was any.
    fn drain_commands(&mut self, max: usize) -> bool {
        let mut any = false;
        for _ in 0..max {
            if self.shutdown_requested {
                break;
            }
            match self.commands.try_recv() {
                Ok(command) => {
                    any = true;
                    self.handle_command(command);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.shutdown_requested = true,
            }
        }
        any
    }

    fn handle_command(&mut self, command: RecorderCommand) {
        match command {
            RecorderCommand::StartSession {
                session,
                dir,
                start_ns,
                streams,
            } => {
                if self.sessions.contains_key(&session) {
                    warn!(
                        session,
                        "StartSession for a recording session already recording"
                    );
                    return;
                }
                let config = &self.config;
                let shown = dir.display().to_string();
                match RecordingSession::open(session, dir, start_ns, &streams, config) {
                    // The next regular commit catches up with a start in the past. Not here: a
                    // StopSession queued right behind must be seen first.
                    Ok(recording) => {
                        self.sessions.insert(session, recording);
                    }
                    Err(e) => {
                        self.counters
                            .sessions_failed
                            .fetch_add(1, Ordering::Relaxed);
                        let logged = pii::redact_in(&e.to_string(), &shown);
                        warn!(session, error = %logged, "recording session failed to start");
                        self.emit(RecorderEvent::SessionFailed {
                            session,
                            error: e.to_string(),
                        });
                    }
                }
            }
            RecorderCommand::AddStream { session, spec } => {
                let Some(recording) = self.sessions.get_mut(&session) else {
                    warn!(
                        session,
                        stream = spec.index,
                        "AddStream for an unknown recording session"
                    );
                    return;
                };
                if let Err(e) = recording.add_stream(&spec, &self.config) {
                    let recording = self.sessions.remove(&session).expect("looked up above");
                    self.fail(recording, e);
                }
            }
            RecorderCommand::StopSession { session, end_ns } => {
                match self.sessions.get_mut(&session) {
                    Some(recording) => recording.end_ns = Some(end_ns),
                    None => warn!(session, "StopSession for an unknown recording session"),
                }
            }
            RecorderCommand::Shutdown => self.shutdown_requested = true,
        }
    }

    /// Pops up to `batch` frames from each ring.
    fn drain_rings(&mut self, batch: usize) -> Drained {
        let mut drained = Drained::Empty;
        let mut popped_total = 0;
        // The rings leave `self` while frames are handled in place (no copy out of a slot).
        let mut rings = std::mem::take(&mut self.rings);
        for ring in rings.iter_mut() {
            let mut popped = 0;
            while popped < batch {
                if ring.pop_with(|frame| self.handle_frame(frame)).is_none() {
                    break;
                }
                popped += 1;
            }
            popped_total += popped as u64;
            if popped == batch {
                drained = Drained::Backlog;
            } else if popped > 0 && drained == Drained::Empty {
                drained = Drained::Some;
            }
        }
        self.rings = rings;
        // Published after the frames were handled: a reader that sees the count sees them placed.
        self.counters
            .frames_popped
            .fetch_add(popped_total, Ordering::Release);
        drained
    }

    fn handle_frame(&mut self, frame: &MediaFrame) {
        if usize::from(frame.len) > FRAME_SAMPLES_MAX {
            self.counters
                .frames_malformed_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !self.knows(frame.key) && !self.shutdown_requested {
            // The control plane sends StartSession (or AddStream) before the data plane pushes
            // the stream's first frame, but this thread may have polled the command channel in
            // between, or not reached it yet: take commands, in order, until it is known.
            while !self.knows(frame.key) && self.drain_commands(1) {}
        }
        let stream = self
            .sessions
            .get_mut(&frame.key.session)
            .and_then(|s| s.streams.iter_mut().find(|st| st.index == frame.key.stream));
        let Some(stream) = stream else {
            self.counters
                .frames_unknown_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        if frame.sample_rate != stream.timeline.sample_rate() {
            stream.frames_rate_mismatch_dropped += 1;
            return;
        }
        stream.timeline.handle_frame(
            frame.arrival_ns,
            frame.ext_ts,
            frame.ssrc_epoch,
            frame.pcm(),
        );
    }

    fn knows(&self, key: StreamKey) -> bool {
        self.sessions
            .get(&key.session)
            .is_some_and(|s| s.streams.iter().any(|st| st.index == key.stream))
    }

    fn commit_all(&mut self, now: u64) {
        let target = now.saturating_sub(self.commit_delay_ns);
        let mut failed = Vec::new();
        let mut reports = Vec::new();
        let ids = self.session_ids();
        for (k, id) in ids.iter().enumerate() {
            self.drain_between_sessions(k);
            let Some(recording) = self.sessions.get_mut(id) else {
                continue;
            };
            if let Err(e) = recording.commit_to(target) {
                failed.push((*id, e));
            } else if let Some(report) = recording.activity_report(false) {
                reports.push(report);
            }
        }
        self.scratch_ids = ids;
        for report in reports {
            self.emit(report);
        }
        self.fail_all(failed);
    }

    fn patch_all(&mut self) {
        let sync = self.config.fsync == FsyncPolicy::Periodic;
        let mut failed = Vec::new();
        let ids = self.session_ids();
        for (k, id) in ids.iter().enumerate() {
            self.drain_between_sessions(k);
            let Some(recording) = self.sessions.get_mut(id) else {
                continue;
            };
            if let Err(e) = recording.checkpoint(sync) {
                failed.push((*id, e));
            }
        }
        self.scratch_ids = ids;
        self.fail_all(failed);
    }

    /// The open sessions' ids, in the reused scratch vector (give it back when done).
    fn session_ids(&mut self) -> Vec<u64> {
        let mut ids = std::mem::take(&mut self.scratch_ids);
        ids.clear();
        ids.extend(self.sessions.keys().copied());
        ids
    }

    /// A pass over thousands of sessions (file writes, header patches) takes longer than a
    /// ring holds at full rate (4,096 slots are 20 ms at 200,000 packets/s): the rings are
    /// drained every `SESSIONS_PER_DRAIN` sessions so they never fill meanwhile.
    fn drain_between_sessions(&mut self, k: usize) {
        if k > 0 && k.is_multiple_of(SESSIONS_PER_DRAIN) {
            self.drain_rings(FRAMES_PER_RING_BATCH);
        }
    }

    fn finalize_due(&mut self, now: u64) {
        let delay = self.commit_delay_ns;
        let due: Vec<(u64, u64)> = self
            .sessions
            .iter()
            .filter_map(|(id, s)| s.end_ns.map(|end| (*id, end)))
            .filter(|(_, end)| now >= end.saturating_add(delay))
            .collect();
        for (k, (id, end_ns)) in due.into_iter().enumerate() {
            self.drain_between_sessions(k);
            // A drain may have handled a command that failed the session (an AddStream that
            // could not create its file): it is closed and reported already.
            let Some(recording) = self.sessions.remove(&id) else {
                continue;
            };
            self.close(recording, end_ns);
        }
    }

    /// Commits to `end_ns`, closes every file and emits `SessionClosed`. A BYE can race the
    /// last packet: audio that arrived before it and plays past it is kept, up to
    /// [`TAIL_MAX_NS`] (never beyond the commit delay, which is all that is placed then).
    fn close(&mut self, mut recording: RecordingSession, end_ns: u64) {
        let tail = recording
            .streams
            .iter()
            .map(|s| s.timeline.placed_end_ns())
            .max()
            .unwrap_or(0);
        let reach = end_ns.saturating_add(TAIL_MAX_NS.min(self.commit_delay_ns));
        let end_ns = end_ns.max(tail.min(reach));
        recording.end_ns = Some(end_ns);
        let session = recording.id;
        let mut error = recording.commit_to(end_ns).err();
        // Resampled legs' tails, then silence for any leg that ends short.
        if let (None, Some(mixed)) = (&error, &mut recording.mixed) {
            for &m in &mixed.members {
                let s = &mut recording.streams[m];
                if let Some(c) = &mut s.mix_conv {
                    c.finish(&mut s.mix_fifo);
                }
            }
            error = write_mix(&mut recording.streams, mixed, true).err();
        }
        if let Some(report) = recording.activity_report(true) {
            self.emit(report);
        }
        let streams = recording.stats();
        let shown = recording.dir.display().to_string();
        let (files, close_error) = recording.close_files(self.config.fsync);
        error = error.or(close_error);
        self.counters
            .sessions_closed
            .fetch_add(1, Ordering::Relaxed);
        if let Some(e) = &error {
            let logged = pii::redact_in(&e.to_string(), &shown);
            warn!(session, error = %logged, "recording session closed with an error");
        }
        let error = error.map(|e| e.to_string());
        self.emit(RecorderEvent::SessionClosed {
            session,
            files,
            streams,
            error,
        });
    }

    fn fail_all(&mut self, failed: Vec<(u64, RecorderError)>) {
        for (id, e) in failed {
            // Gone when a drain during the pass failed it already (see `finalize_due`).
            let Some(recording) = self.sessions.remove(&id) else {
                continue;
            };
            self.fail(recording, e);
        }
    }

    /// Closes a recording session's files as they are and emits `SessionFailed`.
    fn fail(&mut self, recording: RecordingSession, error: RecorderError) {
        self.counters
            .sessions_failed
            .fetch_add(1, Ordering::Relaxed);
        warn!(session = recording.id, error = %error, "recording session failed");
        let id = recording.id;
        // The headers describe what is on disk whatever happens here; the first error is the one
        // worth reporting.
        let _ = recording.close_files(FsyncPolicy::Never);
        self.emit(RecorderEvent::SessionFailed {
            session: id,
            error: error.to_string(),
        });
    }

    fn emit(&self, event: RecorderEvent) {
        // The control plane may be gone during shutdown; nobody is left to tell.
        let _ = self.events.send(event);
    }
}

/// What one pass over the rings found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    Empty,
    Some,
    /// A ring still held frames when its batch ran out.
    Backlog,
}

/// One recording session's files and timelines.
struct RecordingSession {
    id: u64,
    dir: PathBuf,
    start_ns: u64,
    /// Set by StopSession; commits never go past it.
    end_ns: Option<u64>,
    /// The instant everything is committed up to (per stream, at its own rate).
    committed_ns: u64,
    streams: Vec<StreamRecording>,
    mixed: Option<MixedRecording>,
    /// Who talks when, from the committed audio.
    activity: CallActivity,
    /// Windows covered by the last `Activity` report.
    reported_windows: u64,
}

struct StreamRecording {
    index: u32,
    timeline: StreamTimeline,
    writer: AudioWriter,
    /// Channel of `mixed.wav`, if any. Mixed streams are committed together in chunks.
    in_mix: bool,
    /// One chunk of committed samples, for the mix. Allocated once (empty if not in the mix).
    chunk: Vec<i16>,
    /// Committed samples at the mix's rate not yet in `mixed.wav` (a converter's step behind
    /// at most), and the converter when this stream's rate is not the mix's.
    mix_fifo: VecDeque<i16>,
    mix_conv: Option<mixrate::RateConverter>,
    frames_rate_mismatch_dropped: u64,
}

struct MixedRecording {
    writer: AudioWriter,
    /// Indices into `RecordingSession::streams`, in channel order.
    members: Vec<usize>,
    /// One interleaved chunk. Allocated once.
    interleaved: Vec<i16>,
}

impl RecordingSession {
    fn open(
        id: u64,
        dir: PathBuf,
        start_ns: u64,
        specs: &[StreamSpec],
        config: &RecorderConfig,
    ) -> Result<RecordingSession, RecorderError> {
        std::fs::create_dir_all(&dir).map_err(|e| RecorderError::io("create_dir_all", &dir, e))?;
        let mut recording = RecordingSession {
            id,
            dir,
            start_ns,
            end_ns: None,
            committed_ns: start_ns,
            streams: Vec::with_capacity(specs.len()),
            mixed: None,
            activity: CallActivity::new(),
            reported_windows: 0,
        };
        // The mix runs at its members' highest rate; slower legs are resampled into it.
        let mix_rate = specs
            .iter()
            .filter(|s| config.combine_legs && s.in_mixed && s.sample_rate > 0)
            .map(|s| s.sample_rate)
            .max();
        for spec in specs {
            let in_mix = config.combine_legs && spec.in_mixed;
            recording.add_stream_inner(spec, config, in_mix)?;
            let (Some(rate), Some(stream)) = (mix_rate, recording.streams.last_mut()) else {
                continue;
            };
            if stream.in_mix && spec.sample_rate != rate {
                match mixrate::RateConverter::new(spec.sample_rate, rate) {
                    Ok(c) => stream.mix_conv = Some(c),
                    Err(e) => {
                        warn!(session = id, stream = spec.index, error = %e,
                            "stream left out of mixed.wav");
                        stream.in_mix = false;
                    }
                }
            }
        }
        let members: Vec<usize> = (0..recording.streams.len())
            .filter(|&i| recording.streams[i].in_mix)
            .collect();
        if let (false, Some(sample_rate)) = (members.is_empty(), mix_rate) {
            let channels = u16::try_from(members.len()).unwrap_or(u16::MAX);
            let members = members[..usize::from(channels)].to_vec();
            let writer = AudioWriter::create(
                &recording.dir,
                MIXED_STEM,
                channels,
                sample_rate,
                config.format,
                config.opus_bitrate,
                config.encryption.as_deref(),
            )?;
            let interleaved = Vec::with_capacity(MIX_CHUNK_FRAMES * members.len());
            recording.mixed = Some(MixedRecording {
                writer,
                members,
                interleaved,
            });
        }
        Ok(recording)
    }

    /// A stream added by re-INVITE: silence from the session's start up to the current commit.
    fn add_stream(
        &mut self,
        spec: &StreamSpec,
        config: &RecorderConfig,
    ) -> Result<(), RecorderError> {
        self.add_stream_inner(spec, config, false)?;
        let stream = self.streams.last_mut().expect("just added");
        let upto = position_at(
            self.committed_ns,
            self.start_ns,
            stream.timeline.sample_rate(),
        );
        commit_solo(stream, upto.max(0) as u64, &mut self.activity)
    }

    fn add_stream_inner(
        &mut self,
        spec: &StreamSpec,
        config: &RecorderConfig,
        in_mix: bool,
    ) -> Result<(), RecorderError> {
        if self.streams.iter().any(|s| s.index == spec.index) {
            warn!(
                session = self.id,
                stream = spec.index,
                "stream index already recorded; ignored"
            );
            return Ok(());
        }
        if spec.sample_rate == 0 {
            let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "sample rate 0");
            return Err(RecorderError::io(
                "create",
                self.dir.join(&spec.file_stem),
                source,
            ));
        }
        let format = config.format.for_stream(1, spec.sample_rate);
        let stem = self.unique_stem(spec, format, config.encryption.is_some());
        let writer = AudioWriter::create(
            &self.dir,
            &stem,
            1,
            spec.sample_rate,
            format,
            config.opus_bitrate,
            config.encryption.as_deref(),
        )?;
        let capacity = StreamTimeline::capacity_for(spec.sample_rate, config.commit_delay_ms);
        self.activity.add_stream(spec.index, spec.sample_rate);
        self.streams.push(StreamRecording {
            index: spec.index,
            timeline: StreamTimeline::new(self.start_ns, spec.sample_rate, capacity),
            writer,
            in_mix,
            chunk: Vec::with_capacity(if in_mix { MIX_CHUNK_FRAMES } else { 0 }),
            mix_fifo: VecDeque::new(),
            mix_conv: None,
            frames_rate_mismatch_dropped: 0,
        });
        Ok(())
    }

    /// The stream's file stem, or `<stem>-<index>` if that name is taken in this session.
    fn unique_stem(&self, spec: &StreamSpec, format: AudioFormat, encrypted: bool) -> String {
        let stem = sanitize_component(&spec.file_stem);
        let taken = |stem: &str| {
            let path = audio::path_for(&self.dir, stem, format, encrypted);
            stem == MIXED_STEM || self.streams.iter().any(|s| s.writer.path() == path)
        };
        if !taken(&stem) {
            return stem;
        }
        sanitize_component(&format!("{stem}-{}", spec.index))
    }

    /// Commits every stream up to `target_ns` (never past `end_ns`).
    fn commit_to(&mut self, target_ns: u64) -> Result<(), RecorderError> {
        let target_ns = self.end_ns.map_or(target_ns, |end| target_ns.min(end));
        if target_ns <= self.committed_ns {
            return Ok(());
        }
        self.committed_ns = target_ns;
        if let Some(mixed) = &mut self.mixed {
            commit_mixed(
                &mut self.streams,
                mixed,
                (target_ns, self.start_ns),
                &mut self.activity,
            )?;
        }
        for stream in self.streams.iter_mut().filter(|s| !s.in_mix) {
            let rate = stream.timeline.sample_rate();
            let upto = position_at(target_ns, self.start_ns, rate).max(0) as u64;
            commit_solo(stream, upto, &mut self.activity)?;
        }
        Ok(())
    }

    /// An `Activity` report when `final_` or another `ACTIVITY_REPORT_WINDOWS` are analysed.
    fn activity_report(&mut self, final_: bool) -> Option<RecorderEvent> {
        let totals = self.activity.totals();
        if !final_ && totals.windows < self.reported_windows + ACTIVITY_REPORT_WINDOWS {
            return None;
        }
        self.reported_windows = totals.windows;
        Some(RecorderEvent::Activity {
            session: self.id,
            totals,
            changes: self.activity.take_changes(),
            final_,
        })
    }

    fn checkpoint(&mut self, sync: bool) -> Result<(), RecorderError> {
        for stream in &mut self.streams {
            stream.writer.checkpoint(sync)?;
        }
        if let Some(mixed) = &mut self.mixed {
            mixed.writer.checkpoint(sync)?;
        }
        Ok(())
    }

    fn stats(&self) -> Vec<StreamRecordStats> {
        self.streams
            .iter()
            .map(|s| {
                let t = s.timeline.stats();
                StreamRecordStats {
                    index: s.index,
                    frames_received: t.frames_received,
                    samples_late_dropped: t.samples_late_dropped,
                    resyncs: t.resyncs,
                    samples_early_dropped: t.samples_early_dropped,
                    frames_rate_mismatch_dropped: s.frames_rate_mismatch_dropped,
                }
            })
            .collect()
    }

    /// Closes every file (each one even if another failed); returns what is on disk and the
    /// first error.
    fn close_files(self, fsync: FsyncPolicy) -> (Vec<RecordedFile>, Option<RecorderError>) {
        let sync = fsync != FsyncPolicy::Never;
        let mut files = Vec::new();
        let mut first_error = None;
        let writers = self
            .streams
            .into_iter()
            .map(|s| (Some(s.index), s.writer))
            .chain(self.mixed.map(|m| (None, m.writer)));
        for (stream, writer) in writers {
            let result = writer.finish(sync);
            match result {
                Ok(info) => files.push(RecordedFile {
                    path: info.path,
                    stream,
                    channels: info.channels,
                    sample_rate: info.sample_rate,
                    frames: info.frames,
                    key_id: info.key_id,
                }),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if sync {
            // New directory entries must survive a power loss too.
            if let Err(e) = fsutil::sync_dir(&self.dir) {
                first_error.get_or_insert(e);
            }
        }
        (files, first_error)
    }
}

/// Commits a stream that is not in the mix straight into its file.
fn commit_solo(
    stream: &mut StreamRecording,
    upto: u64,
    activity: &mut CallActivity,
) -> Result<(), RecorderError> {
    let StreamRecording {
        timeline,
        writer,
        index,
        ..
    } = stream;
    let mut result = Ok(());
    timeline.commit(upto, |samples| {
        activity.feed(*index, samples);
        if result.is_ok() {
            result = writer.write_interleaved(samples);
        }
    });
    result
}

/// Commits each mixed stream at its own rate up to `target_ns` into its own file and, at the
/// mix's rate, into its FIFO; then writes to `mixed.wav` what every FIFO has.
fn commit_mixed(
    streams: &mut [StreamRecording],
    mixed: &mut MixedRecording,
    (target_ns, start_ns): (u64, u64),
    activity: &mut CallActivity,
) -> Result<(), RecorderError> {
    for &m in &mixed.members {
        let StreamRecording {
            timeline,
            writer,
            chunk,
            index,
            mix_fifo,
            mix_conv,
            ..
        } = &mut streams[m];
        let upto = position_at(target_ns, start_ns, timeline.sample_rate()).max(0) as u64;
        loop {
            let from = timeline.committed();
            if from >= upto {
                break;
            }
            let next = upto.min(from + MIX_CHUNK_FRAMES as u64);
            chunk.clear();
            timeline.commit(next, |samples| chunk.extend_from_slice(samples));
            activity.feed(*index, chunk);
            writer.write_interleaved(chunk)?;
            match mix_conv {
                Some(c) => c.push(chunk, mix_fifo),
                None => mix_fifo.extend(chunk.iter().copied()),
            }
        }
    }
    write_mix(streams, mixed, false)
}

/// Interleaves the members' FIFOs into `mixed.wav`: as many frames as every FIFO has, or at
/// the end (`to_longest`) as many as the longest has, the others padded with silence.
fn write_mix(
    streams: &mut [StreamRecording],
    mixed: &mut MixedRecording,
    to_longest: bool,
) -> Result<(), RecorderError> {
    let lens = mixed.members.iter().map(|&m| streams[m].mix_fifo.len());
    let mut left = if to_longest { lens.max() } else { lens.min() }.unwrap_or(0);
    let channels = mixed.members.len();
    while left > 0 {
        let frames = left.min(MIX_CHUNK_FRAMES);
        mixed.interleaved.clear();
        mixed.interleaved.resize(frames * channels, 0);
        for (c, &m) in mixed.members.iter().enumerate() {
            let fifo = &mut streams[m].mix_fifo;
            let take = frames.min(fifo.len());
            let column = mixed.interleaved[c..].iter_mut().step_by(channels);
            for (dst, sample) in column.zip(fifo.drain(..take)) {
                *dst = sample;
            }
        }
        mixed.writer.write_interleaved(&mixed.interleaved)?;
        left -= frames;
    }
    Ok(())
}

/// Stem of the multichannel file in a recording session's directory (`mixed.wav`).
const MIXED_STEM: &str = "mixed";

/// Analysed windows between two `Activity` reports (5 s of call time).
const ACTIVITY_REPORT_WINDOWS: u64 = 5000 / crate::media::activity::WINDOW_MS;

/// Sample frames per lockstep commit of the mix (0.5 s at 8 kHz).
const MIX_CHUNK_FRAMES: usize = 4096;

/// How often timelines are committed to files.
const COMMIT_INTERVAL_NS: u64 = 100 * NANOS_PER_MS;

/// Longest a commit waits for a ring backlog to clear (the rings' depth bounds the backlog).
const COMMIT_BACKLOG_WAIT_NS: u64 = 500 * NANOS_PER_MS;

/// Frames popped from one ring per iteration, so that one busy worker can't starve the others
/// or the commands.
const FRAMES_PER_RING_BATCH: usize = 256;

/// Commands handled per turn of the loop, between ring drains.
const COMMANDS_PER_TURN: usize = 1;

/// Sessions committed or patched between two ring drains in a pass over all of them.
const SESSIONS_PER_DRAIN: usize = 32;

/// Frames popped from one ring at shutdown, to take what is queued without chasing a producer
/// that never stops.
const FRAMES_PER_RING_SHUTDOWN: usize = 65_536;

/// Sleep when rings and commands were all empty: short against the commit delay.
const IDLE_SLEEP: Duration = Duration::from_millis(1);

const NANOS_PER_MS: u64 = 1_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{self, Producer};

    const MS: u64 = 1_000_000;
    const START: u64 = 1_000_000 * MS;
    const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

    #[derive(Clone)]
    struct FakeClock(Arc<AtomicU64>);

    impl MonotonicClock for FakeClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl FakeClock {
        fn set(&self, ns: u64) {
            self.0.store(ns, Ordering::SeqCst);
        }
    }

    /// A running recorder fed through a real ring, with a clock the test controls. `advance`
    /// waits until the recorder has popped every frame pushed so far, as a recorder keeping up
    /// with real time would have.
    struct Rig {
        clock: FakeClock,
        pushed: u64,
        producer: Producer<MediaFrame>,
        handle: RecorderHandle,
        join: std::thread::JoinHandle<()>,
    }

    impl Rig {
        fn new(config: RecorderConfig) -> Rig {
            let clock = FakeClock(Arc::new(AtomicU64::new(START)));
            let (producer, consumer) = ring::channel(8);
            let (handle, join) = spawn(config, vec![consumer], clock.clone()).unwrap();
            Rig {
                clock,
                pushed: 0,
                producer,
                handle,
                join,
            }
        }

        fn push(&mut self, session: u64, stream: u32, arrival_ns: u64, ext_ts: u64, pcm: &[i16]) {
            let mut frame = MediaFrame {
                key: StreamKey { session, stream },
                arrival_ns,
                ext_ts,
                ssrc_epoch: 0,
                sample_rate: 8000,
                len: pcm.len() as u16,
                samples: [0; FRAME_SAMPLES_MAX],
            };
            frame.samples[..pcm.len()].copy_from_slice(pcm);
            let mut pending = frame;
            while let Err(back) = self.producer.push(pending) {
                pending = back;
                std::thread::yield_now();
            }
            self.pushed += 1;
        }

        fn advance(&self, now_ns: u64) {
            let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
            while self.handle.counters.frames_popped.load(Ordering::Acquire) < self.pushed {
                assert!(
                    std::time::Instant::now() < deadline,
                    "recorder stopped popping"
                );
                std::thread::yield_now();
            }
            self.clock.set(now_ns);
        }

        fn send(&self, command: RecorderCommand) {
            self.handle.commands.send(command).unwrap();
        }

        /// The next event other than an `Activity` report.
        fn next_event(&self) -> RecorderEvent {
            loop {
                let e = self
                    .handle
                    .events
                    .recv_timeout(EVENT_TIMEOUT)
                    .expect("recorder event");
                if !matches!(e, RecorderEvent::Activity { .. }) {
                    return e;
                }
            }
        }

        fn shutdown(self) {
            self.send(RecorderCommand::Shutdown);
            self.join.join().unwrap();
        }
    }

    fn spec(index: u32, stem: &str) -> StreamSpec {
        StreamSpec {
            index,
            file_stem: stem.into(),
            sample_rate: 8000,
            in_mixed: true,
        }
    }

    /// Compares a file with the expected 8 kHz samples, naming the first differing position.
    fn assert_wav(path: &std::path::Path, channels: u16, expected: &[i16]) {
        let (ch, rate, got) = read_wav(path).unwrap();
        assert_eq!(
            (ch, rate, got.len()),
            (channels, 8000, expected.len()),
            "{path:?}"
        );
        if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
            panic!(
                "{path:?} differs at {i}: got {}, expected {}",
                got[i], expected[i]
            );
        }
    }

    fn caller_value(pos: usize) -> i16 {
        (pos % 1000) as i16 + 1
    }

    fn callee_value(pos: usize) -> i16 {
        -((pos % 777) as i16) - 1
    }

    fn samples(first: usize, len: usize, value: fn(usize) -> i16) -> Vec<i16> {
        (first..first + len).map(value).collect()
    }

    /// Two legs over 10 s: the caller talks throughout; the callee starts 1 s late and is on
    /// hold from 3 s to 5 s (timestamps keep running). Each leg file and each mixed channel
    /// lasts exactly 10 s and holds what was sent at the right offsets, silence elsewhere.
    #[test]
    fn records_legs_and_mix_aligned() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("session-1");
        let mut rig = Rig::new(RecorderConfig::default());
        rig.send(RecorderCommand::StartSession {
            session: 1,
            dir: dir.clone(),
            start_ns: START,
            streams: vec![spec(0, "caller"), spec(1, "callee")],
        });
        for k in 0..500usize {
            let arrival = START + (k as u64 + 1) * 20 * MS;
            rig.advance(arrival);
            let pos = k * 160;
            rig.push(
                1,
                0,
                arrival,
                5000 + pos as u64,
                &samples(pos, 160, caller_value),
            );
            let callee_talks = (50..150).contains(&k) || k >= 250;
            if callee_talks {
                let ts = 70_000 + pos as u64;
                rig.push(1, 1, arrival, ts, &samples(pos, 160, callee_value));
            }
            if k == 300 {
                // Mid-recording, the files are already valid WAVs (a SIGKILL now keeps them).
                std::thread::sleep(Duration::from_millis(20));
                assert_eq!(read_wav(&dir.join("caller.wav")).unwrap().0, 1);
                assert_eq!(read_wav(&dir.join("mixed.wav")).unwrap().0, 2);
            }
        }
        let end_ns = START + 10_000 * MS;
        rig.send(RecorderCommand::StopSession { session: 1, end_ns });
        rig.advance(end_ns + 320 * MS);
        let RecorderEvent::SessionClosed {
            session,
            files,
            streams,
            error,
        } = rig.next_event()
        else {
            panic!("expected SessionClosed");
        };
        assert_eq!((session, error), (1, None));
        assert_eq!(files.len(), 3);
        assert!(files.iter().all(|f| f.frames == 80_000), "{files:?}");
        assert_eq!(streams[0].frames_received, 500);
        assert_eq!(streams[1].frames_received, 350);
        assert!(streams
            .iter()
            .all(|s| s.samples_late_dropped == 0 && s.resyncs == 0));

        let caller = samples(0, 80_000, caller_value);
        let mut callee = vec![0i16; 80_000];
        callee[8000..24_000].copy_from_slice(&samples(8000, 16_000, callee_value));
        callee[40_000..].copy_from_slice(&samples(40_000, 40_000, callee_value));
        assert_wav(&dir.join("caller.wav"), 1, &caller);
        assert_wav(&dir.join("callee.wav"), 1, &callee);
        let (channels, rate, mixed) = read_wav(&dir.join("mixed.wav")).unwrap();
        assert_eq!((channels, rate, mixed.len()), (2, 8000, 160_000));
        let left: Vec<i16> = mixed.iter().step_by(2).copied().collect();
        let right: Vec<i16> = mixed.iter().skip(1).step_by(2).copied().collect();
        assert!(
            left == caller && right == callee,
            "mixed channels differ from the legs"
        );
        rig.shutdown();
    }

    /// A BYE racing the last packet: the first packet came 15 ms late, so every packet plays
    /// 15 ms after its arrival and the last one past the BYE. That audio is kept (before, the
    /// recording stopped at the BYE and lost it).
    #[test]
    fn audio_received_before_the_bye_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("s-tail");
        let mut rig = Rig::new(RecorderConfig::default());
        rig.send(RecorderCommand::StartSession {
            session: 1,
            dir: dir.clone(),
            start_ns: START,
            streams: vec![spec(0, "caller")],
        });
        for k in 0..50usize {
            let late = if k == 0 { 15 * MS } else { 0 };
            let arrival = START + (k as u64 + 1) * 20 * MS + late;
            rig.advance(arrival);
            let pos = k * 160;
            rig.push(1, 0, arrival, pos as u64, &samples(pos, 160, caller_value));
        }
        let end_ns = START + 1000 * MS + MS;
        rig.send(RecorderCommand::StopSession { session: 1, end_ns });
        rig.advance(end_ns + 320 * MS);
        let RecorderEvent::SessionClosed { error, .. } = rig.next_event() else {
            panic!("expected SessionClosed");
        };
        assert_eq!(error, None);
        let (_, _, got) = read_wav(&dir.join("caller.wav")).unwrap();
        let sent = samples(0, 8000, caller_value);
        assert_eq!(
            got.len(),
            120 + 8000,
            "the file runs to the end of the last packet"
        );
        assert_eq!(&got[120..], &sent[..], "every sample sent before the BYE");
        rig.shutdown();
    }

    /// A stream added by re-INVITE gets its own file with silence from the session's start and
    /// stays out of the mix; frames of unknown sessions are counted and dropped.
    #[test]
    fn added_stream_and_unknown_frames() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("s2");
        let mut rig = Rig::new(RecorderConfig {
            fsync: FsyncPolicy::OnClose,
            ..Default::default()
        });
        rig.send(RecorderCommand::StartSession {
            session: 2,
            dir: dir.clone(),
            start_ns: START,
            streams: vec![spec(0, "a")],
        });
        for k in 0..150usize {
            let arrival = START + (k as u64 + 1) * 20 * MS;
            rig.advance(arrival);
            if k == 100 {
                let added = StreamSpec {
                    in_mixed: true,
                    ..spec(1, "a")
                }; // Same stem: renamed.
                rig.send(RecorderCommand::AddStream {
                    session: 2,
                    spec: added,
                });
            }
            if k >= 100 {
                rig.push(
                    2,
                    1,
                    arrival,
                    9 + (k * 160) as u64,
                    &samples(k * 160, 160, callee_value),
                );
            }
            rig.push(99, 0, arrival, 0, &[1; 160]);
        }
        let end_ns = START + 3_000 * MS;
        rig.send(RecorderCommand::StopSession { session: 2, end_ns });
        rig.advance(end_ns + 400 * MS);
        let RecorderEvent::SessionClosed { files, error, .. } = rig.next_event() else {
            panic!("expected SessionClosed");
        };
        assert_eq!(error, None);
        assert!(files.iter().all(|f| f.frames == 24_000), "{files:?}");
        let mut added = vec![0i16; 24_000];
        added[16_000..].copy_from_slice(&samples(16_000, 8000, callee_value));
        assert_wav(&dir.join("a-1.wav"), 1, &added);
        assert_wav(&dir.join("a.wav"), 1, &[0; 24_000]);
        assert_wav(&dir.join("mixed.wav"), 1, &[0; 24_000]);
        assert_eq!(
            rig.handle
                .counters
                .frames_unknown_dropped
                .load(Ordering::Relaxed),
            150
        );
        rig.shutdown();
    }

    /// Legs at 8 and 16 kHz: each file keeps its rate and the session's exact duration;
    /// `mixed.wav` runs at 16 kHz with the 8 kHz leg resampled into it — aligned (a tone
    /// starting at 0.5 s starts there in the mix too) and band-limited (it matches the tone
    /// generated at 16 kHz, which repeating samples would not).
    #[test]
    fn mixed_resamples_other_rates() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("s5");
        let mut rig = Rig::new(RecorderConfig {
            fsync: FsyncPolicy::Never,
            ..Default::default()
        });
        let wideband = StreamSpec {
            sample_rate: 16_000,
            ..spec(1, "b")
        };
        rig.send(RecorderCommand::StartSession {
            session: 5,
            dir: dir.clone(),
            start_ns: START,
            streams: vec![spec(0, "a"), wideband],
        });
        let tone = |n: usize, rate: f64| -> Vec<i16> {
            (0..n)
                .map(|i| (f64::from(i as u32) * std::f64::consts::TAU * 400.0 / rate).sin())
                .map(|x| (x * 8000.0) as i16)
                .collect()
        };
        // Leg a: 1 s of a 400 Hz tone from 0.5 s on, 20 ms packets.
        let a = tone(8000, 8000.0);
        for (k, chunk) in a.chunks(160).enumerate() {
            let arrival = START + 500 * MS + (k as u64 + 1) * 20 * MS;
            rig.advance(arrival);
            rig.push(5, 0, arrival, 4000 + (k * 160) as u64, chunk);
        }
        rig.send(RecorderCommand::StopSession {
            session: 5,
            end_ns: START + 1_500 * MS,
        });
        rig.advance(START + 2_000 * MS);
        let RecorderEvent::SessionClosed { files, error, .. } = rig.next_event() else {
            panic!("expected SessionClosed");
        };
        assert_eq!(error, None);
        let summary: Vec<_> = files
            .iter()
            .map(|f| (f.stream, f.channels, f.sample_rate, f.frames))
            .collect();
        let expected = vec![
            (Some(0), 1, 8000, 12_000),
            (Some(1), 1, 16_000, 24_000),
            (None, 2, 16_000, 24_000),
        ];
        assert_eq!(summary, expected);
        let (_, _, leg) = read_wav(&dir.join("a.wav")).unwrap();
        // The tone's first sample is sin(0) = 0: it starts one before the first non-zero.
        let onset = leg.iter().position(|&x| x != 0).unwrap() - 1;
        let (_, _, mixed) = read_wav(&dir.join("mixed.wav")).unwrap();
        let channel: Vec<i16> = mixed.iter().step_by(2).copied().collect();
        let direct = tone(16_000, 16_000.0);
        let at = onset * 2;
        let err = channel[at + 400..at + 15_600]
            .iter()
            .zip(&direct[400..15_600])
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
            .sum::<f64>()
            / 15_200.0;
        assert!(
            err < 40.0,
            "resampled leg vs the 16 kHz tone: mean error {err}"
        );
        assert!(
            channel[..at - 40].iter().all(|&x| x.abs() < 50),
            "silence before"
        );
        assert!(
            mixed.iter().skip(1).step_by(2).all(|&x| x == 0),
            "leg b, silent"
        );
        rig.shutdown();
    }

    /// A directory that can't be created fails that recording session alone, without a panic;
    /// another one records normally, and Shutdown closes it at "now".
    #[test]
    fn failing_directory_fails_only_that_session() {
        let root = tempfile::tempdir().unwrap();
        let blocker = root.path().join("regular-file");
        std::fs::write(&blocker, b"x").unwrap();
        let rig = Rig::new(RecorderConfig::default());
        rig.send(RecorderCommand::StartSession {
            session: 3,
            dir: blocker.join("s3"),
            start_ns: START,
            streams: vec![spec(0, "a")],
        });
        let RecorderEvent::SessionFailed { session, error } = rig.next_event() else {
            panic!("expected SessionFailed");
        };
        assert_eq!(session, 3);
        assert!(error.contains("create_dir_all"), "{error}");

        let dir = root.path().join("s4");
        rig.send(RecorderCommand::StartSession {
            session: 4,
            dir: dir.clone(),
            start_ns: START,
            streams: vec![spec(0, "../../etc/passwd")],
        });
        rig.advance(START + 1_500 * MS);
        rig.send(RecorderCommand::Shutdown);
        let RecorderEvent::SessionClosed { session, files, .. } = rig.next_event() else {
            panic!("expected SessionClosed");
        };
        assert_eq!(session, 4);
        assert!(files
            .iter()
            .all(|f| f.frames == 12_000 && f.path.starts_with(&dir)));
        rig.join.join().unwrap();
    }
}
