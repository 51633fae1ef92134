//! A tiny fixed-width binary codec for the values kept in sled. Hand-written rather than
//! serde-derived because every metadata operation encodes and decodes attributes: a flat
//! little-endian layout is compact, allocation-light and its format is visible in one place.

use crate::error::{MetaError, MetaResult};

pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Writer(Vec::with_capacity(n))
    }
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader(buf)
    }
    // The readers are inlined into the decoders (a getattr decodes 15 fields) and the error
    // is built out of line, so a field read costs a bounds check and a load.
    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> MetaResult<&'a [u8]> {
        if self.0.len() < n {
            return Err(truncated());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    #[inline]
    pub(crate) fn u8(&mut self) -> MetaResult<u8> {
        Ok(self.take(1)?[0])
    }
    #[inline]
    pub(crate) fn u16(&mut self) -> MetaResult<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    #[inline]
    pub(crate) fn u32(&mut self) -> MetaResult<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    #[inline]
    pub(crate) fn u64(&mut self) -> MetaResult<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    #[inline]
    pub(crate) fn i64(&mut self) -> MetaResult<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    #[inline]
    pub(crate) fn array<const N: usize>(&mut self) -> MetaResult<[u8; N]> {
        Ok(self.take(N)?.try_into().unwrap())
    }
    pub(crate) fn rest(self) -> &'a [u8] {
        self.0
    }
}

#[cold]
fn truncated() -> MetaError {
    MetaError::Store("truncated metadata record".into())
}
