//! Identifiers and units shared by every layer. No I/O. No clock.

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

/// Gregorian date and time of Unix seconds (Howard Hinnant's `civil_from_days`).
fn civil(unix_s: u64) -> (i64, u32, u32, u32, u32, u32) {
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
