//! Identifiers and units shared by every layer. No I/O. No clock.

pub mod pii;

/// Monotonic time in nanoseconds since an arbitrary process-wide origin. Sans-IO code takes it
/// as an input; only `dataplane` and the binaries read a real clock.
pub type MonoNs = u64;

/// Formats Unix milliseconds as RFC 3339 UTC with millisecond precision
/// (`2025-11-11T12:10:04.493Z`), the shape the API reference uses.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let (y, m, d, hh, mm, ss) = civil(unix_ms / 1000);
    format!(
        "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:03}Z",
        unix_ms % 1000
    )
}

/// `YYYY-MM-DD` (UTC) of Unix milliseconds, for recording directories.
pub fn date_ymd(unix_ms: u64) -> String {
    let (y, m, d, ..) = civil(unix_ms / 1000);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Unix milliseconds of an RFC 3339 timestamp (`2025-11-11T12:15:55Z`, fractional seconds and
/// a `±hh:mm` offset allowed); `None` for anything else or a time before 1970.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        d.iter().all(u8::is_ascii_digit).then_some(())?;
        Some(d.iter().fold(0i64, |n, c| n * 10 + i64::from(c - b'0')))
    };
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let days_in_month = match mo {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if d < 1 || d > days_in_month || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Milliseconds: the first three digits, padded.
        ms = (start..start + 3).fold(0, |n, j| {
            n * 10
                + b.get(j)
                    .filter(|_| j < i)
                    .map_or(0, |c| i64::from(c - b'0'))
        });
    }
    let offset_s = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Howard Hinnant's days_from_civil.
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec.min(59) - offset_s;
    u64::try_from(secs * 1000 + ms).ok()
}

/// The last error of a background task (Redis, object storage) for `/health`: written when
/// the task fails or recovers, read per scrape.
#[derive(Debug, Default)]
pub struct LastError(std::sync::Mutex<Option<String>>);

impl LastError {
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set(&self, e: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }
}

/// Gregorian date and time of Unix seconds (Howard Hinnant's `civil_from_days`).
pub fn civil(unix_s: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (unix_s / 86_400) as i64;
    let secs = (unix_s % 86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {

    #[test]
    fn rfc3339_round_trips_and_refuses_junk() {
        for ms in [0, 1_762_863_004_493, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(
                parse_rfc3339_ms(&rfc3339_ms(ms)),
                Some(ms),
                "{}",
                rfc3339_ms(ms)
            );
        }
        assert_eq!(
            parse_rfc3339_ms("2025-11-11T12:15:55Z"),
            Some(1_762_863_355_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2025-11-11T13:15:55.5+01:00"),
            Some(1_762_863_355_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2025-11-11T07:15:55.123456-05:00"),
            Some(1_762_863_355_123)
        );
        for junk in [
            "",
            "2025-11-11",
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-11-11T24:00:00Z",
            "2025-11-11T12:15:55",
            "2025-11-11T12:15:55.Z",
            "2025-11-11T12:15:55+1:00",
            "1969-12-31T23:59:59Z",
            "2025-11-11T12:15:55Zjunk",
            "٢٠٢٥-11-11T12:15:55Z",
        ] {
            assert_eq!(parse_rfc3339_ms(junk), None, "{junk}");
        }
    }

    use super::*;

    /// Known instants: the epoch, a leap day, and the API reference's example.
    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_762_863_004_493), "2025-11-11T12:10:04.493Z");
        assert_eq!(date_ymd(1_762_863_004_493), "2025-11-11");
    }
}
