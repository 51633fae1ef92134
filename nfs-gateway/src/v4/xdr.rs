//! XDR (RFC 4506) for NFSv4's COMPOUND: a bounds-checked reader over a call's arguments and a
//! writer for its results. Every length read from the wire is checked against what is left
//! before anything is allocated for it, so a hostile count costs nothing.

use bytes::Bytes;

use super::status::{Fail, Status};

/// The arguments failed to decode: the operation answers NFS4ERR_BADXDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadXdr;

impl From<BadXdr> for Fail {
    fn from(_: BadXdr) -> Self {
        Status::BADXDR.into()
    }
}

pub type Decoded<T> = Result<T, BadXdr>;

/// Reads XDR from a slice, consuming it.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, n: usize) -> Decoded<&'a [u8]> {
        if self.rest.len() < n {
            return Err(BadXdr);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn u32(&mut self) -> Decoded<u32> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self) -> Decoded<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub fn i64(&mut self) -> Decoded<i64> {
        Ok(self.u64()? as i64)
    }

    pub fn bool(&mut self) -> Decoded<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(BadXdr),
        }
    }

    /// Fixed-length opaque data (with its padding).
    pub fn fixed<const N: usize>(&mut self) -> Decoded<[u8; N]> {
        let bytes: [u8; N] = self.take(N)?.try_into().expect("N bytes");
        self.take(N.next_multiple_of(4) - N)?;
        Ok(bytes)
    }

    /// Variable-length opaque data of at most `max` bytes, borrowed from the call.
    pub fn opaque(&mut self, max: usize) -> Decoded<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(BadXdr);
        }
        let bytes = self.take(len)?;
        self.take(len.next_multiple_of(4) - len)?;
        Ok(bytes)
    }

    /// A counted array of at most `max` elements, each read by `item`.
    pub fn array<T>(&mut self, max: usize, mut item: impl FnMut(&mut Self) -> Decoded<T>) -> Decoded<Vec<T>> {
        let count = self.u32()? as usize;
        // Every element takes at least four bytes, so a count past what is left is a lie.
        if count > max || count > self.rest.len() / 4 {
            return Err(BadXdr);
        }
        (0..count).map(|_| item(self)).collect()
    }

    /// A bitmap4: words of attribute bits.
    pub fn bitmap(&mut self) -> Decoded<Bitmap> {
        Ok(Bitmap(self.array(MAX_BITMAP_WORDS, Self::u32)?))
    }
}

/// More words than any attribute number needs (the highest defined is below 96).
const MAX_BITMAP_WORDS: usize = 8;

/// A set of attribute (or operation) numbers, as XDR's bitmap4.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bitmap(pub Vec<u32>);

impl Bitmap {
    pub fn of(bits: &[u32]) -> Self {
        let mut map = Bitmap::default();
        for &bit in bits {
            map.insert(bit);
        }
        map
    }

    pub fn contains(&self, bit: u32) -> bool {
        self.0.get((bit / 32) as usize).is_some_and(|word| word & (1 << (bit % 32)) != 0)
    }

    pub fn insert(&mut self, bit: u32) {
        let word = (bit / 32) as usize;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (bit % 32);
    }

    pub fn remove(&mut self, bit: u32) {
        if let Some(word) = self.0.get_mut((bit / 32) as usize) {
            *word &= !(1 << (bit % 32));
        }
    }

