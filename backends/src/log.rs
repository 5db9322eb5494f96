//! The per-connection log: where every thread's rows go.
//!
//! A log that cannot be written must never take the echo service down, and must never
//! end in half a row. Rows are therefore serialized whole into a buffer and written in
//! batches at a known row boundary; a write that fails (a full disk) is cut back to that
//! boundary, its rows are counted as lost, the failure is reported once (naming the file),
//! and serving goes on. The summary carries the count, and the server exits non-zero.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::book::ConnRecord;
use crate::notice::{Notice, Notices};

/// The log's header, in column order.
pub const LOG_COLUMNS: [&str; 8] =
    ["peer", "fd", "worker", "bytes", "reads", "opened_unix_s", "closed_unix_s", "close_reason"];

/// Rows are written to the file once this much is buffered (and at the end): about 200
/// rows per write.
const WRITE_AT_BYTES: usize = 16 * 1024;

/// Where log rows go: a CSV file shared by all threads, or nowhere (rows still counted).
pub struct ConnLog {
    file: Option<Mutex<LogFile>>,
    /// Rows written to the file (or counted, without one).
    written: AtomicU64,
    /// Rows that could not be written.
    lost: AtomicU64,
}

struct LogFile {
    path: PathBuf,
    file: File,
    /// Whole rows not yet written.
    buf: Vec<u8>,
    rows_in_buf: u64,
    /// The file's length at its last row boundary.
    good_len: u64,
    reported: bool,
}

impl ConnLog {
    /// A log that only counts rows.
    pub fn counting() -> Self {
        ConnLog { file: None, written: AtomicU64::new(0), lost: AtomicU64::new(0) }
    }

    /// A CSV log at `path`, created (or truncated) now with its header, so a path that
    /// cannot be written at all fails at start rather than after serving.
    pub fn create(path: &Path) -> io::Result<Self> {
        let mut file = File::create(path)?;
        let header = format!("{}\n", LOG_COLUMNS.join(","));
        file.write_all(header.as_bytes())?;
        let lf = LogFile {
            path: path.to_path_buf(),
            file,
            buf: Vec::with_capacity(WRITE_AT_BYTES * 2),
            rows_in_buf: 0,
            good_len: header.len() as u64,
            reported: false,
        };
        Ok(ConnLog { file: Some(Mutex::new(lf)), written: AtomicU64::new(0), lost: AtomicU64::new(0) })
    }

    /// Takes `rows` (leaving the vector empty). Never fails: a row that cannot be written
    /// is counted in [`lost`](Self::lost) and reported once through `notices`.
    pub fn append(&self, rows: &mut Vec<ConnRecord>, notices: &Notices) {
        if rows.is_empty() {
            return;
        }
        let Some(f) = &self.file else {
            self.written.fetch_add(rows.len() as u64, Ordering::Relaxed);
            rows.clear();
            return;
        };
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        for r in rows.drain(..) {
            f.push_row(&r);
        }
        if f.buf.len() >= WRITE_AT_BYTES {
            f.write_out(self, notices);
        }
    }

    /// Writes every buffered row to the file.
    pub fn flush(&self, notices: &Notices) {
        if let Some(f) = &self.file {
            f.lock().unwrap_or_else(|p| p.into_inner()).write_out(self, notices);
        }
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Rows that could not be written.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

impl LogFile {
    fn push_row(&mut self, r: &ConnRecord) {
        // Formatting into memory cannot fail; a row is appended whole or not at all.
        let before = self.buf.len();
        let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(&mut self.buf);
        let ok = w.serialize(r).is_ok() && w.flush().is_ok();
        drop(w);
        if ok {
            self.rows_in_buf += 1;
        } else {
            self.buf.truncate(before);
        }
    }

    fn write_out(&mut self, log: &ConnLog, notices: &Notices) {
        if self.buf.is_empty() {
            return;
        }
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.good_len += self.buf.len() as u64;
                log.written.fetch_add(self.rows_in_buf, Ordering::Relaxed);
            }
            Err(e) => {
                // Part of the batch may have reached the file: cut back to the last whole
                // row so the CSV never ends mid-row, and go on from there.
                let _ = self.file.set_len(self.good_len);
                let _ = self.file.seek(SeekFrom::Start(self.good_len));
                let lost = log.lost.fetch_add(self.rows_in_buf, Ordering::Relaxed) + self.rows_in_buf;
                if !std::mem::replace(&mut self.reported, true) {
                    notices.report(Notice::WriteFailed {
                        path: self.path.display().to_string(),
                        error: e.to_string(),
                        rows_lost: lost,
                    });
                }
            }
        }
        self.buf.clear();
        self.rows_in_buf = 0;
    }
}

/// Reads a per-connection log back (tests and the report use it).
pub fn read_log(path: &Path) -> io::Result<Vec<ConnRecord>> {
    let mut r = csv::Reader::from_path(path).map_err(io::Error::other)?;
    r.deserialize().map(|row| row.map_err(io::Error::other)).collect()
}
