//! The task's log as it grows, and the tail of stderr that explains a failure. Object
//! stores cannot append, so the log is held in memory and rewritten whole: both the log
//! and the tail are bounded whatever a script prints.

use std::collections::VecDeque;
use std::time::Duration;

use tracing::warn;

use crate::domain::path::LakePath;
use crate::ports::Lake;

/// The most of a task's output the lake keeps.
pub const MAX_STORED_LOG: usize = 32 << 20;

/// How fast a growing log is rewritten: once a second while small, less often as it grows.
const LOG_REWRITE_BYTES_PER_SEC: usize = 4 << 20;

/// Lines of stderr kept to explain a failure.
const STDERR_TAIL_LINES: usize = 20;

/// The most of an unfinished stderr line kept (a progress bar redrawn with `\r` forever
/// is one such line); its end is what explains a failure.
const MAX_PARTIAL_LINE: usize = 4096;

/// The most characters of a failure's explanation.
const MAX_ERROR_LINE: usize = 500;

/// When an object that grows is next rewritten whole (object stores cannot append): once
/// a second while small, less often as it grows.
#[derive(Default)]
pub(super) struct RewriteClock {
    next: Option<tokio::time::Instant>,
}

impl RewriteClock {
    pub(super) fn due(&self) -> bool {
        self.next
            .is_none_or(|due| tokio::time::Instant::now() >= due)
    }

    pub(super) fn rewrote(&mut self, len: usize) {
        self.next = Some(tokio::time::Instant::now() + rewrite_interval(len));
    }
}

#[derive(Default)]
pub struct LogBuffer {
    pub(super) bytes: Vec<u8>,
    /// Output past `MAX_STORED_LOG`, counted but not kept.
    pub(super) dropped: u64,
    flushed: usize,
    clock: RewriteClock,
    stderr_tail: VecDeque<String>,
    stderr_partial: Vec<u8>,
}

/// How long after a rewrite of `len` bytes the log is rewritten again.
fn rewrite_interval(len: usize) -> Duration {
    Duration::from_secs(1).max(Duration::from_secs_f64(
        len as f64 / LOG_REWRITE_BYTES_PER_SEC as f64,
    ))
}

impl LogBuffer {
    pub fn push(&mut self, is_stderr: bool, chunk: &[u8]) {
        self.keep(chunk);
        // The tail is kept whatever the size, so a failure is still explained.
        if is_stderr {
            self.scan_stderr(chunk);
        }
    }

    /// Appends a line of the runner's own.
    pub fn note(&mut self, line: &str) {
        self.push(true, format!("[lancer] {line}\n").as_bytes());
    }

    fn keep(&mut self, chunk: &[u8]) {
        let room = MAX_STORED_LOG.saturating_sub(self.bytes.len());
        if chunk.len() <= room {
            self.bytes.extend_from_slice(chunk);
            return;
        }
        self.bytes.extend_from_slice(&chunk[..room]);
        if self.dropped == 0 {
            warn!(
                limit = MAX_STORED_LOG,
                "the task's output reached the log limit; the rest is not kept"
            );
            self.bytes.extend_from_slice(
                format!(
                    "\n[lancer] the log reached {} MiB: the rest of the output is not kept\n",
                    MAX_STORED_LOG >> 20
                )
                .as_bytes(),
            );
        }
        self.dropped += (chunk.len() - room) as u64;
    }

    /// Splits stderr into lines at `\n` or `\r`, looking at each byte once.
    fn scan_stderr(&mut self, chunk: &[u8]) {
        for piece in chunk.split_inclusive(|&b| b == b'\n' || b == b'\r') {
            self.stderr_partial.extend_from_slice(piece);
            if piece.ends_with(b"\n") || piece.ends_with(b"\r") {
                let line = std::mem::take(&mut self.stderr_partial);
                self.end_line(&line);
            } else if self.stderr_partial.len() > MAX_PARTIAL_LINE {
                let excess = self.stderr_partial.len() - MAX_PARTIAL_LINE;
                self.stderr_partial.drain(..excess);
            }
        }
    }

