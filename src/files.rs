//! Writing result files: whole or not at all, and every failure one line naming the file.
//!
//! A regular file is written to a temporary file beside it and renamed over it, so a full
//! disk or an interrupted run leaves the previous file or none, never a short one. A path
//! that is not a regular file (a pipe, `/dev/stdout`, `/dev/full`) is written in place.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

/// Writes `bytes` to `path` whole, or fails naming the file and the cause.
pub fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let in_place = fs::metadata(path).is_ok_and(|m| !m.file_type().is_file());
    let res = if in_place { write_in_place(path, bytes) } else { write_via_rename(path, bytes) };
    res.with_context(|| format!("cannot write '{}'", path.display()))
}

fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(bytes)?;
    f.flush()
}

fn write_via_rename(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_beside(path);
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.flush()
    });
    match written.and_then(|()| fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `value` as pretty JSON.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    write_whole(path, &text)
}

/// Writes `rows` as CSV with a header from their field names.
pub fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    write_whole(path, &bytes)
}

/// Checks now that `path` can be created, so a run does not spend minutes before failing
/// on an output it can never write.
pub fn check_writable(path: &Path) -> anyhow::Result<()> {
    if fs::metadata(path).is_ok_and(|m| !m.file_type().is_file()) {
        return fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map(drop)
            .with_context(|| format!("cannot write '{}'", path.display()));
    }
    let tmp = temp_beside(path);
    File::create(&tmp).with_context(|| format!("cannot create '{}'", path.display()))?;
    let _ = fs::remove_file(tmp);
    Ok(())
}
