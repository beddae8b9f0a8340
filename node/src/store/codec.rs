//! Compact binary encoding of stored records (postcard): values stay raw bytes, never JSON
//! arrays of numbers.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

/// Encodes a record.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(postcard::to_stdvec(value)?)
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