    fn end_line(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line).trim().to_owned();
        if line.is_empty() {
            return;
        }
        if self.stderr_tail.len() == STDERR_TAIL_LINES {
            self.stderr_tail.pop_front();
        }
        self.stderr_tail
            .push_back(line.chars().take(MAX_ERROR_LINE).collect());
    }

    pub fn last_error_line(&self) -> Option<String> {
        let partial = String::from_utf8_lossy(&self.stderr_partial)
            .trim()
            .to_owned();
        let line = if partial.is_empty() {
            self.stderr_tail.back().cloned()?
        } else {
            partial
        };
        Some(line.chars().take(MAX_ERROR_LINE).collect())
    }

    /// Rewrites the log if it changed and its last rewrite was long enough ago.
    pub async fn flush_when_due(&mut self, lake: &dyn Lake, path: &LakePath) {
        if self.clock.due() {
            self.flush(lake, path).await;
        }
    }

    /// Rewrites the log if it changed.
    pub async fn flush(&mut self, lake: &dyn Lake, path: &LakePath) {
        if self.flushed == self.bytes.len() && self.flushed != 0 {
            return;
        }
        match lake.put(path, self.bytes.clone()).await {
            Ok(()) => {
                self.flushed = self.bytes.len();
                self.clock.rewrote(self.flushed);
            }
            Err(err) => warn!(%err, "cannot write the task log to the lake"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_log_limit_is_dropped_with_a_note_but_still_explains_a_failure() {
        let mut log = LogBuffer::default();
        let line = [b'x'; 1023]
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>();
        for _ in 0..(MAX_STORED_LOG / line.len() + 100) {
            log.push(false, &line);
        }
        log.push(true, b"RuntimeError: out of patience\n");
        let note = "[lancer] the log reached 32 MiB: the rest of the output is not kept\n";
        assert_eq!(log.bytes.len(), MAX_STORED_LOG + 1 + note.len());
        assert!(log.bytes.ends_with(note.as_bytes()));
        assert_eq!(log.dropped, 100 * 1024 + 30);
        assert_eq!(
            log.last_error_line().as_deref(),
            Some("RuntimeError: out of patience")
        );
    }

    #[test]
    fn a_big_log_is_rewritten_less_often_than_a_small_one() {
        assert_eq!(rewrite_interval(0), Duration::from_secs(1));
        assert_eq!(
            rewrite_interval(LOG_REWRITE_BYTES_PER_SEC),
            Duration::from_secs(1)
        );
        assert_eq!(rewrite_interval(MAX_STORED_LOG), Duration::from_secs(8));
    }

    #[test]
    fn a_failure_is_explained_by_the_last_stderr_line() {
        let mut log = LogBuffer::default();
        log.push(false, b"working\n");
        log.push(
            true,
            b"Traceback (most recent call last):\n  File x\nValueError: bad params\n",
        );
        assert_eq!(
            log.last_error_line().as_deref(),
            Some("ValueError: bad params")
        );
    }

    #[test]
    fn an_endless_progress_bar_on_stderr_keeps_memory_bounded() {
        let mut log = LogBuffer::default();
        for step in 0..200_000 {
            log.push(
                true,
                format!("\r{step:>8} it [00:01, 1000 it/s]").as_bytes(),
            );
        }
        let mut no_end = LogBuffer::default();
        for _ in 0..10_000 {
            no_end.push(true, &[b'x'; 1000]);
        }
        assert!(log.stderr_partial.len() <= MAX_PARTIAL_LINE + 64);
        assert!(no_end.stderr_partial.len() <= MAX_PARTIAL_LINE + 1000);
        assert_eq!(log.stderr_tail.len(), STDERR_TAIL_LINES);
        assert_eq!(
            log.last_error_line().as_deref(),
            Some("199999 it [00:01, 1000 it/s]")
        );
        assert_eq!(
            no_end.last_error_line().map(|l| l.len()),
            Some(MAX_ERROR_LINE)
        );
    }
}
