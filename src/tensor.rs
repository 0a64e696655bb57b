//! Tensors as every layer sees them: a datatype, a shape and little-endian bytes.
//!
//! One representation for all datatypes keeps the codec, the models and (later) the batcher
//! simple: data is always the KServe binary layout (row-major, little-endian, no padding; BOOL is
//! one byte; each BYTES element is a 4-byte little-endian length followed by its bytes). Data is a
//! `Cow` so a binary request's tensor borrows the connection's read buffer instead of copying it,
//! and an output can borrow its input (identity) until it is written out.

use std::borrow::Cow;

use smallvec::SmallVec;

/// A tensor shape. Four dimensions inline covers nearly every request without allocating.
pub type Shape = SmallVec<[usize; 4]>;

/// The KServe v2 datatypes (plus Triton's BF16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `BOOL`, one byte per element (0 or 1).
    Bool,
    /// `UINT8`
    Uint8,
    /// `UINT16`
    Uint16,
    /// `UINT32`
    Uint32,
    /// `UINT64`
    Uint64,
    /// `INT8`
    Int8,
    /// `INT16`
    Int16,
    /// `INT32`
    Int32,
    /// `INT64`
    Int64,
    /// `FP16` (IEEE half)
    Fp16,
    /// `BF16` (bfloat16)
    Bf16,
    /// `FP32`
    Fp32,
    /// `FP64`
    Fp64,
    /// `BYTES`: variable-length byte strings.
    Bytes,
}

const NAMES: [(DataType, &str, &str); 14] = [
    (DataType::Bool, "BOOL", "TYPE_BOOL"),
    (DataType::Uint8, "UINT8", "TYPE_UINT8"),
    (DataType::Uint16, "UINT16", "TYPE_UINT16"),
    (DataType::Uint32, "UINT32", "TYPE_UINT32"),
    (DataType::Uint64, "UINT64", "TYPE_UINT64"),
    (DataType::Int8, "INT8", "TYPE_INT8"),
    (DataType::Int16, "INT16", "TYPE_INT16"),
    (DataType::Int32, "INT32", "TYPE_INT32"),
    (DataType::Int64, "INT64", "TYPE_INT64"),
    (DataType::Fp16, "FP16", "TYPE_FP16"),
    (DataType::Bf16, "BF16", "TYPE_BF16"),
    (DataType::Fp32, "FP32", "TYPE_FP32"),
    (DataType::Fp64, "FP64", "TYPE_FP64"),
    (DataType::Bytes, "BYTES", "TYPE_STRING"),
];

impl DataType {
    /// Every datatype, in the order of the spec's table.
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// Parses the protocol name (`"FP32"`).
    pub fn from_name(name: &str) -> Option<DataType> {
        NAMES
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(d, _, _)| *d)
    }

    /// Parses Triton's model-configuration name (`"TYPE_FP32"`).
    pub fn from_config_name(name: &str) -> Option<DataType> {
        NAMES
            .iter()
            .find(|(_, _, n)| *n == name)
            .map(|(d, _, _)| *d)
    }

    /// The protocol name (`"FP32"`).
    pub fn name(self) -> &'static str {
        NAMES[self as usize].1
    }

    /// Triton's model-configuration name (`"TYPE_FP32"`; BYTES is `"TYPE_STRING"`).
    pub fn config_name(self) -> &'static str {
        NAMES[self as usize].2
    }

    /// Bytes per element; `None` for BYTES, whose elements vary in length.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }
}

/// A tensor: datatype, shape and data in the KServe binary layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor<'a> {
    /// Element type.
    pub datatype: DataType,
    /// Dimensions, including the batch dimension for batched models.
    pub shape: Shape,
    /// Row-major little-endian bytes (BYTES: length-prefixed elements).
    pub data: Cow<'a, [u8]>,
}

impl Tensor<'_> {
    /// Number of elements the shape describes (1 for a scalar shape `[]`).
    pub fn element_count(&self) -> usize {
        element_count(&self.shape).unwrap_or(usize::MAX)
    }
}

/// Product of the dimensions, or `None` if it overflows.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Walks BYTES data: yields each element's bytes, or `Err(offset)` at the first malformed one.
pub fn bytes_elements(data: &[u8]) -> impl Iterator<Item = Result<&[u8], usize>> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos == data.len() {
            return None;
        }
        let start = pos;
        let Some(len_bytes) = data.get(pos..pos + 4) else {
            pos = data.len();
            return Some(Err(start));
        };
        let len = u32::from_le_bytes(len_bytes.try_into().expect("slice of 4")) as usize;
        let Some(element) = data.get(pos + 4..pos + 4 + len) else {
            pos = data.len();
            return Some(Err(start));
        };
        pos += 4 + len;
        Some(Ok(element))
    })
}

/// Counts BYTES elements, or `Err(offset)` of the first malformed one.
pub fn count_bytes_elements(data: &[u8]) -> Result<usize, usize> {
    bytes_elements(data).try_fold(0usize, |n, e| e.map(|_| n + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::from_name(d.name()), Some(d));
        }
        assert_eq!(DataType::from_name("fp32"), None);
        assert_eq!(DataType::Bytes.config_name(), "TYPE_STRING");
        assert_eq!(DataType::Fp32.config_name(), "TYPE_FP32");
    }

    #[test]
    fn bytes_elements_walks_and_rejects() {
        let mut data = Vec::new();
        for s in [&b"ab"[..], b"", b"xyz"] {
            data.extend_from_slice(&(s.len() as u32).to_le_bytes());
            data.extend_from_slice(s);
        }
        let got: Vec<_> = bytes_elements(&data).map(Result::unwrap).collect();
        assert_eq!(got, vec![&b"ab"[..], b"", b"xyz"]);
        assert_eq!(count_bytes_elements(&data), Ok(3));
        assert_eq!(count_bytes_elements(&data[..data.len() - 1]), Err(10));
        assert_eq!(count_bytes_elements(&[1, 0]), Err(0));
    }

    #[test]
    fn element_count_checks_overflow() {
        assert_eq!(element_count(&[2, 3]), Some(6));
        assert_eq!(element_count(&[]), Some(1));
        assert_eq!(element_count(&[usize::MAX, 2]), None);
    }
}
