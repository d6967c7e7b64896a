//! Recordings copied to S3-compatible storage (issue 11), against moto's S3 server with
//! signature checking on: a big recording in parts through a store outage (resumed, not
//! restarted), a real call's files, checksums read back with curl's own SigV4 signer, local
//! deletion only after verification, and GDPR erase reaching the bucket.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use siprec::sink::recorder::read_wav;

const MOTO_PORT: u16 = 18095;
const BUCKET: &str = "call-recordings";

struct Moto {
    child: Child,
    key: String,
    secret: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        // SAFETY: plain syscall on our own child's pid (it may be stopped).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn xml(text: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = text
        .find(&open)
        .unwrap_or_else(|| panic!("{tag} in {text}"))
        + open.len();
    let end = start + text[start..].find(&format!("</{tag}>")).unwrap();
    text[start..end].to_owned()
}

impl Moto {
    /// moto with SigV4 checking on after three unchecked IAM calls that create our user.
    fn start() -> Moto {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let child = Command::new(root.join(".venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &MOTO_PORT.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server in .venv (.ci/deps.sh)");
        let base = format!("http://127.0.0.1:{MOTO_PORT}/");
        let deadline = Instant::now() + Duration::from_secs(20);
        // moto's own API: an S3 request here would use up one of the unchecked actions.
        let probe = format!("{base}moto-api/");
        loop {
            let up = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &probe])
                .output()
                .is_ok_and(|o| o.stdout == b"200");
            if up {
                break;
            }
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let iam = |args: &[&str]| -> String {
            let auth = "Authorization: AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/iam/\
                        aws4_request, SignedHeaders=host, Signature=x";
            let out = Command::new("curl")
                .args(["-s", "-X", "POST", &base, "-H", auth])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let user = "Action=CreateUser&Version=2010-05-08&UserName=recorder";
        iam(&["--data", user]);
        let created = iam(&[
            "--data",
            "Action=CreateAccessKey&Version=2010-05-08&UserName=recorder",
        ]);
        let policy = r#"PolicyDocument={"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        iam(&[
            "--data-urlencode",
            "Action=PutUserPolicy",
            "--data-urlencode",
            "Version=2010-05-08",
            "--data-urlencode",
            "UserName=recorder",
            "--data-urlencode",
            "PolicyName=s3all",
            "--data-urlencode",
            policy,
        ]);
        let moto = Moto {
            child,
            key: xml(&created, "AccessKeyId"),
            secret: xml(&created, "SecretAccessKey"),
        };
        let (status, body) = moto.s3("PUT", "", &[]);
        assert_eq!(
            status,
            200,
            "create bucket: {}",
            String::from_utf8_lossy(&body)
        );
        moto
    }

    /// A request signed by curl's own SigV4 implementation: (status, body).
    fn s3(&self, method: &str, key: &str, extra: &[&str]) -> (u16, Vec<u8>) {
        let url = format!("http://127.0.0.1:{MOTO_PORT}/{BUCKET}/{key}");
        let user = format!("{}:{}", self.key, self.secret);
        let out = Command::new("curl")
            .args([
                "-s",
                "-X",
                method,
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
            ])
            .arg(&user)
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(["-w", "\n%{http_code}"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        let mut body = out.stdout;
        let nl = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        let status = String::from_utf8_lossy(&body[nl + 1..])
            .parse()
            .unwrap_or(0);
        body.truncate(nl);
        (status, body)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

fn sha256_hex(data: &[u8]) -> String {
    siprec::sink::upload::sigv4::sha256_hex(data)
}

/// A finished session written before the server starts: a 12.5 MiB WAV (three 5 MiB parts)
/// of the suite's test signal and its session.json.
fn seed_big_session(recordings: &Path) -> (PathBuf, Vec<u8>) {
    let dir = recordings.join("2026-11-20").join("big_00000001");
    std::fs::create_dir_all(&dir).unwrap();
    let samples = source_audio(5, 6_553_600);
    let data_len = (samples.len() * 2) as u32;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(dir.join("mix.wav"), &wav).unwrap();
    let meta = serde_json::json!({"version": 1, "call_id": "big@127.0.0.1", "transcripts": null});
    std::fs::write(dir.join("session.json"), meta.to_string()).unwrap();
    (dir, wav)
}

fn counter(http: u16, event: &str) -> u64 {
    let (_, text) = http_get(http, "/metrics").unwrap();
    let line = format!("siprec_upload_events_total{{event=\"{event}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_until(what: &str, secs: u64, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn upload_record(dir: &Path) -> Option<Value> {
    let bytes = std::fs::read(dir.join(".upload.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[test]
fn recordings_reach_the_bucket_through_an_outage_and_leave_it_on_erase() {
    let moto = Moto::start();
    let recordings_root = tempfile::tempdir().unwrap();
    let recordings = recordings_root.path().join("recordings");
    let (big_dir, big) = seed_big_session(&recordings);
    let root = recordings.display().to_string();
    let endpoint = format!("http://127.0.0.1:{MOTO_PORT}");
    let server = Server::start(
        62,
        &[
            ("RECORDING_DIR", root.as_str()),
            ("S3_ENDPOINT", endpoint.as_str()),
            ("S3_BUCKET", BUCKET),
            ("S3_ACCESS_KEY_ID", moto.key.as_str()),
            ("S3_SECRET_ACCESS_KEY", moto.secret.as_str()),
            ("S3_PREFIX", "site-a/"),
            ("S3_PART_SIZE_MB", "5"),
            // 5 MB/s: a part takes about a second, so the outage lands mid-upload.
            ("S3_MAX_MBPS", "40"),
            ("S3_TIMEOUT", "2"),
            ("S3_LOCAL_RETENTION", "0"),
            ("API_KEY", "k"),
        ],
    );
    let api = server.ports.http;

    // The store stops answering after the first part; the upload resumes where it stopped.
    wait_until("the first part", 30, || counter(api, "part") >= 1);
    moto.signal(libc::SIGSTOP);
    wait_until("a failed round", 30, || counter(api, "failure") >= 1);
    let (_, health) = http_get(api, "/health").unwrap();
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(
        health["checks"]["object_storage"]["status"], "degraded",
        "{health}"
    );
    assert!(
        big_dir.join("mix.wav").exists(),
        "nothing local goes before a verified upload"
    );
    moto.signal(libc::SIGCONT);
    wait_until("the big session stored", 60, || {
        upload_record(&big_dir).is_some()
    });
    assert!(
        counter(api, "resumed") >= 1,
        "the multipart upload was continued"
    );
    assert!(!big_dir.join(".upload-state.json").exists());

    // What is in the bucket is what was recorded, read back through another signer.
    let record = upload_record(&big_dir).unwrap();
    let objects = record["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 2, "{record}");
    let mix = &objects[0];
    assert_eq!(mix["key"], "site-a/2026-11-20/big_00000001/mix.wav");
    assert!(
        mix["etag"].as_str().unwrap().ends_with("-3"),
        "three parts: {mix}"
    );
    let (status, body) = moto.s3("GET", mix["key"].as_str().unwrap(), &[]);
    assert_eq!(status, 200);
    assert_eq!(body.len(), big.len());
    assert_eq!(
        sha256_hex(&body),
        sha256_hex(&big),
        "the bucket holds the exact file"
    );
    let (_, head) = moto.s3("HEAD", mix["key"].as_str().unwrap(), &["-I"]);
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let etag = format!("etag: \"{}\"", mix["etag"].as_str().unwrap());
    assert!(
        head.contains(&etag),
        "the store's multipart ETag is ours: {head}"
    );
    // Retention 0: audio gone locally once verified, session.json and the record kept.
    wait_until("local audio deleted", 10, || {
        !big_dir.join("mix.wav").exists()
    });
    assert!(big_dir.join("session.json").exists());

    // A real call goes up when it ends.
    let rtp = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    let mut src = Src::new(0, server.ports.sip, "up-1@127.0.0.1");
    let port = src.record_one(rtp.local_addr().unwrap().port());
    let audio = source_audio(9, 8000);
    send_pcmu(&rtp, port, &audio, 0, 0x5EED);
    // The BYE right after the last packet: everything received before it is recorded.
    assert_eq!(src.bye().status, 200);
    let call_dir = wait_sessions(&recordings, 2, Duration::from_secs(10))
        .into_iter()
        .find(|d| d != &big_dir)
        .unwrap();
    wait_until("the call stored", 30, || upload_record(&call_dir).is_some());
    let record = upload_record(&call_dir).unwrap();
    let keys: Vec<String> = record["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys.last().map(|k| k.ends_with("/session.json")),
        Some(true),
        "{keys:?}"
    );
    let leg_key = keys
        .iter()
        .find(|k| k.ends_with("/1.wav"))
        .expect("leg file");
    let (status, leg_bytes) = moto.s3("GET", leg_key, &[]);
    assert_eq!(status, 200);
    let leg_file = recordings_root.path().join("leg-from-bucket.wav");
    std::fs::write(&leg_file, &leg_bytes).unwrap();
    let (_, _, leg) = read_wav(&leg_file).unwrap();
    let want = ulaw_roundtrip(&audio);
    assert!(
        find(&leg, &want).is_some(),
        "the call's audio, from the bucket: {} samples, {} sent, {leg_key}, {}",
        leg.len(),
        want.len(),
        leg.iter().filter(|&&s| s != 0).count()
    );

    // GDPR erase removes the remote copies too.
    let (status, body) = http(
        api,
        "POST",
        "/api/compliance/gdpr/erase",
        &[("X-API-Key", "k"), ("Content-Type", "application/json")],
        r#"{"call_id": "up-1@127.0.0.1"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["remote_objects_queued"].as_u64(),
        Some(keys.len() as u64),
        "{v}"
    );
    wait_until("remote copies erased", 30, || {
        keys.iter().all(|k| moto.s3("HEAD", k, &["-I"]).0 == 404)
    });
    let (status, _) = moto.s3("HEAD", mix["key"].as_str().unwrap(), &["-I"]);
    assert_eq!(status, 200, "other calls' objects stay");
    drop(server);
}
