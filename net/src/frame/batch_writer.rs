//! The hot-path batch encoder.

use std::fmt;
use std::marker::PhantomData;

use bytes::{BufMut, Bytes};
use twophase_engine::Epoch;

use super::encode::patch_length;
use super::{BatchItem, FrameKind, HEADER_BYTES, NetLimits, PROTOCOL_VERSION};

/// A message too large to fit in any frame the peer accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MessageTooLarge {
    pub bytes: usize,
    pub max_frame_bytes: u32,
}

impl fmt::Display for MessageTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a message of {} bytes cannot fit in a frame of at most {} bytes", self.bytes, self.max_frame_bytes)
    }
}

impl std::error::Error for MessageTooLarge {}

/// Hot-path batch encoder. Appends encoded messages of one kind into a single buffer; when
/// the open frame would pass `max_frame_bytes` or `max_batch` it closes it (patching length
/// and count) and opens the next, so one buffer holds any number of whole frames back to
/// back, ready for one write.
pub struct BatchWriter<T: BatchItem> {
    buf: Vec<u8>,
    /// Start of the open frame, if one is open.
    open: Option<usize>,
    count: u32,
    frames: usize,
    messages: usize,
    epoch: Epoch,
    max_frame_bytes: usize,
    max_batch: u32,
    scratch: Vec<u8>,
    _items: PhantomData<fn(T)>,
}

impl<T: BatchItem> BatchWriter<T> {
    /// A writer that respects `limits` (the receiver's).
    pub fn new(limits: &NetLimits) -> BatchWriter<T> {
        BatchWriter {
            buf: Vec::new(),
            open: None,
            count: 0,
            frames: 0,
            messages: 0,
            epoch: Epoch(0),
            max_frame_bytes: limits.max_frame_bytes.max(16) as usize,
            max_batch: limits.max_batch.max(1),
            scratch: Vec::new(),
            _items: PhantomData,
        }
    }

    /// Sets the epoch written into `ToParticipant` frame headers opened from now on.
    pub fn set_epoch(&mut self, epoch: Epoch) {
        if self.open.is_some() && epoch != self.epoch {
            self.close();
        }
        self.epoch = epoch;
    }

    fn header_bytes() -> usize {
        HEADER_BYTES + if T::KIND == FrameKind::ToParticipant { 8 } else { 4 }
    }

    fn open_frame(&mut self) {
        let start = self.buf.len();
        self.buf.put_u32_le(0);
        self.buf.put_u8(PROTOCOL_VERSION);
        self.buf.put_u8(T::KIND as u8);
        if T::KIND == FrameKind::ToParticipant {
            self.buf.put_u32_le(self.epoch.0);
        }
        self.buf.put_u32_le(0);
        self.open = Some(start);
        self.count = 0;
    }

    /// Closes the open frame, if any: patches its length and count.
    pub fn close(&mut self) {
        if let Some(start) = self.open.take() {
            let count_at = start + Self::header_bytes() - 4;
            self.buf[count_at..count_at + 4].copy_from_slice(&self.count.to_le_bytes());
            patch_length(&mut self.buf, start);
            self.frames += 1;
        }
    }

    /// Appends one message, opening a new frame first when needed.
    pub fn push(&mut self, item: &T) -> Result<(), MessageTooLarge> {
        if self.open.is_none() || self.count >= self.max_batch {
            self.close();
            self.open_frame();
        }
        let start = self.open.expect("open frame");
        let item_start = self.buf.len();
        item.encode(&mut self.buf);
        if self.buf.len() - start - 4 <= self.max_frame_bytes {
            self.count += 1;
            self.messages += 1;
            return Ok(());
        }
        // Too big for the open frame: move the item into a fresh one (rare path).
        let item_bytes = self.buf.len() - item_start;
        if Self::header_bytes() - 4 + item_bytes > self.max_frame_bytes {
            self.buf.truncate(item_start);
            if self.count == 0 {
                self.buf.truncate(start);
                self.open = None;
            }
            return Err(MessageTooLarge { bytes: item_bytes, max_frame_bytes: self.max_frame_bytes as u32 });
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.buf[item_start..]);
        self.buf.truncate(item_start);
        self.close();
        self.open_frame();
        self.buf.extend_from_slice(&self.scratch);
        self.count = 1;
        self.messages += 1;
        Ok(())
    }

    /// Messages written since the last take or clear.
    pub fn messages(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Frames closed since the last take or clear.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Bytes written so far (frames, open one included).
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Closes the open frame and returns every frame written, back to back; the writer
    /// starts afresh with a new buffer of the same capacity.
    pub fn take(&mut self) -> Bytes {
        self.close();
        let capacity = self.buf.capacity();
        self.messages = 0;
        self.frames = 0;
        Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(capacity)))
    }

    /// Closes the open frame and lends the frames written; call [`clear`](Self::clear) once
    /// they are sent, which keeps the buffer for reuse.
    pub fn finish(&mut self) -> &[u8] {
        self.close();
        &self.buf
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.open = None;
        self.count = 0;
        self.messages = 0;
        self.frames = 0;
    }
}
