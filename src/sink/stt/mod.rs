//! Live transcription: the STT feeder thread and the engine workers.
//!
//! Audio reaches STT through its own SPSC rings, one per data-plane worker (never through the
//! recorder or its file I/O; a full ring drops and counts in the worker, which never blocks).
//! The feeder places each stream's frames on a `StreamTimeline` (the recorder's: exact
//! positions through jitter, loss and reordering), commits them `COMMIT_DELAY_MS` behind the
//! clock into a per-stream [`segment::Segmenter`], and queues the cuts as jobs:
//!
//! - finals on a bounded FIFO (`queue_max`); when it is full the final is dropped and counted;
//! - partials on a queue as deep as there are workers, at most one in flight per stream, so a
//!   busy engine drops partials first (counted) and finals keep flowing.
//!
//! Workers prefer finals, run the engine, and send [`SttResult`]s to the control plane, which
//! names the speaker and publishes them. When a stopped session's last final is done, one
//! worker (exactly one, whichever finishes last) sends `SessionDone`.
//!
//! Refuses: to touch the data plane's or the recorder's state, to block a worker of the data
//! plane, to panic on an engine error (the job fails, is counted, and the call goes on).

pub mod deepgram;
pub mod engine;
pub mod jobs;
pub mod openai;
pub mod redact;
pub mod segment;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use tracing::{info, warn};

use crate::media::{MediaFrame, StreamKey};
use crate::ring::Consumer;
use crate::sink::recorder::{position_at, MonotonicClock, StreamTimeline};

use engine::{Engine, EngineError, Recognized};
use segment::{Cut, Segmenter, SegmenterConfig};

/// How far behind the clock audio is cut: the latest a frame may arrive and still be heard.
const COMMIT_DELAY_MS: u32 = 200;
const TICK: Duration = Duration::from_millis(20);
/// A partial older than this when a worker gets to it is skipped: newer audio is coming.
const PARTIAL_MAX_AGE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct SttConfig {
    /// Cutting parameters; `sample_rate` is set per stream.
    pub segmenter: SegmenterConfig,
    /// Engine worker threads.
    pub workers: usize,
    /// Finals waiting for a worker beyond which new finals are dropped (and counted).
    pub queue_max: usize,
    /// PII redaction applied to every text the engine produces (`STT_REDACT_PII`).
    pub redactor: Option<Arc<redact::Redactor>>,
    /// Cores the engine workers (and the threads whisper.cpp starts from them) may run on;
    /// empty = anywhere. Keeps speech off the data plane's cores.
    pub cores: Vec<usize>,
}

#[derive(Debug)]
pub enum SttCommand {
    /// Transcribe these streams `(index, sample_rate)` of a recording session starting at
    /// `start_ns` (monotonic).
    StartSession {
        session: u64,
        start_ns: u64,
        streams: Vec<(u32, u32)>,
    },
    AddStream {
        session: u64,
        index: u32,
        sample_rate: u32,
    },
    /// Cut what was said up to `end_ns`, finish its jobs, then `SessionDone`.
    StopSession {
        session: u64,
        end_ns: u64,
    },
    Shutdown,
}

/// One piece of recognized speech.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub key: StreamKey,
    /// Utterance number in its stream; partials of one utterance share it with its final.
    pub utterance: u32,
    pub is_final: bool,
    /// Offsets in the call (from the recording session's start), ms.
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
    pub confidence: f32,
    /// From the audio being cut to the text being ready, ms.
    pub latency_ms: u64,
}

#[derive(Debug)]
pub enum SttResult {
    Transcript(Transcript),
    /// A final could not be transcribed (engine error); counted, the call goes on.
    Failed {
        key: StreamKey,
        error: String,
    },
    /// Every final of a stopped session is done: transcripts can be written.
    SessionDone {
        session: u64,
    },
}

