//! Recordings encrypted at rest: AES-256-GCM in records, so that streaming writes and crash
//! safety hold as for plain files.
//!
//! An encrypted file (`1.wav.enc`) is a header, then records. The header names the key by its
//! id and carries a random 16-byte salt; the file's own key is HMAC-SHA256(master key, "siprec
//! file key" ‖ salt), so no two files share a key and a 96-bit counter nonce never repeats.
//! Each record is a 4-byte big-endian length and one AES-256-GCM ciphertext (tag included) of:
//! a kind byte (0 data appended at an offset, 1 a patch of bytes already written — a WAV size
//! or FLAC STREAMINFO — , 2 the end), the 8-byte plaintext offset, the bytes. The record's
//! index is its nonce and the header its associated data, so records cannot be moved, swapped
//! between files or altered. A crash leaves whole records (a torn last one is ignored); the
//! end record tells a complete file from a cut one. Decrypted, the file is byte for byte what
//! the plain writer would have left.
//!
//! Keys: a key file of `<key-id> <64 hex digits>` lines (`RECORDING_ENCRYPTION_KEY_FILE`);
//! the first key encrypts new recordings, the others only decrypt (rotation: add the new key
//! on top, keep the old ones while their files are kept). session.json names the key id of
//! each file, never the key.

use std::path::Path;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::cipher::generic_array::GenericArray;
use aes_gcm::Aes256Gcm;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

const MAGIC: &[u8; 8] = b"SIPRECE1";
const TAG: usize = 16;
/// Largest record we write or read (a flush is at most a few hundred KiB).
const RECORD_MAX: usize = 64 << 20;

const DATA: u8 = 0;
const PATCH: u8 = 1;
const END: u8 = 2;

/// The keys recordings are encrypted with. `Debug` shows the ids only.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("ids", &ids).finish()
    }
}

impl Keyring {
    pub fn load(path: &Path) -> Result<Keyring, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
        Keyring::parse(&text).map_err(|e| format!("key file {}: {e}", path.display()))
    }

    /// `<key-id> <64 hex digits>` per line; blank lines and `#` comments ignored. Error
    /// messages give line numbers, never key material.
    pub fn parse(text: &str) -> Result<Keyring, String> {
        let mut keys: Vec<(String, [u8; 32])> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(id), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!(
                    "line {}: expected `<key-id> <64 hex digits>`",
                    n + 1
                ));
            };
            let id_ok = id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !id_ok {
                return Err(format!(
                    "line {}: key ids are 1–64 of [A-Za-z0-9._-]",
                    n + 1
                ));
            }
            let key = decode_hex32(hex)
                .ok_or_else(|| format!("line {}: the key must be 64 hex digits", n + 1))?;
            if keys.iter().any(|(k, _)| k == id) {
                return Err(format!("line {}: key id {id} given twice", n + 1));
            }
            keys.push((id.to_owned(), key));
        }
        if keys.is_empty() {
            return Err("no key".into());
        }
        Ok(Keyring { keys })
    }

    /// The id new recordings are encrypted with.
    pub fn active_id(&self) -> &str {
        &self.keys[0].0
    }

    fn get(&self, id: &str) -> Option<&[u8; 32]> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, key)| key)
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// HMAC-SHA256(master, "siprec file key" ‖ salt).
fn file_key(master: &[u8; 32], salt: &[u8; 16]) -> Result<[u8; 32], String> {
    let err = |e: openssl::error::ErrorStack| format!("file key derivation: {e}");
    let pkey = PKey::hmac(master).map_err(err)?;
    let mut signer = Signer::new(MessageDigest::sha256(), &pkey).map_err(err)?;
    signer.update(b"siprec file key").map_err(err)?;
    signer.update(salt).map_err(err)?;
    let mac = signer.sign_to_vec().map_err(err)?;
    let mut key = [0u8; 32];
    key.copy_from_slice(&mac[..32]);
    Ok(key)
}

fn nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

/// Seals one file's records.
pub struct Sealer {
    cipher: Aes256Gcm,
    header: Vec<u8>,
    key_id: String,
    index: u64,
}

