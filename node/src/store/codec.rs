//! Compact binary encoding of stored records (postcard): values stay raw bytes, never JSON
//! arrays of numbers.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

/// Encodes a record.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(to_sized_vec(value)?)
}

/// Postcard into a buffer allocated once at the exact size. `postcard::to_stdvec` grows its
/// buffer by doubling, so a 4 MiB value would be copied through reallocations into an 8 MiB
/// allocation; with several values in flight per write (log, state, one body per follower)
/// that doubled the write path's memory. The size pass only adds up lengths.
pub fn to_sized_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let size = postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())?;
    postcard::to_extend(value, Vec::with_capacity(size))
}

/// Decodes a record.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(postcard::from_bytes(bytes)?)
}

/// Big-endian `u64` so lexical key order equals numeric order.
pub fn be_u64(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Reads a big-endian `u64` key.
pub fn read_be_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("expected an 8-byte index key, got {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}