    /// The bits set, in increasing order (the order of their values in a fattr4).
    pub fn bits(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(i, word)| {
            (0..32).filter(move |b| word & (1 << b) != 0).map(move |b| i as u32 * 32 + b)
        })
    }

    pub fn intersection(&self, other: &Bitmap) -> Bitmap {
        Bitmap(self.0.iter().zip(&other.0).map(|(a, b)| a & b).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The same set without trailing zero words (for writing it, and comparing it).
    pub fn trimmed(&self) -> &[u32] {
        let words = self.0.iter().rposition(|w| *w != 0).map_or(0, |last| last + 1);
        &self.0[..words]
    }
}

/// Writes XDR: packed bytes, then file data kept as the engine's pieces when nothing follows
/// it (a READ that ends its COMPOUND), so that it is not copied.
#[derive(Default)]
pub struct Writer {
    pub packed: Vec<u8>,
    pub data: Vec<Bytes>,
}

impl Writer {
    pub fn with_packed(packed: Vec<u8>) -> Self {
        Writer { packed, data: Vec::new() }
    }

    /// Where the next byte goes; with [`Self::truncate`], undoes a partly written result.
    pub fn position(&mut self) -> usize {
        self.flatten_mut();
        self.packed.len()
    }

    /// The bytes written so far, data pieces included.
    pub fn len(&self) -> usize {
        self.packed.len() + self.data.iter().map(Bytes::len).sum::<usize>()
    }

    pub fn truncate(&mut self, at: usize) {
        self.flatten_mut();
        self.packed.truncate(at);
    }

    /// Moves the data pieces into the packed bytes, before anything is written after them.
    fn flatten_mut(&mut self) {
        for piece in std::mem::take(&mut self.data) {
            self.packed.extend_from_slice(&piece);
        }
    }

    pub fn u32(&mut self, v: u32) {
        self.flatten_mut();
        self.packed.extend_from_slice(&v.to_be_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.flatten_mut();
        self.packed.extend_from_slice(&v.to_be_bytes());
    }

    pub fn i64(&mut self, v: i64) {
        self.u64(v as u64);
    }

    pub fn bool(&mut self, v: bool) {
        self.u32(u32::from(v));
    }

    pub fn fixed(&mut self, bytes: &[u8]) {
        self.flatten_mut();
        self.packed.extend_from_slice(bytes);
        self.pad(bytes.len());
    }

    pub fn opaque(&mut self, bytes: &[u8]) {
        self.u32(bytes.len() as u32);
        self.fixed(bytes);
    }

    fn pad(&mut self, len: usize) {
        self.packed.resize(self.packed.len() + (len.next_multiple_of(4) - len), 0);
    }

    pub fn bitmap(&mut self, map: &Bitmap) {
        // Trailing zero words say nothing.
        let words = map.trimmed();
        self.u32(words.len() as u32);
        for word in words {
            self.u32(*word);
        }
    }

    /// Opaque file data as pieces (a READ's): its length now, the pieces after, copied only if
    /// something is written after them.
    pub fn data_pieces(&mut self, pieces: Vec<Bytes>) {
        let len: usize = pieces.iter().map(Bytes::len).sum();
        self.u32(len as u32);
        self.data = pieces;
        let padding = len.next_multiple_of(4) - len;
        if padding > 0 {
            self.data.push(Bytes::from_static(&[0; 3][..padding]));
        }
    }

    /// Overwrites the word at `at` (a count or status known only later).
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.packed[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_round_trip_with_padding() {
        let mut w = Writer::default();
        w.u32(7);
        w.opaque(b"abcde");
        w.u64(1 << 40);
        w.bool(true);
        w.fixed(&[1, 2, 3, 4, 5, 6, 7, 8]);
        w.bitmap(&Bitmap::of(&[1, 33, 55]));
        assert_eq!(w.packed.len() % 4, 0);
        let mut r = Reader::new(&w.packed);
        assert_eq!(r.u32(), Ok(7));
        assert_eq!(r.opaque(16), Ok(&b"abcde"[..]));
        assert_eq!(r.u64(), Ok(1 << 40));
        assert_eq!(r.bool(), Ok(true));
        assert_eq!(r.fixed::<8>(), Ok([1, 2, 3, 4, 5, 6, 7, 8]));
        let map = r.bitmap().unwrap();
        assert_eq!(map.bits().collect::<Vec<_>>(), vec![1, 33, 55]);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn lengths_past_the_limit_or_the_data_are_refused() {
        let mut w = Writer::default();
        w.opaque(b"0123456789");
        assert_eq!(Reader::new(&w.packed).opaque(9), Err(BadXdr));
        assert_eq!(Reader::new(&w.packed[..8]).opaque(16), Err(BadXdr));
        let huge = u32::MAX.to_be_bytes();
        assert_eq!(Reader::new(&huge).array(usize::MAX, Reader::u32), Err(BadXdr));
        assert_eq!(Reader::new(&2u32.to_be_bytes()).bool(), Err(BadXdr));
    }

    #[test]
    fn data_pieces_are_copied_only_when_something_follows() {
        let mut w = Writer::default();
        w.data_pieces(vec![Bytes::from_static(b"abc")]);
        assert_eq!(w.data.len(), 2, "data and its padding stay pieces");
        w.u32(9);
        assert!(w.data.is_empty());
        assert_eq!(w.packed, [0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 9]);
    }

    proptest! {
        #[test]
        fn random_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut r = Reader::new(&bytes);
            let _ = r.bitmap();
            let _ = r.opaque(1024);
            let _ = r.array(100, |r| r.opaque(8));
        }
    }
}
