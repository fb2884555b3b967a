//! A run's captured output: stdout and stderr chunks in the order they arrived, bounded by the
//! script's output limit, with the values of secret arguments masked before anything is kept.
//!
//! Beyond the limit the bytes are counted and dropped (the run is flagged `truncated`); the
//! process keeps running, so a chatty script costs CPU, never memory. Masking holds back at
//! most the longest secret's length minus one byte per stream, so a secret split across two
//! reads is still caught.

use crate::manifest::REDACTED;

/// Which pipe a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The output of one run so far.
#[derive(Debug)]
pub struct Transcript {
    /// What is kept, masked, in arrival order.
    chunks: Vec<(Stream, Vec<u8>)>,
    /// Bytes in `chunks`.
    kept: usize,
    /// The most bytes kept.
    limit: usize,
    /// Whether output beyond the limit was dropped.
    truncated: bool,
    /// Every byte the script wrote, kept or not.
    seen: u64,
    /// Per stream, bytes not yet masked because they might start a secret.
    pending: [Vec<u8>; 2],
    /// The secret values to mask.
    secrets: Vec<Vec<u8>>,
}

impl Transcript {
    pub fn new(limit: usize, secrets: &[String]) -> Transcript {
        Transcript {
            chunks: Vec::new(),
            kept: 0,
            limit,
            truncated: false,
            seen: 0,
            pending: [Vec::new(), Vec::new()],
            secrets: secrets
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        }
    }

    /// Adds bytes read from `stream`.
    pub fn push(&mut self, stream: Stream, data: &[u8]) {
        self.seen += data.len() as u64;
        if self.kept >= self.limit {
            if !data.is_empty() {
                self.truncated = true;
            }
            return;
        }
        if self.secrets.is_empty() {
            self.keep(stream, data.to_vec());
            return;
        }
        let i = stream as usize;
        let mut pending = std::mem::take(&mut self.pending[i]);
        pending.extend_from_slice(data);
        let (ready, rest) = self.mask(&pending, false);
        self.pending[i] = rest;
        self.keep(stream, ready);
    }

    /// The pipes are closed: masks and keeps what was held back.
    pub fn flush(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = std::mem::take(&mut self.pending[stream as usize]);
            if !pending.is_empty() {
                let (ready, _) = self.mask(&pending, true);
                self.keep(stream, ready);
            }
        }
    }

    /// Replaces every secret in `data`; returns the masked bytes and the tail that might still
    /// become a secret (empty when `at_end`).
    fn mask(&self, data: &[u8], at_end: bool) -> (Vec<u8>, Vec<u8>) {
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        'scan: while i < data.len() {
            let rest = &data[i..];
            for s in &self.secrets {
                if rest.starts_with(s) {
                    out.extend_from_slice(REDACTED.as_bytes());
                    i += s.len();
                    continue 'scan;
                }
            }
            if !at_end
                && self
                    .secrets
                    .iter()
                    .any(|s| rest.len() < s.len() && s.starts_with(rest))
            {
                return (out, rest.to_vec());
            }
            out.push(data[i]);
            i += 1;
        }
        (out, Vec::new())
    }

    fn keep(&mut self, stream: Stream, mut bytes: Vec<u8>) {
        let room = self.limit - self.kept;
        if bytes.len() > room {
            bytes.truncate(room);
            self.truncated = true;
        }
        if bytes.is_empty() {
            return;
        }
        self.kept += bytes.len();
        self.chunks.push((stream, bytes));
    }

    /// The chunks from index `from` on.
    pub fn chunks_from(&self, from: usize) -> &[(Stream, Vec<u8>)] {
        self.chunks.get(from..).unwrap_or(&[])
    }

    /// All that is kept of one stream.
    pub fn text(&self, stream: Stream) -> String {
        let mut all = Vec::new();
        for (s, c) in &self.chunks {
            if *s == stream {
                all.extend_from_slice(c);
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    }

    pub fn truncated(&self) -> bool {
        self.truncated
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }
}

/// A running script's transcript with a signal for followers: the API streams it while the run
/// lasts.
#[derive(Debug)]
pub struct LiveOutput {
    pub transcript: parking_lot::Mutex<Transcript>,
    /// Bumped after each change; followers wait on it.
    changed: tokio::sync::watch::Sender<u64>,
    /// The run's final record (JSON), set once it is stored.
    end: parking_lot::Mutex<Option<String>>,
}

impl LiveOutput {
    pub fn new(transcript: Transcript) -> LiveOutput {
        LiveOutput {
            transcript: parking_lot::Mutex::new(transcript),
            changed: tokio::sync::watch::channel(0).0,
            end: parking_lot::Mutex::new(None),
        }
    }

    pub fn push(&self, stream: Stream, data: &[u8]) {
        self.transcript.lock().push(stream, data);
        self.changed.send_modify(|v| *v += 1);
    }

    /// The pipes are closed: keeps what masking held back.
    pub fn flush(&self) {
        self.transcript.lock().flush();
        self.changed.send_modify(|v| *v += 1);
    }

    /// The run is recorded as ended: `end` is its final record (JSON), sent to followers last.
    pub fn close(&self, end: String) {
        *self.end.lock() = Some(end);
        self.changed.send_modify(|v| *v += 1);
    }

    /// The final record, once the run ended.
    pub fn end(&self) -> Option<String> {
        self.end.lock().clone()
    }

    /// A receiver that wakes on the next change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_stops_at_the_limit() {
        let mut t = Transcript::new(10, &[]);
        t.push(Stream::Stdout, b"hello ");
        t.push(Stream::Stderr, b"oops");
        t.push(Stream::Stdout, b"world");
        t.flush();
        assert_eq!(t.text(Stream::Stdout), "hello ");
        assert_eq!(t.text(Stream::Stderr), "oops");
        assert!(t.truncated());
        assert_eq!(t.seen(), 15);
        assert_eq!(t.chunks_from(1).len(), 1);
    }

    #[test]
    fn masks_secrets_split_across_reads() {
        let mut t = Transcript::new(1 << 20, &["hunter2".into(), "s3cr3t".into()]);
        for piece in [
            &b"pass=hun"[..],
            b"ter2 and s",
            b"3cr3",
            b"t; hunt",
            b"er3 hunter",
        ] {
            t.push(Stream::Stdout, piece);
        }
        t.push(Stream::Stderr, b"hunter2");
        t.flush();
        assert_eq!(t.text(Stream::Stdout), "pass=*** and ***; hunter3 hunter");
        assert_eq!(t.text(Stream::Stderr), "***");
    }
}