/// Counters for metrics exposition (relaxed atomics).
#[derive(Debug, Default)]
pub struct SttCounters {
    pub frames: AtomicU64,
    pub frames_unknown: AtomicU64,
    pub partials_queued: AtomicU64,
    /// Partials not transcribed: queue full, one already in flight, or too old when picked.
    pub partials_dropped: AtomicU64,
    pub finals_queued: AtomicU64,
    /// Finals lost because the queue was full: the engine cannot keep up.
    pub finals_dropped: AtomicU64,
    pub transcripts_partial: AtomicU64,
    pub transcripts_final: AtomicU64,
    pub failures: AtomicU64,
    /// Utterances dropped as too short (clicks, noise).
    pub utterances_too_short: AtomicU64,
    /// Audio given to the engine and engine time, ms: their ratio is the real-time factor.
    pub audio_ms: AtomicU64,
    pub busy_ms: AtomicU64,
    /// The part of `busy_ms` spent on finals: the work that must keep up (partials are
    /// dropped first when it doesn't).
    pub busy_final_ms: AtomicU64,
    /// Finals waiting for a worker now.
    pub queue_depth: AtomicUsize,
    pub workers_busy: AtomicUsize,
}

/// The control plane's end of STT.
pub struct SttHandle {
    /// The PII redactor in use, for its counters.
    pub redactor: Option<Arc<redact::Redactor>>,
    pub commands: Sender<SttCommand>,
    pub results: Receiver<SttResult>,
    pub counters: Arc<SttCounters>,
    pub workers: usize,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SttHandle {
    /// Asks the feeder to stop and waits for every thread: queued finals get
    /// [`SHUTDOWN_GRACE`], the rest (and every partial and batch utterance) is abandoned.
    pub fn shutdown(mut self) {
        let _ = self.commands.send(SttCommand::Shutdown);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Latency from cut to text, by kind (`siprec_stt_latency_seconds{kind}`).
pub static LATENCY: std::sync::LazyLock<prometheus::HistogramVec> =
    std::sync::LazyLock::new(|| {
        let buckets = vec![0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];
        let opts = prometheus::HistogramOpts::new(
            "stt_latency_seconds",
            "From an utterance's audio being cut to its text being ready, by kind (partial, final)",
        )
        .namespace("siprec")
        .buckets(buckets);
        prometheus::HistogramVec::new(opts, &["kind"])
            .unwrap_or_else(|e| unreachable!("static histogram options are valid: {e}"))
    });

struct Job {
    key: StreamKey,
    cut: Cut,
    sample_rate: u32,
    cut_at: Instant,
    /// Partials: cleared when done, so the stream may offer the next one.
    in_flight: Option<Arc<AtomicBool>>,
    /// Finals: the session's outstanding-work tracker.
    tracker: Option<Arc<Tracker>>,
    /// Batch (STT jobs API): where the result goes instead of the control plane.
    reply: Option<Sender<BatchReply>>,
    /// Batch: the job's language, if not the model's default.
    language: Option<String>,
}

/// One utterance of a batch job, transcribed (or not).
struct BatchReply {
    channel: u32,
    start: u64,
    samples: usize,
    result: Result<Recognized, String>,
}

/// Outstanding finals of one session; `SessionDone` goes out once when it is stopped and empty.
#[derive(Default)]
struct Tracker {
    pending: AtomicUsize,
    stopped: AtomicBool,
    done: AtomicBool,
}

impl Tracker {
    fn finish_if_done(&self, session: u64, results: &Sender<SttResult>) {
        if self.stopped.load(Ordering::Acquire)
            && self.pending.load(Ordering::Acquire) == 0
            && !self.done.swap(true, Ordering::AcqRel)
        {
            let _ = results.send(SttResult::SessionDone { session });
        }
    }
}

/// Starts the feeder and `config.workers` engine workers, each with an engine from `make`.
/// Fails when an engine cannot be created (the caller runs without STT and says why).
/// With `jobs`, a `stt-batch` thread also runs queued STT jobs on the same workers.
pub fn spawn<C: MonotonicClock>(
    config: SttConfig,
    rings: Vec<Consumer<MediaFrame>>,
    clock: C,
    mut make: impl FnMut() -> Result<Box<dyn Engine>, EngineError>,
    jobs: Option<Arc<jobs::Jobs>>,
) -> Result<SttHandle, EngineError> {
    let workers = config.workers.max(1);
    let redactor = config.redactor.clone();
    let (command_tx, command_rx) = crossbeam_channel::unbounded();
    let (result_tx, result_rx) = crossbeam_channel::unbounded();
    let (final_tx, final_rx) = crossbeam_channel::bounded::<Job>(config.queue_max.max(1));
    let (partial_tx, partial_rx) = crossbeam_channel::bounded::<Job>(workers);
    // One batch job at a time feeds this; its utterances wait here behind live work.
    let (batch_tx, batch_rx) = crossbeam_channel::unbounded::<Job>();
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(SttCounters::default());
    let mut threads = Vec::new();
    for i in 0..workers {
        let engine = make()?;
        let worker = Worker {
            engine,
            stop: stop.clone(),
            finals: final_rx.clone(),
            partials: partial_rx.clone(),
            batch: batch_rx.clone(),
            redactor: config.redactor.clone(),
            results: result_tx.clone(),
            counters: counters.clone(),
        };
        let cores = config.cores.clone();
        let t = std::thread::Builder::new()
            .name(format!("stt-{i}"))
            .spawn(move || {
                pin_to(&cores);
                worker.run()
            })
            .map_err(|e| EngineError::Failed(format!("cannot start STT worker: {e}")))?;
        threads.push(t);
    }
    if let Some(jobs) = jobs {
        let segmenter = config.segmenter;
        let stop = stop.clone();
        let t = std::thread::Builder::new()
            .name("stt-batch".into())
            .spawn(move || run_batch(&jobs, &batch_tx, segmenter, &stop))
            .map_err(|e| EngineError::Failed(format!("cannot start STT batch thread: {e}")))?;
        threads.push(t);
    }
    let feeder = Feeder {
        stop,
        config,
        rings,
        clock,
        commands: command_rx,
        finals: final_tx,
        partials: partial_tx,
        results: result_tx,
        counters: counters.clone(),
        sessions: HashMap::new(),
        cuts: Vec::new(),
    };
    let t = std::thread::Builder::new()
        .name("stt-feeder".into())
        .spawn(move || feeder.run())
        .map_err(|e| EngineError::Failed(format!("cannot start STT feeder: {e}")))?;
    threads.push(t);
    Ok(SttHandle {
        redactor,
        commands: command_tx,
        results: result_rx,
        counters,
        workers,
        threads,
    })
}

struct FeedStream {
    timeline: StreamTimeline,
    segmenter: Segmenter,
    partial_in_flight: Arc<AtomicBool>,
    too_short_reported: u64,
}

struct FeedSession {
    start_ns: u64,
    end_ns: Option<u64>,
    streams: HashMap<u32, FeedStream>,
    tracker: Arc<Tracker>,
}

struct Feeder<C> {
    /// Set when the feeder leaves: the batch thread stops too.
    stop: Arc<AtomicBool>,
    config: SttConfig,
    rings: Vec<Consumer<MediaFrame>>,
    clock: C,
    commands: Receiver<SttCommand>,
    finals: Sender<Job>,
    partials: Sender<Job>,
    results: Sender<SttResult>,
    counters: Arc<SttCounters>,
    sessions: HashMap<u64, FeedSession>,
    cuts: Vec<Cut>,
}

impl<C: MonotonicClock> Feeder<C> {
    fn run(mut self) {
        info!(rings = self.rings.len(), "STT feeder started");
        'run: loop {
            loop {
                match self.commands.try_recv() {
                    Ok(SttCommand::Shutdown) | Err(TryRecvError::Disconnected) => break 'run,
                    Ok(command) => self.handle_command(command),
                    Err(TryRecvError::Empty) => break,
                }
            }
            self.drain_rings();
            let now = self.clock.now_ns();
            self.commit(now);
            std::thread::sleep(TICK);
        }
        self.stop.store(true, Ordering::Relaxed);
        info!("STT feeder stopped");
    }

    fn new_stream(&self, start_ns: u64, sample_rate: u32) -> FeedStream {
        let capacity = StreamTimeline::capacity_for(sample_rate, COMMIT_DELAY_MS);
        FeedStream {
            timeline: StreamTimeline::new(start_ns, sample_rate, capacity),
            segmenter: Segmenter::new(SegmenterConfig {
                sample_rate,
                ..self.config.segmenter
            }),
            partial_in_flight: Arc::default(),
            too_short_reported: 0,
        }
    }

    fn handle_command(&mut self, command: SttCommand) {
        match command {
            SttCommand::StartSession {
                session,
                start_ns,
                streams,
            } => {
                let streams = streams
                    .into_iter()
                    .map(|(index, rate)| (index, self.new_stream(start_ns, rate)))
                    .collect();
                self.sessions.insert(
                    session,
                    FeedSession {
                        start_ns,
                        end_ns: None,
                        streams,
                        tracker: Arc::default(),
                    },
                );
            }
            SttCommand::AddStream {
                session,
                index,
                sample_rate,
            } => {
                let Some(start_ns) = self.sessions.get(&session).map(|s| s.start_ns) else {
                    return;
                };
                let stream = self.new_stream(start_ns, sample_rate);
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.streams.entry(index).or_insert(stream);
                }
            }
            SttCommand::StopSession { session, end_ns } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.end_ns = Some(end_ns);
                }
            }
            SttCommand::Shutdown => {}
        }
    }

    fn drain_rings(&mut self) {
        for ring in &mut self.rings {
            // Bounded per tick: one busy worker's ring must not starve the others.
            for _ in 0..4096 {
                let Some(frame) = ring.pop() else { break };
                self.counters.frames.fetch_add(1, Ordering::Relaxed);
                let stream = self
                    .sessions
                    .get_mut(&frame.key.session)
                    .and_then(|s| s.streams.get_mut(&frame.key.stream));
                match stream {
                    Some(s) if s.timeline.sample_rate() == frame.sample_rate => {
                        s.timeline.handle_frame(
                            frame.arrival_ns,
                            frame.ext_ts,
                            frame.ssrc_epoch,
                            frame.pcm(),
                        )
                    }
                    _ => {
                        self.counters.frames_unknown.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    fn commit(&mut self, now: u64) {
        let delay_ns = u64::from(COMMIT_DELAY_MS) * 1_000_000;
        let upto_ns = now.saturating_sub(delay_ns);
        let mut ended = Vec::new();
        for (&session, s) in &mut self.sessions {
            let end = s.end_ns.filter(|&end| upto_ns >= end);
            let until = end.unwrap_or(upto_ns);
            for (&index, stream) in &mut s.streams {
                let upto =
                    position_at(until, s.start_ns, stream.timeline.sample_rate()).max(0) as u64;
                let cuts = &mut self.cuts;
                let segmenter = &mut stream.segmenter;
                stream
                    .timeline
                    .commit(upto, |pcm| segmenter.feed(pcm, cuts));
                if end.is_some() {
                    segmenter.flush(cuts);
                }
                let stats = segmenter.stats();
                let new_short = stats.too_short - stream.too_short_reported;
                stream.too_short_reported = stats.too_short;
                self.counters
                    .utterances_too_short
                    .fetch_add(new_short, Ordering::Relaxed);
                let key = StreamKey {
                    session,
                    stream: index,
                };
                for cut in self.cuts.drain(..) {
                    let rate = stream.timeline.sample_rate();
                    let job = Job {
                        key,
                        cut,
                        sample_rate: rate,
                        cut_at: Instant::now(),
                        in_flight: None,
                        tracker: None,
                        reply: None,
                        language: None,
                    };
                    if job.cut.is_final {
                        queue_final(job, &s.tracker, &self.finals, &self.counters);
                    } else {
                        queue_partial(
                            job,
                            &stream.partial_in_flight,
                            &self.partials,
                            &self.counters,
                        );
                    }
                }
            }
            if end.is_some() {
                ended.push(session);
            }
        }
        for session in ended {
            if let Some(s) = self.sessions.remove(&session) {
                s.tracker.stopped.store(true, Ordering::Release);
                s.tracker.finish_if_done(session, &self.results);
            }
        }
    }
}

fn queue_final(mut job: Job, tracker: &Arc<Tracker>, finals: &Sender<Job>, counters: &SttCounters) {
    tracker.pending.fetch_add(1, Ordering::AcqRel);
    job.tracker = Some(tracker.clone());
    match finals.try_send(job) {
        Ok(()) => {
            counters.finals_queued.fetch_add(1, Ordering::Relaxed);
            counters.queue_depth.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
            tracker.pending.fetch_sub(1, Ordering::AcqRel);
            counters.finals_dropped.fetch_add(1, Ordering::Relaxed);
            warn!(
                session = job.key.session,
                stream = job.key.stream,
                "STT queue full: final dropped"
            );
        }
    }
}

fn queue_partial(
    mut job: Job,
    in_flight: &Arc<AtomicBool>,
    partials: &Sender<Job>,
    counters: &SttCounters,
) {
    if in_flight.swap(true, Ordering::AcqRel) {
        counters.partials_dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    job.in_flight = Some(in_flight.clone());
    match partials.try_send(job) {
        Ok(()) => {
            counters.partials_queued.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            in_flight.store(false, Ordering::Release);
            counters.partials_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How long STT workers keep transcribing queued finals once stopping: bounded so a deep
/// queue never holds a shutdown past systemd's stop timeout.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

struct Worker {
    engine: Box<dyn Engine>,
    /// Set when the feeder stopped: finish queued finals for SHUTDOWN_GRACE, then leave.
    stop: Arc<AtomicBool>,
    finals: Receiver<Job>,
    partials: Receiver<Job>,
    batch: Receiver<Job>,
    redactor: Option<Arc<redact::Redactor>>,
    results: Sender<SttResult>,
    counters: Arc<SttCounters>,
}

impl Worker {
    fn run(mut self) {
        let mut stopping_since: Option<Instant> = None;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                let since = *stopping_since.get_or_insert_with(Instant::now);
                // Nobody reads partials or resumes batch utterances after this; finals go on
                // into the transcript files until the grace runs out.
                let skipped = self.partials.try_iter().count() + self.batch.try_iter().count();
                self.counters
                    .partials_dropped
                    .fetch_add(skipped as u64, Ordering::Relaxed);
                if since.elapsed() >= SHUTDOWN_GRACE {
                    let abandoned = self.finals.try_iter().count();
                    if abandoned > 0 {
                        self.counters
                            .finals_dropped
                            .fetch_add(abandoned as u64, Ordering::Relaxed);
                        tracing::warn!(abandoned, "STT stopping: queued utterances abandoned");
                    }
                    return;
                }
                match self.finals.recv_timeout(Duration::from_millis(100)) {
                    Ok(job) => self.handle(job),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                }
                continue;
            }
            // Live finals first: they are what the transcript keeps; then live partials; then
            // batch jobs, which nobody is waiting for in real time.
            let job = match self.finals.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => match self.partials.try_recv() {
                    Ok(job) => job,
                    Err(_) => match self.batch.try_recv() {
                        Ok(job) => job,
                        // The feeder gone shows as a disconnected finals queue above.
                        Err(_) => match self.wait() {
                            Some(job) => job,
                            None => continue,
                        },
                    },
                },
            };
            self.handle(job);
        }
    }

    /// Blocks until any queue has a job (or half a second passed).
    fn wait(&self) -> Option<Job> {
        let mut select = crossbeam_channel::Select::new();
        let f = select.recv(&self.finals);
        let p = select.recv(&self.partials);
        let b = select.recv(&self.batch);
        let op = select.select_timeout(Duration::from_millis(500)).ok()?;
        match op.index() {
            i if i == f => op.recv(&self.finals).ok(),
            i if i == p => op.recv(&self.partials).ok(),
            i if i == b => op.recv(&self.batch).ok(),
            _ => None,
        }
    }

    fn handle(&mut self, job: Job) {
        let is_final = job.cut.is_final;
        if is_final && job.reply.is_none() {
            self.counters.queue_depth.fetch_sub(1, Ordering::Relaxed);
        } else if !is_final && job.cut_at.elapsed() > PARTIAL_MAX_AGE {
            self.counters
                .partials_dropped
                .fetch_add(1, Ordering::Relaxed);
            if let Some(f) = &job.in_flight {
                f.store(false, Ordering::Release);
            }
            return;
        }
        self.counters.workers_busy.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let language = job.language.as_deref();
        let result = engine::to_engine_rate(&job.cut.pcm, job.sample_rate)
            .and_then(|audio| self.engine.transcribe(&audio, !is_final, language))
            .map(|mut r| {
                // Nothing unredacted leaves the workers: events, files and jobs all see this.
                if let Some(redactor) = &self.redactor {
                    r.text = redactor.redact(&r.text);
                }
                r
            });
        let busy = started.elapsed();
        self.counters.workers_busy.fetch_sub(1, Ordering::Relaxed);
        let rate = u64::from(job.sample_rate.max(1));
        let audio_ms = job.cut.pcm.len() as u64 * 1000 / rate;
        self.counters
            .audio_ms
            .fetch_add(audio_ms, Ordering::Relaxed);
        self.counters
            .busy_ms
            .fetch_add(busy.as_millis() as u64, Ordering::Relaxed);
        if let Some(reply) = &job.reply {
            let _ = reply.send(BatchReply {
                channel: job.key.stream,
                start: job.cut.start,
                samples: job.cut.pcm.len(),
                result: result.map_err(|e| e.to_string()),
            });
            return;
        }
        if is_final {
            self.counters
                .busy_final_ms
                .fetch_add(busy.as_millis() as u64, Ordering::Relaxed);
        }
        match result {
            Ok(recognized) => {
                let latency = job.cut_at.elapsed();
                let kind = if is_final { "final" } else { "partial" };
                LATENCY
                    .with_label_values(&[kind])
                    .observe(latency.as_secs_f64());
                let counter = if is_final {
                    &self.counters.transcripts_final
                } else {
                    &self.counters.transcripts_partial
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let start_ms = job.cut.start * 1000 / rate;
                let _ = self.results.send(SttResult::Transcript(Transcript {
                    key: job.key,
                    utterance: job.cut.utterance,
                    is_final,
                    start_ms,
                    end_ms: start_ms + audio_ms,
                    text: recognized.text,
                    confidence: recognized.confidence,
                    latency_ms: latency.as_millis() as u64,
                }));
            }
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                if is_final {
                    let (session, stream) = (job.key.session, job.key.stream);
                    warn!(session, stream, error = %e, "transcription failed");
                    let _ = self.results.send(SttResult::Failed {
                        key: job.key,
                        error: e.to_string(),
                    });
                }
            }
        }
        if let Some(f) = &job.in_flight {
            f.store(false, Ordering::Release);
        }
        if let Some(t) = &job.tracker {
            t.pending.fetch_sub(1, Ordering::AcqRel);
            t.finish_if_done(job.key.session, &self.results);
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Largest recording a batch job reads into memory.
const BATCH_FILE_MAX_BYTES: u64 = 256 << 20;

/// The `stt-batch` thread: runs queued jobs one at a time until `stop`.
fn run_batch(
    jobs: &jobs::Jobs,
    batch: &Sender<Job>,
    segmenter: SegmenterConfig,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let Some(job) = jobs.take_next(Duration::from_millis(500), unix_ms()) else {
            continue;
        };
        let path = crate::proto::pii::Pii(&job.audio_path);
        info!(job = %job.job_id, path = %path, "STT job started");
        let started = Instant::now();
        let outcome = transcribe_file(&job, batch, segmenter).map(|mut r| {
            r.processing_seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
            r
        });
        if outcome.is_err() && stop.load(Ordering::Relaxed) {
            // Shutting down took the workers away: the job stays "running" on disk and is
            // queued again at the next start.
            info!(job = %job.job_id, "STT job interrupted by shutdown; it runs again at start");
            return;
        }
        if let Err(e) = &outcome {
            warn!(job = %job.job_id, error = %e, "STT job failed");
        }
        jobs.finish(&job.job_id, outcome, unix_ms());
    }
}

/// Cuts every channel of a recording (WAV, FLAC or Opus) into utterances (the live segmenter,
/// finals only), has the workers transcribe them, and puts the text back in time order.
fn transcribe_file(
    job: &jobs::Job,
    batch: &Sender<Job>,
    segmenter: SegmenterConfig,
) -> Result<jobs::JobResult, String> {
    let path = std::path::Path::new(&job.audio_path);
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    // FLAC and Opus decode to several times their size: a quarter of WAV's limit for them.
    let wav = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
    let limit = if wav {
        BATCH_FILE_MAX_BYTES
    } else {
        BATCH_FILE_MAX_BYTES / 4
    };
    if size > limit {
        return Err(format!(
            "{} is {} MiB; jobs take up to {} MiB of this format",
            path.display(),
            size >> 20,
            limit >> 20
        ));
    }
    let (channels, rate, samples) =
        crate::sink::recorder::read_audio(path).map_err(|e| e.to_string())?;
    if channels == 0 || !(8000..=48000).contains(&rate) {
        return Err(format!(
            "unsupported audio: {channels} channels at {rate} Hz"
        ));
    }
    let channels = usize::from(channels);
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut pending = 0;
    let language = (job.language != "auto").then(|| job.language.clone());
    for c in 0..channels {
        let pcm: Vec<i16> = samples.iter().skip(c).step_by(channels).copied().collect();
        let mut seg = Segmenter::new(SegmenterConfig {
            sample_rate: rate,
            partial_interval_ms: 0,
            ..segmenter
        });
        let mut cuts = Vec::new();
        seg.feed(&pcm, &mut cuts);
        seg.flush(&mut cuts);
        for cut in cuts {
            let job = Job {
                key: StreamKey {
                    session: 0,
                    stream: c as u32,
                },
                cut,
                sample_rate: rate,
                cut_at: Instant::now(),
                in_flight: None,
                tracker: None,
                reply: Some(tx.clone()),
                language: language.clone(),
            };
            batch.send(job).map_err(|_| "STT workers stopped")?;
            pending += 1;
        }
    }
    drop(tx);
    let mut utterances = Vec::with_capacity(pending);
    for _ in 0..pending {
        let r = rx.recv().map_err(|_| "STT workers stopped")?;
        let recognized = r.result?;
        if recognized.text.is_empty() {
            continue;
        }
        let s = |n: u64| (n as f64 / f64::from(rate) * 1000.0).round() / 1000.0;
        utterances.push(jobs::JobUtterance {
            channel: r.channel as u16,
            start_s: s(r.start),
            end_s: s(r.start + r.samples as u64),
            text: recognized.text,
            confidence: (f64::from(recognized.confidence) * 1000.0).round() / 1000.0,
        });
    }
    utterances.sort_by(|a, b| {
        a.start_s
            .total_cmp(&b.start_s)
            .then(a.channel.cmp(&b.channel))
    });
    let text = utterances
        .iter()
        .map(|u| u.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let frames = samples.len() / channels;
    Ok(jobs::JobResult {
        text,
        utterances,
        audio_seconds: (frames as f64 / f64::from(rate) * 1000.0).round() / 1000.0,
        processing_seconds: 0.0,
    })
}

/// Keeps the calling worker (and the threads whisper.cpp starts from it) on `cores`. A
/// refusal (containers, cgroups) is logged: speech still runs, unpinned.
fn pin_to(cores: &[usize]) {
    if let Err(e) = crate::dataplane::pin_current_thread(cores) {
        warn!(?cores, error = %e, "cannot pin STT worker; it runs on any core");
    }
}