impl Sealer {
    /// A sealer for a new file under the keyring's active key, with a fresh random salt.
    pub fn new(keyring: &Keyring) -> Result<Sealer, String> {
        let mut salt = [0u8; 16];
        openssl::rand::rand_bytes(&mut salt).map_err(|e| format!("random salt: {e}"))?;
        let (id, master) = &keyring.keys[0];
        let key = file_key(master, &salt)?;
        let mut header = Vec::with_capacity(8 + 1 + id.len() + 16);
        header.extend_from_slice(MAGIC);
        header.push(id.len() as u8);
        header.extend_from_slice(id.as_bytes());
        header.extend_from_slice(&salt);
        Ok(Sealer {
            cipher: Aes256Gcm::new(GenericArray::from_slice(&key)),
            header,
            key_id: id.clone(),
            index: 0,
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The file's header: written first, before any record.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    pub fn data(&mut self, offset: u64, bytes: &[u8], out: &mut Vec<u8>) {
        self.seal(DATA, offset, bytes, out)
    }

    pub fn patch(&mut self, offset: u64, bytes: &[u8], out: &mut Vec<u8>) {
        self.seal(PATCH, offset, bytes, out)
    }

    pub fn end(&mut self, offset: u64, out: &mut Vec<u8>) {
        self.seal(END, offset, &[], out)
    }

    /// Appends one record to `out`.
    fn seal(&mut self, kind: u8, offset: u64, bytes: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let len = 1 + 8 + bytes.len() + TAG;
        out.extend_from_slice(&(len as u32).to_be_bytes());
        let body = out.len();
        out.push(kind);
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(bytes);
        let nonce = nonce(self.index);
        self.index += 1;
        let tag = self
            .cipher
            .encrypt_in_place_detached(
                GenericArray::from_slice(&nonce),
                &self.header,
                &mut out[body..],
            )
            .unwrap_or_else(|_| unreachable!("AES-GCM encrypts any length below 64 GiB"));
        out.extend_from_slice(&tag);
        debug_assert_eq!(out.len() - start, 4 + len);
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &self.key_id)
            .field("records", &self.index)
            .finish()
    }
}

/// What decrypting a file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub key_id: String,
    /// The file ends with its end record (else it was cut short by a crash).
    pub complete: bool,
    pub plaintext: Vec<u8>,
}

/// Is `bytes` the start of an encrypted recording?
pub fn is_encrypted(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// The key id in an encrypted file's header, without the key.
pub fn key_id_of(path: &Path) -> Option<String> {
    let mut head = [0u8; 9 + 255];
    let n = std::io::Read::read(&mut std::fs::File::open(path).ok()?, &mut head).ok()?;
    let head = &head[..n];
    let len = usize::from(*head.get(8)?);
    (is_encrypted(head) && head.len() >= 9 + len)
        .then(|| String::from_utf8_lossy(&head[9..9 + len]).into_owned())
}

/// Decrypts a whole file: every record must authenticate; a torn record at the end (a crash)
/// ends it, reported as not `complete`.
pub fn open(keyring: &Keyring, bytes: &[u8]) -> Result<Opened, String> {
    if !is_encrypted(bytes) {
        return Err("not an encrypted siprec recording".into());
    }
    let id_len = usize::from(*bytes.get(8).ok_or("header cut short")?);
    let header_len = 9 + id_len + 16;
    let header = bytes.get(..header_len).ok_or("header cut short")?;
    let key_id = std::str::from_utf8(&header[9..9 + id_len]).map_err(|_| "bad key id")?;
    let master = keyring
        .get(key_id)
        .ok_or_else(|| format!("key {key_id} is not in the key file"))?;
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&header[9 + id_len..]);
    let cipher = Aes256Gcm::new(GenericArray::from_slice(&file_key(master, &salt)?));
    let mut plaintext = Vec::new();
    let mut at = header_len;
    let mut index = 0u64;
    let mut complete = false;
    let mut buf = Vec::new();
    while at < bytes.len() {
        let Some(len) = bytes.get(at..at + 4) else {
            break; // torn length
        };
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        if !(1 + 8 + TAG..=RECORD_MAX).contains(&len) {
            return Err(format!("record {index}: bad length"));
        }
        let Some(record) = bytes.get(at + 4..at + 4 + len) else {
            break; // torn record: a crash while it was written
        };
        if complete {
            return Err("data after the end record".into());
        }
        buf.clear();
        buf.extend_from_slice(&record[..len - TAG]);
        let tag = GenericArray::from_slice(&record[len - TAG..]);
        cipher
            .decrypt_in_place_detached(
                GenericArray::from_slice(&nonce(index)),
                header,
                &mut buf,
                tag,
            )
            .map_err(|_| format!("record {index}: authentication failed (wrong key or altered)"))?;
        let offset = u64::from_be_bytes(buf[1..9].try_into().expect("8 bytes")) as usize;
        let body = &buf[9..];
        match buf[0] {
            DATA if offset == plaintext.len() => plaintext.extend_from_slice(body),
            PATCH if offset + body.len() <= plaintext.len() => {
                plaintext[offset..offset + body.len()].copy_from_slice(body)
            }
            END if offset == plaintext.len() => complete = true,
            _ => return Err(format!("record {index}: out of place")),
        }
        at += 4 + len;
        index += 1;
    }
    Ok(Opened {
        key_id: key_id.to_owned(),
        complete,
        plaintext,
    })
}

