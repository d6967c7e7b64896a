//! The AMQP publisher's disk spool (`AMQP_SPOOL_DIR`): events that do not fit the memory
//! buffer while the broker is unreachable, and whatever is unconfirmed when the process stops,
//! kept in order across restarts.
//!
//! Numbered segment files of one event per line: the routing key as a JSON string, a tab, the
//! event's JSON (compact JSON has no raw newline). Appends go to the newest segment, reads come
//! from the oldest; a segment is deleted once read. A torn last line (power loss mid-write) is
//! skipped and counted on reading. Beyond `max_bytes` the oldest segment is dropped, counted.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A segment is closed for appends at this size.
const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// Segment numbers start here so events can be put back in front of the oldest one.
const FIRST_SEGMENT: u64 = 1 << 40;

/// One spooled event: (routing key, JSON body).
pub type Record = (String, Vec<u8>);

#[derive(Debug)]
struct Segment {
    id: u64,
    bytes: u64,
    records: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Oldest first.
    segments: VecDeque<Segment>,
    /// Bytes of the oldest segment already read (its records are in memory now).
    read_offset: u64,
    /// Records already read from the oldest segment.
    read_records: u64,
    append: Option<File>,
    /// Records lost: torn lines and segments dropped for space, not yet reported.
    pub lost: u64,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.spool"))
}

fn encode(routing_key: &str, body: &[u8]) -> Vec<u8> {
    let mut line = serde_json::to_vec(routing_key).unwrap_or_default();
    line.push(b'\t');
    line.extend_from_slice(body);
    line.push(b'\n');
    line
}

fn decode(line: &[u8]) -> Option<Record> {
    let tab = line.iter().position(|&b| b == b'\t')?;
    let key: String = serde_json::from_slice(&line[..tab]).ok()?;
    let body = &line[tab + 1..];
    serde_json::from_slice::<serde::de::IgnoredAny>(body).ok()?;
    Some((key, body.to_vec()))
}

