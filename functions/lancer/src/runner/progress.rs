//! Reads the JSON lines a script appends to `LANCER_PROGRESS_FILE`, and keeps their
//! history in the lake beside the log.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use tracing::warn;

use super::log::RewriteClock;
use crate::domain::path::LakePath;
use crate::domain::progress::ProgressHistory;
use crate::domain::task::{Heartbeat, Progress};
use crate::ports::Lake;

/// The most of the file one read takes: a script that writes faster is read over several
/// ticks, and a line longer than this is skipped, so the runner's memory stays bounded.
const MAX_READ: u64 = 1 << 20;

pub struct ProgressReader {
    path: PathBuf,
    offset: u64,
    history: ProgressHistory,
    /// Whether the history changed since it was last written.
    dirty: bool,
    clock: RewriteClock,
}

#[derive(serde::Deserialize)]
struct ProgressLine {
    #[serde(flatten)]
    progress: Progress,
    endpoint: Option<String>,
}

impl ProgressReader {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            history: ProgressHistory::default(),
            dirty: false,
            clock: RewriteClock::default(),
        }
    }

    /// Rewrites the history if it changed and its last rewrite was long enough ago.
    pub async fn flush_when_due(&mut self, lake: &dyn Lake, path: &LakePath) {
        if self.clock.due() {
            self.flush(lake, path).await;
        }
    }

    /// Rewrites the history if it changed.
    pub async fn flush(&mut self, lake: &dyn Lake, path: &LakePath) {
        if !self.dirty {
            return;
        }
        let json = serde_json::to_vec(&self.history).expect("a history serialises");
        let len = json.len();
        match lake.put(path, json).await {
            Ok(()) => {
                self.dirty = false;
                self.clock.rewrote(len);
            }
            Err(err) => warn!(%err, "cannot write the progress history to the lake"),
        }
    }

    /// The newest complete progress line (and the newest endpoint) since the last read.
    pub fn read_new(&mut self) -> Option<Heartbeat> {
        let fresh = self.read_fresh()?;
        let complete = match fresh.iter().rposition(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None if fresh.len() as u64 == MAX_READ => {
                warn!("skipping a progress line longer than 1 MiB");
                self.offset += MAX_READ;
                return None;
            }
            None => return None,
        };
        self.offset += complete as u64;
        let mut beat = Heartbeat::default();
        let now = chrono::Utc::now();
        for line in fresh[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            match serde_json::from_slice::<ProgressLine>(line) {
                Ok(ProgressLine { progress, endpoint }) => {
                    if progress != Progress::default() {
                        self.history.record(progress.clone(), now);
                        self.dirty = true;
                        beat.progress = Some(progress);
                    }
                    if endpoint.is_some() {
                        beat.endpoint = endpoint;
                    }
                }
                Err(err) => warn!(%err, "ignoring a progress line that is not valid JSON"),
            }
        }
        (beat != Heartbeat::default()).then_some(beat)
    }

    /// At most `MAX_READ` bytes written since the last complete line.
    fn read_fresh(&self) -> Option<Vec<u8>> {
        let mut file = std::fs::File::open(&self.path).ok()?;
        file.seek(SeekFrom::Start(self.offset)).ok()?;
        let mut fresh = Vec::new();
        file.take(MAX_READ).read_to_end(&mut fresh).ok()?;
        Some(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_read_once_and_partial_lines_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("progress.jsonl");
        std::fs::write(
            &path,
            "{\"fraction\":0.5}\n{\"fraction\":0.7,\"message\":\"m\"}\n{\"fra",
        )
        .expect("write");
        let mut reader = ProgressReader::new(path.clone());
        let beat = reader.read_new().expect("a complete line");
        assert_eq!(beat.progress.and_then(|p| p.fraction), Some(0.7));
        assert!(reader.read_new().is_none(), "nothing new");
        std::fs::write(&path, "{\"fraction\":0.5}\n{\"fraction\":0.7,\"message\":\"m\"}\n{\"fraction\":1.0}\n{\"endpoint\":\"http://127.0.0.1:1\"}\n")
            .expect("write");
        let beat = reader.read_new().expect("the completed line");
        assert_eq!(beat.progress.and_then(|p| p.fraction), Some(1.0));
        assert_eq!(beat.endpoint.as_deref(), Some("http://127.0.0.1:1"));
    }

    #[test]
    fn a_line_without_end_is_skipped_in_bounded_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("progress.jsonl");
        let mut text = "x".repeat(3 * MAX_READ as usize);
        text.push_str("\n{\"fraction\":0.25}\n");
        std::fs::write(&path, &text).expect("write");
        let mut reader = ProgressReader::new(path);
        let beats: Vec<_> = (0..5).filter_map(|_| reader.read_new()).collect();
        assert_eq!(
            beats.last().and_then(|b| b.progress.as_ref()?.fraction),
            Some(0.25),
            "the line after the long one is read"
        );
        assert_eq!(reader.offset, text.len() as u64);
    }
}