/// Decrypts `input` into `output` (which must not exist).
pub fn decrypt_file(keyring: &Keyring, input: &Path, output: &Path) -> Result<Opened, String> {
    let bytes = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let opened = open(keyring, &bytes).map_err(|e| format!("{}: {e}", input.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(output)
        .map_err(|e| format!("{}: {e}", output.display()))?;
    std::io::Write::write_all(&mut file, &opened.plaintext)
        .map_err(|e| format!("{}: {e}", output.display()))?;
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = "# rotation: new key first\nk2 \
        1111111111111111111111111111111111111111111111111111111111111111\nk1 \
        2222222222222222222222222222222222222222222222222222222222222222\n";

    fn sealed(keyring: &Keyring) -> (Vec<u8>, Vec<u8>) {
        let mut s = Sealer::new(keyring).unwrap();
        let mut file = s.header().to_vec();
        let mut plain = b"RIFF\0\0\0\0WAVE".to_vec();
        s.data(0, &plain, &mut file);
        s.data(12, b"abcdef", &mut file);
        plain.extend_from_slice(b"abcdef");
        s.patch(4, &[9, 9, 9, 9], &mut file);
        plain[4..8].copy_from_slice(&[9, 9, 9, 9]);
        s.end(18, &mut file);
        (file, plain)
    }

    #[test]
    fn round_trip_with_patches_and_rotation() {
        let keyring = Keyring::parse(KEYS).unwrap();
        assert_eq!(keyring.active_id(), "k2");
        let (file, plain) = sealed(&keyring);
        assert!(
            !file.windows(6).any(|w| w == b"abcdef"),
            "no plaintext on disk"
        );
        let opened = open(&keyring, &file).unwrap();
        assert_eq!((opened.key_id.as_str(), opened.complete), ("k2", true));
        assert_eq!(opened.plaintext, plain);
        // An older key still decrypts its files when it is no longer first.
        let old = Keyring::parse(&KEYS.lines().skip(2).collect::<Vec<_>>().join("\n")).unwrap();
        let (old_file, _) = sealed(&old);
        assert_eq!(open(&keyring, &old_file).unwrap().key_id, "k1");
        assert!(open(
            &Keyring::parse(KEYS.lines().take(2).collect::<Vec<_>>().join("\n").as_str()).unwrap(),
            &old_file
        )
        .is_err());
    }

    #[test]
    fn tampering_and_truncation() {
        let keyring = Keyring::parse(KEYS).unwrap();
        let (file, plain) = sealed(&keyring);
        for at in [9, 30, file.len() / 2, file.len() - 1] {
            let mut bad = file.clone();
            bad[at] ^= 1;
            assert!(open(&keyring, &bad).is_err(), "flip at {at} accepted");
        }
        // A crash: the end record (and part of the patch) missing: what is whole decrypts.
        let cut = &file[..file.len() - 40];
        let opened = open(&keyring, cut).unwrap();
        assert!(!opened.complete);
        assert_eq!(
            opened.plaintext, b"RIFF\0\0\0\0WAVEabcdef",
            "the data, not the lost patch"
        );
        assert_eq!(opened.plaintext[8..], plain[8..]);
        // Two files never share a key stream: same plaintext, different ciphertext.
        let (again, _) = sealed(&keyring);
        assert_ne!(again[25..], file[25..]);
    }

    #[test]
    fn key_file_errors_never_show_keys() {
        for (text, want) in [
            ("", "no key"),
            ("k1 abcd", "64 hex digits"),
            (
                "k/1 1111111111111111111111111111111111111111111111111111111111111111",
                "key ids",
            ),
            (
                "k1 zz11111111111111111111111111111111111111111111111111111111111111",
                "64 hex",
            ),
        ] {
            let e = Keyring::parse(text).unwrap_err();
            assert!(e.contains(want) && !e.contains("1111"), "{e}");
        }
        let k = Keyring::parse(KEYS).unwrap();
        assert!(!format!("{k:?}").contains("1111"));
    }
}
