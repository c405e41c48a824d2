//! Bounds-checked cursor over input bytes, and small output helpers.
//!
//! Every read is checked; a short read yields the [`Fail`] the reader was
//! created with, so each nesting level (message, match, action, ...) reports
//! its own OFPT_ERROR code.

use bytes::{BufMut, BytesMut};

use crate::error::Fail;

/// A cursor over a byte slice; all reads are bounds-checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    short: Fail,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], short: Fail) -> Self {
        Self { buf, short }
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    #[inline]
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Fail> {
        match self.buf.split_first_chunk::<N>() {
            Some((a, rest)) => {
                self.buf = rest;
                Ok(*a)
            }
            None => Err(self.short),
        }
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, Fail> {
        match self.buf.split_first() {
            Some((b, rest)) => {
                self.buf = rest;
                Ok(*b)
            }
            None => Err(self.short),
        }
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, Fail> {
        self.array().map(u16::from_be_bytes)
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, Fail> {
        self.array().map(u32::from_be_bytes)
    }

    #[inline]
    pub(crate) fn u64(&mut self) -> Result<u64, Fail> {
        self.array().map(u64::from_be_bytes)
    }

    #[inline]
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Fail> {
        if n > self.buf.len() {
            return Err(self.short);
        }
        let (a, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(a)
    }

    #[inline]
    pub(crate) fn skip(&mut self, n: usize) -> Result<(), Fail> {
        self.bytes(n).map(|_| ())
    }

    /// Everything that is left.
    #[inline]
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fail with `f` unless everything was consumed.
    #[inline]
    pub(crate) fn finish(&self, f: Fail) -> Result<(), Fail> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(f)
        }
    }

    /// A fixed-size NUL-padded string field.
    pub(crate) fn string(&mut self, n: usize) -> Result<String, Fail> {
        let raw = self.bytes(n)?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Ok(String::from_utf8_lossy(raw.get(..end).unwrap_or(raw)).into_owned())
    }
}

/// The big-endian u16 at `at` in a fixed-size header (0 if out of range;
/// callers pass constant offsets inside the header, so the check folds away).
#[inline(always)]
pub(crate) fn be16<const N: usize>(h: &[u8; N], at: usize) -> u16 {
    h.get(at..at + 2)
        .and_then(|s| <[u8; 2]>::try_from(s).ok())
        .map_or(0, u16::from_be_bytes)
}

/// The big-endian u32 at `at` in a fixed-size header (see [`be16`]).
#[inline(always)]
pub(crate) fn be32<const N: usize>(h: &[u8; N], at: usize) -> u32 {
    h.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, u32::from_be_bytes)
}

/// The big-endian u64 at `at` in a fixed-size header (see [`be16`]).
#[inline(always)]
pub(crate) fn be64<const N: usize>(h: &[u8; N], at: usize) -> u64 {
    h.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Round `n` up to a multiple of 8.
#[inline]
pub(crate) const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// Append `n` zero bytes.
#[inline]
pub(crate) fn zeros(buf: &mut BytesMut, n: usize) {
    buf.put_bytes(0, n);
}

/// Pad `buf` with zeros so that the bytes written since `start` are a multiple of 8.
#[inline]
pub(crate) fn pad_to_8(buf: &mut BytesMut, start: usize) {
    let len = buf.len() - start;
    zeros(buf, pad8(len) - len);
}

/// Write a NUL-padded fixed-size string (truncated to leave at least one NUL).
pub(crate) fn put_string(buf: &mut BytesMut, s: &str, n: usize) {
    // Truncate on a character boundary so the field stays valid UTF-8.
    let mut take = s.len().min(n.saturating_sub(1));
    while !s.is_char_boundary(take) {
        take -= 1;
    }
    buf.put_slice(s.as_bytes().get(..take).unwrap_or_default());
    zeros(buf, n - take);
}

/// Overwrite the big-endian u16 at `at` with the number of bytes from `at`
/// (or `from`) to the end of the buffer. Saturates at u16::MAX; the top-level
/// encoder rejects messages over the maximum, so a saturated inner length is
/// never sent.
#[inline]
pub(crate) fn patch_len(buf: &mut BytesMut, at: usize, from: usize) {
    let len = u16::try_from(buf.len() - from).unwrap_or(u16::MAX);
    if let Some(s) = buf.get_mut(at..at + 2) {
        s.copy_from_slice(&len.to_be_bytes());
    }
}

/// Overwrite the big-endian u16 at `at` with `v`.
#[inline]
pub(crate) fn patch_u16(buf: &mut BytesMut, at: usize, v: usize) {
    let v = u16::try_from(v).unwrap_or(u16::MAX);
    if let Some(s) = buf.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Make room for at least one more element in `v` (call before
/// [`push_in_place`]).
#[inline(always)]
pub(crate) fn make_room<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve(1);
    }
}

/// Append `x` to `v`, which must have room (call [`make_room`] first in the
/// same loop iteration; without room `x` would be dropped, which debug
/// builds, tests and the fuzz targets catch).
///
/// The decoders build their enums (`OxmField`, `Action`, 40 bytes) in
/// 40-arm matches. There `Vec::push` is not inlined (too many call sites),
/// and the out-of-line push takes the value by pointer: every element was
/// written to the stack with narrow stores and read back with wide loads to
/// copy it, a store-forwarding stall per element. Writing straight into the
/// spare slot, with no call in between, builds the value in place.
#[inline(always)]
pub(crate) fn push_in_place<T>(v: &mut Vec<T>, x: T) {
    // No fallback `v.push(x)` when full: it makes the compiler build `x` on
    // the stack for both paths, undoing the point of this function
    // (measured: 25% slower FLOW_MOD decoding).
    debug_assert!(v.len() < v.capacity(), "push_in_place without make_room");
    let len = v.len();
    if let Some(slot) = v.spare_capacity_mut().first_mut() {
        slot.write(x);
        // SAFETY: the element at index `len` (the first spare slot) was
        // initialized on the line above, so the first `len + 1` elements are
        // initialized, and `len + 1 <= capacity` since that slot exists.
        unsafe { v.set_len(len + 1) };
    }
}
