//! TensorBoard event files: scalar summaries beside `metrics.jsonl`.
//!
//! Written by hand: an event file is TFRecord framing (length, masked CRC-32C, payload, masked
//! CRC-32C) around `Event` protobufs with `Summary.Value{tag, simple_value}`, a few dozen lines
//! where the crates for it are unmaintained or pull in a protobuf toolchain. The file is
//! rebuilt from `metrics.jsonl` after every update, so it always matches the metrics (also
//! after a resume).

use std::path::Path;

use crate::results::MetricsRow;

/// CRC-32C (Castagnoli), bitwise; event files are small.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

fn masked(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// One `Event` protobuf: wall_time (1, double), step (2, int64), and either file_version
/// (3, string) or summary (5) of scalar values.
fn event(wall_time: f64, step: i64, file_version: Option<&str>, scalars: &[(String, f32)]) -> Vec<u8> {
    let mut e = Vec::new();
    varint((1 << 3) | 1, &mut e);
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint(2 << 3, &mut e);
    varint(step as u64, &mut e);
    if let Some(v) = file_version {
        field_bytes(3, v.as_bytes(), &mut e);
    }
    if !scalars.is_empty() {
        let mut summary = Vec::new();
        for (tag, x) in scalars {
            let mut value = Vec::new();
            field_bytes(1, tag.as_bytes(), &mut value);
            varint((2 << 3) | 5, &mut value);
            value.extend_from_slice(&x.to_le_bytes());
            field_bytes(1, &value, &mut summary);
        }
        field_bytes(5, &summary, &mut e);
    }
    e
}

fn record(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked(crc32c(&len)).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked(crc32c(payload)).to_le_bytes());
}

/// Write `rows` as one event file at `path`: each row's numeric fields as `section/name`
/// scalars at step `update`.
pub fn write(path: &Path, rows: &[MetricsRow]) -> std::io::Result<()> {
    let mut out = Vec::new();
    let t0 = rows.first().map(|r| r.wall_time).unwrap_or(0.0);
    record(&event(t0, 0, Some("brain.Event:2"), &[]), &mut out);
    for r in rows {
        let scalars: Vec<(String, f32)> = r.scalars().into_iter().map(|(k, v)| (k, v as f32)).collect();
        record(&event(r.wall_time, r.update as i64, None, &scalars), &mut out);
    }
    crate::fsx::write_atomic(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_values() {
        // RFC 3720 test vectors
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn records_are_framed_and_checksummed() {
        let dir = std::env::temp_dir().join(format!("mpo-tb-{}", std::process::id()));
        let p = dir.join("events.out.tfevents.test");
        let row = MetricsRow {
            update: 1,
            reward: crate::results::metrics::Spread { mean: Some(0.5), ..Default::default() },
            ..Default::default()
        };
        write(&p, &[row]).unwrap();
        let b = std::fs::read(&p).unwrap();
        // walk the records: every length and payload checksum must verify
        let mut i = 0;
        let mut n = 0;
        while i < b.len() {
            let len = u64::from_le_bytes(b[i..i + 8].try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(b[i + 8..i + 12].try_into().unwrap()), masked(crc32c(&b[i..i + 8])));
            let payload = &b[i + 12..i + 12 + len];
            assert_eq!(u32::from_le_bytes(b[i + 12 + len..i + 16 + len].try_into().unwrap()), masked(crc32c(payload)));
            i += 16 + len;
            n += 1;
        }
        assert_eq!(n, 2);
        assert!(String::from_utf8_lossy(&b).contains("reward/mean"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