impl Spool {
    /// Opens (creating) the directory and takes over the segments a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(".spool")?, 16).ok()
            })
            .collect();
        ids.sort_unstable();
        let mut segments = VecDeque::new();
        for id in ids {
            let path = segment_path(dir, id);
            let text = std::fs::read(&path)?;
            let records = text
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
            segments.push_back(Segment {
                id,
                bytes: text.len() as u64,
                records: records as u64,
            });
        }
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            segments,
            read_offset: 0,
            read_records: 0,
            append: None,
            lost: 0,
        })
    }

    /// Events on disk not yet read back.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum::<u64>() - self.read_records
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one event after every other.
    pub fn push(&mut self, routing_key: &str, body: &[u8]) -> std::io::Result<()> {
        let line = encode(routing_key, body);
        let full = self
            .segments
            .back()
            .is_none_or(|s| s.bytes + line.len() as u64 > SEGMENT_BYTES);
        // The segment being read is never appended to: reading keeps an offset into it.
        let reading_last = self.segments.len() == 1 && self.read_offset > 0;
        if full || reading_last || self.append.is_none() {
            let id = self.segments.back().map_or(FIRST_SEGMENT, |s| s.id + 1);
            self.append = Some(self.create(id)?);
            self.segments.push_back(Segment {
                id,
                bytes: 0,
                records: 0,
            });
        }
        if let Some(f) = self.append.as_mut() {
            f.write_all(&line)?;
        }
        if let Some(s) = self.segments.back_mut() {
            s.bytes += line.len() as u64;
            s.records += 1;
        }
        self.enforce_limit()
    }

    /// Puts `records` (oldest first) in front of everything spooled: a stopping publisher's
    /// unconfirmed events, older than the spool's.
    pub fn push_front(&mut self, records: &[Record]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.compact_read()?;
        let id = self.segments.front().map_or(FIRST_SEGMENT, |s| s.id - 1);
        let mut f = self.create(id)?;
        let mut bytes = 0;
        for (key, body) in records {
            let line = encode(key, body);
            f.write_all(&line)?;
            bytes += line.len() as u64;
        }
        f.sync_data()?;
        self.segments.push_front(Segment {
            id,
            bytes,
            records: records.len() as u64,
        });
        Ok(())
    }

    /// Up to `n` of the oldest events, in order; they leave the spool.
    pub fn pop(&mut self, n: usize) -> std::io::Result<Vec<Record>> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some(seg) = self.segments.front() else {
                break;
            };
            let path = segment_path(&self.dir, seg.id);
            let mut reader = BufReader::new(File::open(&path)?);
            reader.seek(SeekFrom::Start(self.read_offset))?;
            let mut line = Vec::new();
            while out.len() < n {
                line.clear();
                let got = reader.read_until(b'\n', &mut line)?;
                if got == 0 {
                    break;
                }
                self.read_offset += got as u64;
                self.read_records += 1;
                match decode(line.strip_suffix(b"\n").unwrap_or(&line)) {
                    Some(r) => out.push(r),
                    None => self.lost += 1,
                }
            }
            let done = self.read_offset >= seg.bytes;
            if done {
                self.drop_front()?;
            }
        }
        Ok(out)
    }

    /// Syncs appended events to disk (called once per batch, not per event).
    pub fn sync(&mut self) -> std::io::Result<()> {
        match self.append.as_mut() {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    fn create(&self, id: u64) -> std::io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, id))
    }

    fn drop_front(&mut self) -> std::io::Result<()> {
        if let Some(seg) = self.segments.pop_front() {
            // Records the reader had not reached are lost with the file.
            let unread = seg.records.saturating_sub(self.read_records);
            self.lost += unread;
            if self.segments.is_empty() {
                self.append = None;
            }
            match std::fs::remove_file(segment_path(&self.dir, seg.id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.read_offset = 0;
        self.read_records = 0;
        Ok(())
    }

    /// Rewrites a partly read oldest segment without its read part, so a segment can be put
    /// in front of it.
    fn compact_read(&mut self) -> std::io::Result<()> {
        if self.read_offset == 0 {
            return Ok(());
        }
        let Some(seg) = self.segments.front_mut() else {
            return Ok(());
        };
        let path = segment_path(&self.dir, seg.id);
        let rest = std::fs::read(&path)?
            .get(self.read_offset as usize..)
            .unwrap_or_default()
            .to_vec();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &rest)?;
        std::fs::rename(&tmp, &path)?;
        seg.bytes = rest.len() as u64;
        seg.records -= self.read_records;
        self.read_offset = 0;
        self.read_records = 0;
        if self.segments.len() == 1 {
            self.append = None;
        }
        Ok(())
    }

    fn enforce_limit(&mut self) -> std::io::Result<()> {
        while self.segments.len() > 1
            && self.segments.iter().map(|s| s.bytes).sum::<u64>() > self.max_bytes
        {
            self.drop_front()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(i: usize) -> Vec<u8> {
        format!(r#"{{"seq":{i},"text":"tab\there"}}"#).into_bytes()
    }

    #[test]
    fn in_order_across_reopen_and_push_front() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        for i in 0..10 {
            s.push(&format!("siprec.x.{i}"), &body(i)).unwrap();
        }
        let first = s.pop(3).unwrap();
        assert_eq!(first[0], ("siprec.x.0".to_owned(), body(0)));
        assert_eq!(first[2].0, "siprec.x.2");
        s.push_front(&first[1..]).unwrap();
        s.sync().unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(s.len(), 9);
        s.push("siprec.x.10", &body(10)).unwrap();
        let all = s.pop(100).unwrap();
        let keys: Vec<usize> = all
            .iter()
            .map(|(k, _)| k.rsplit('.').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(keys, (1..=10).collect::<Vec<_>>());
        assert!(s.is_empty() && s.lost == 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn torn_line_and_size_limit_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        s.push("a", &body(1)).unwrap();
        drop(s);
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"\"b\"\t{\"seq\":").unwrap();
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.pop(10).unwrap().len(), 1);
        assert_eq!(s.lost, 1);

        let mut s = Spool::open(dir.path(), 2 * SEGMENT_BYTES).unwrap();
        let big = vec![b'1'; 1024 * 1024];
        for _ in 0..12 {
            s.push("k", &big).unwrap();
        }
        // 12 MiB into a 8 MiB spool of 4 MiB segments: the oldest whole segments went.
        assert!(s.lost >= 3, "{}", s.lost);
        assert_eq!(s.len() + s.lost, 12);
    }
}
