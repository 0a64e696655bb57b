//! Tensor data as JSON, both ways.
//!
//! Decoding walks the `data` value once with a serde visitor, accepting nested arrays (in the
//! tensor's shape) or a flat array, and writes each element straight into the binary layout, so a
//! JSON request ends up in the same representation as a binary one. Every element is checked
//! against the datatype: integers must fit, BOOL takes `true`/`false`, BYTES takes strings, and
//! FP16/BF16 are accepted from JSON numbers (Triton refuses them; converting is friendlier).
//! Encoding writes a flat array, as Triton does.

use std::cell::Cell;
use std::fmt;
use std::io;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{Error as _, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::tensor::{bytes_elements, DataType};

/// Decodes a JSON `data` value of `datatype` into the binary layout, appending to `out`.
/// Returns the number of elements.
pub fn decode_json_data(datatype: DataType, raw: &str, out: &mut Vec<u8>) -> Result<usize, String> {
    let mut count = 0usize;
    let mut de = serde_json::Deserializer::from_str(raw);
    DataSeed {
        datatype,
        out,
        count: &mut count,
    }
    .deserialize(&mut de)
    .map_err(|e| strip_position(e.to_string()))?;
    de.end().map_err(|e| e.to_string())?;
    Ok(count)
}

/// serde_json appends "at line 1 column N" (of the `data` value alone), which only confuses.
fn strip_position(message: String) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    }
}

struct DataSeed<'o> {
    datatype: DataType,
    out: &'o mut Vec<u8>,
    count: &'o mut usize,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl DataSeed<'_> {
    fn push<E: de::Error>(self, r: Result<(), String>) -> Result<(), E> {
        r.map_err(E::custom)?;
        *self.count += 1;
        Ok(())
    }

    fn reborrow(&mut self) -> DataSeed<'_> {
        DataSeed {
            datatype: self.datatype,
            out: self.out,
            count: self.count,
        }
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} elements (nested or flat arrays)",
            self.datatype.name()
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self.reborrow())?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        let r = match self.datatype {
            DataType::Bool => {
                self.out.push(v as u8);
                Ok(())
            }
            d => Err(format!("expected {} element, got boolean {v}", d.name())),
        };
        self.push(r)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        let r = push_integer(self.datatype, v as i128, self.out);
        self.push(r)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        let r = push_integer(self.datatype, v as i128, self.out);
        self.push(r)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        let r = push_float(self.datatype, v, self.out);
        self.push(r)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let r = match self.datatype {
            DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64
                if v.starts_with('\0') =>
            {
                match spelled_value(v) {
                    Some(value) => {
                        push_non_finite(self.datatype, value, self.out);
                        Ok(())
                    }
                    None => Err(format!(
                        "expected {} element, got string",
                        self.datatype.name()
                    )),
                }
            }
            DataType::Bytes if is_spelled(v) => {
                Err("expected BYTES element (a string), got a bare NaN or Infinity".to_string())
            }
            DataType::Bytes => match u32::try_from(v.len()) {
                Ok(len) => {
                    self.out.extend_from_slice(&len.to_le_bytes());
                    self.out.extend_from_slice(v.as_bytes());
                    Ok(())
                }
                Err(_) => Err("BYTES element longer than 4 GiB".to_string()),
            },
            d => Err(format!("expected {} element, got string", d.name())),
        };
        self.push(r)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(format!(
            "expected {} element, got null",
            self.datatype.name()
        )))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(de::Error::custom(format!(
            "expected {} element, got an object",
            self.datatype.name()
        )))
    }
}

/// How [`spell_non_finite`] spells a NaN or an infinity: a JSON string no client would send as a
/// number (it starts with a NUL), which the float datatypes read back as what it stands for.
const SPELLED: [(&str, &str, f64); 6] = [
    ("NaN", "\"\\u0000NaN\"", f64::NAN),
    ("-NaN", "\"\\u0000NaN\"", f64::NAN),
    ("Infinity", "\"\\u0000Infinity\"", f64::INFINITY),
    ("-Infinity", "\"\\u0000-Infinity\"", f64::NEG_INFINITY),
    ("Inf", "\"\\u0000Infinity\"", f64::INFINITY),
    ("-Inf", "\"\\u0000-Infinity\"", f64::NEG_INFINITY),
];

/// What a string [`spell_non_finite`] wrote stands for, if it is one: `spelled` is
/// `"\u0000TOKEN"`, and `v` is that string read (NUL, then TOKEN).
fn spelled_value(v: &str) -> Option<f64> {
    let token = v.strip_prefix('\0')?;
    SPELLED
        .iter()
        .find(|(_, spelled, _)| &spelled[7..spelled.len() - 1] == token)
        .map(|&(_, _, value)| value)
}

fn is_spelled(v: &str) -> bool {
    spelled_value(v).is_some()
}

/// `json` with every bare `NaN`, `-NaN`, `Infinity`, `-Infinity`, `Inf` and `-Inf` element of a
/// `"data"` array spelled as a string the float datatypes read back, or None if it has none.
/// These tokens are not JSON, but Triton reads them (RapidJSON's `kParseNanAndInfFlag`) and
/// Python's `json.dumps` writes them for NaN and the infinities. Anywhere else they stay as they
/// are, so the body is still refused as JSON.
pub fn spell_non_finite(json: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut in_string, mut escaped, mut last, mut copied) = (false, false, b' ', 0);
    // Nesting depth; the depth just outside the `"data"` array being scanned, if any; whether
    // the last key was `"data"` and its value has not begun; where the last string began.
    let (mut depth, mut data_depth, mut data_key, mut string_start) = (0usize, None, false, 0);
    let mut last_string: &[u8] = &[];
    let mut i = 0;
    while i < json.len() {
        let c = json[i];
        if in_string {
            match c {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_string = false;
                    last_string = &json[string_start..i];
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                string_start = i + 1;
            }
            b':' => data_key = last == b'"' && last_string == b"data",
            b'[' | b'{' => {
                if c == b'[' && data_key && data_depth.is_none() {
                    data_depth = Some(depth);
                }
                depth += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if data_depth == Some(depth) {
                    data_depth = None;
                }
            }
            b'N' | b'I' | b'-' if data_depth.is_some() && matches!(last, b'[' | b',') => {
                // The longest token that matches here and ends at a delimiter.
                let token = SPELLED
                    .iter()
                    .filter(|(t, _, _)| {
                        json[i..].starts_with(t.as_bytes())
                            && json.get(i + t.len()).is_none_or(|d| {
                                matches!(d, b',' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                            })
                    })
                    .max_by_key(|(t, _, _)| t.len());
                if let Some((t, spelled, _)) = token {
                    out.extend_from_slice(&json[copied..i]);
                    out.extend_from_slice(spelled.as_bytes());
                    i += t.len();
                    copied = i;
                    last = b'"';
                    continue;
                }
            }
            _ => {}
        }
        if !c.is_ascii_whitespace() {
            if c != b':' {
                data_key &= c == b'[';
            }
            last = c;
        }
        i += 1;
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&json[copied..]);
    Some(out)
}

fn push_integer(datatype: DataType, v: i128, out: &mut Vec<u8>) -> Result<(), String> {
    fn fit<T: TryFrom<i128>>(v: i128, d: DataType) -> Result<T, String> {
        T::try_from(v).map_err(|_| format!("value {v} is out of range for {}", d.name()))
    }
    match datatype {
        DataType::Uint8 => out.push(fit::<u8>(v, datatype)?),
        DataType::Uint16 => out.extend_from_slice(&fit::<u16>(v, datatype)?.to_le_bytes()),
        DataType::Uint32 => out.extend_from_slice(&fit::<u32>(v, datatype)?.to_le_bytes()),
        DataType::Uint64 => out.extend_from_slice(&fit::<u64>(v, datatype)?.to_le_bytes()),
        DataType::Int8 => out.extend_from_slice(&fit::<i8>(v, datatype)?.to_le_bytes()),
        DataType::Int16 => out.extend_from_slice(&fit::<i16>(v, datatype)?.to_le_bytes()),
        DataType::Int32 => out.extend_from_slice(&fit::<i32>(v, datatype)?.to_le_bytes()),
        DataType::Int64 => out.extend_from_slice(&fit::<i64>(v, datatype)?.to_le_bytes()),
        DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => {
            return push_float(datatype, v as f64, out)
        }
        DataType::Bool => return Err(format!("expected BOOL element, got number {v}")),
        DataType::Bytes => {
            return Err(format!("expected BYTES element (a string), got number {v}"))
        }
    }
    Ok(())
}

/// A NaN or an infinity as `datatype` (a float type).
fn push_non_finite(datatype: DataType, v: f64, out: &mut Vec<u8>) {
    match datatype {
        DataType::Fp16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
        DataType::Bf16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
        DataType::Fp32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
        _ => out.extend_from_slice(&v.to_le_bytes()),
    }
}

fn push_float(datatype: DataType, v: f64, out: &mut Vec<u8>) -> Result<(), String> {
    // A JSON number is finite; one too large for the element type would silently become
    // infinity, so it is refused like an out-of-range integer.
    let out_of_range = || format!("{v} is out of range for {}", datatype.name());
    match datatype {
        DataType::Fp16 => {
            let h = half::f16::from_f64(v);
            if h.is_infinite() {
                return Err(out_of_range());
            }
            out.extend_from_slice(&h.to_le_bytes())
        }
        DataType::Bf16 => {
            let h = half::bf16::from_f64(v);
            if h.is_infinite() {
                return Err(out_of_range());
            }
            out.extend_from_slice(&h.to_le_bytes())
        }
        DataType::Fp32 => {
            let f = v as f32;
            if f.is_infinite() {
                return Err(out_of_range());
            }
            out.extend_from_slice(&f.to_le_bytes())
        }
        DataType::Fp64 => out.extend_from_slice(&v.to_le_bytes()),
        d => {
            return Err(format!(
                "expected {} element, got non-integer number {v}",
                d.name()
            ))
        }
    }
    Ok(())
}

/// Serializes binary-layout data of `datatype` as a flat JSON array.
pub struct JsonData<'t> {
    /// Element type.
    pub datatype: DataType,
    /// Binary-layout bytes.
    pub data: &'t [u8],
}

macro_rules! serialize_le {
    ($seq:ident, $data:expr, $ty:ty, $n:literal) => {
        for c in $data.chunks_exact($n) {
            $seq.serialize_element(&<$ty>::from_le_bytes(c.try_into().expect("chunks_exact")))?;
        }
    };
}

macro_rules! serialize_float_le {
    ($seq:ident, $data:expr, $ty:ty, $n:literal) => {
        for c in $data.chunks_exact($n) {
            serialize_float(
                &mut $seq,
                <$ty>::from_le_bytes(c.try_into().expect("chunks_exact")),
            )?;
        }
    };
}

thread_local! {
    /// The token [`TritonFormatter`] writes for the `null` being serialized now, if that null
    /// stands for a float JSON cannot spell.
    static NON_FINITE: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Writes one float element: finite ones as numbers, NaN and infinities as [`NonFinite`].
fn serialize_float<S: SerializeSeq, F: Into<f64> + Copy + Serialize>(
    seq: &mut S,
    v: F,
) -> Result<(), S::Error> {
    if v.into().is_finite() {
        seq.serialize_element(&v)
    } else {
        seq.serialize_element(&NonFinite(v.into()))
    }
}

/// A float that JSON has no number for. Triton writes these as the bare tokens `NaN`,
/// `Infinity` and `-Infinity` (RapidJSON's `kWriteNanAndInfFlag`), which Python's `json`,
/// JavaScript's `JSON5` and RapidJSON read back; a serializer with [`TritonFormatter`] does the
/// same, any other writes `null`.
struct NonFinite(f64);

impl Serialize for NonFinite {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let token = if self.0.is_nan() {
            "NaN"
        } else if self.0 > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        };
        NON_FINITE.with(|t| t.set(Some(token)));
        let written = s.serialize_unit();
        NON_FINITE.with(|t| t.set(None));
        written
    }
}

/// serde_json's compact output, except that a non-finite float element of a tensor is written
/// as Triton writes it (see [`NonFinite`]) instead of as `null`.
pub struct TritonFormatter;

impl serde_json::ser::Formatter for TritonFormatter {
    fn write_null<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        let token = NON_FINITE.with(Cell::take).unwrap_or("null");
        writer.write_all(token.as_bytes())
    }
}

/// Serializes `value` into `out` as compact JSON, with tensors' non-finite floats written as
/// Triton writes them.
pub fn to_writer_triton<W: io::Write, T: Serialize + ?Sized>(
    out: W,
    value: &T,
) -> serde_json::Result<()> {
    value.serialize(&mut serde_json::Serializer::with_formatter(
        out,
        TritonFormatter,
    ))
}

/// Formats like [`TritonFormatter`], without the brackets of arrays: a tensor's elements only.
struct BareElements;

impl serde_json::ser::Formatter for BareElements {
    fn begin_array<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        Ok(())
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, _: &mut W) -> io::Result<()> {
        Ok(())
    }

    fn write_null<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        TritonFormatter.write_null(writer)
    }
}

/// Appends the elements of `data` (binary layout, whole elements of `datatype`, which has a
/// fixed size: not BYTES) to `out` as JSON values separated by commas, without brackets: a
/// slice of a `"data"` array, written as [`JsonData`] writes the whole.
pub fn write_json_elements(datatype: DataType, data: &[u8], out: &mut Vec<u8>) {
    debug_assert!(datatype.element_size().is_some());
    JsonData { datatype, data }
        .serialize(&mut serde_json::Serializer::with_formatter(
            out,
            BareElements,
        ))
        .expect("fixed-size elements always serialize into a Vec");
}

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        let data = self.data;
        match self.datatype {
            DataType::Bool => {
                for &b in data {
                    seq.serialize_element(&(b != 0))?;
                }
            }
            DataType::Uint8 => serialize_le!(seq, data, u8, 1),
            DataType::Uint16 => serialize_le!(seq, data, u16, 2),
            DataType::Uint32 => serialize_le!(seq, data, u32, 4),
            DataType::Uint64 => serialize_le!(seq, data, u64, 8),
            DataType::Int8 => serialize_le!(seq, data, i8, 1),
            DataType::Int16 => serialize_le!(seq, data, i16, 2),
            DataType::Int32 => serialize_le!(seq, data, i32, 4),
            DataType::Int64 => serialize_le!(seq, data, i64, 8),
            DataType::Fp32 => serialize_float_le!(seq, data, f32, 4),
            DataType::Fp64 => serialize_float_le!(seq, data, f64, 8),
            DataType::Fp16 => {
                for c in data.chunks_exact(2) {
                    let v = half::f16::from_le_bytes([c[0], c[1]]);
                    serialize_float(&mut seq, v.to_f32())?;
                }
            }
            DataType::Bf16 => {
                for c in data.chunks_exact(2) {
                    let v = half::bf16::from_le_bytes([c[0], c[1]]);
                    serialize_float(&mut seq, v.to_f32())?;
                }
            }
            DataType::Bytes => {
                for element in bytes_elements(data) {
                    let element =
                        element.map_err(|_| S::Error::custom("malformed BYTES output"))?;
                    let text = std::str::from_utf8(element).map_err(|_| {
                        S::Error::custom(
                            "a BYTES output element is not UTF-8, so it cannot be JSON: \
                             request the output with binary_data",
                        )
                    })?;
                    seq.serialize_element(text)?;
                }
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(d: DataType, json: &str) -> Result<(usize, Vec<u8>), String> {
        let mut out = Vec::new();
        decode_json_data(d, json, &mut out).map(|n| (n, out))
    }

    fn encode(d: DataType, data: &[u8]) -> Result<String, serde_json::Error> {
        serde_json::to_string(&JsonData { datatype: d, data })
    }

    #[test]
    fn nan_and_infinity_tokens_are_read_as_triton_reads_them() {
        let body = br#"{"id":"NaN, Infinity","inputs":[{"data":[NaN,-Infinity, [Infinity ,Inf],-Inf,-NaN]},{"data":[1]}]}"#;
        let spelled = String::from_utf8(spell_non_finite(body).unwrap()).unwrap();
        assert_eq!(
            spelled,
            r#"{"id":"NaN, Infinity","inputs":[{"data":["\u0000NaN","\u0000-Infinity", ["\u0000Infinity" ,"\u0000Infinity"],"\u0000-Infinity","\u0000NaN"]},{"data":[1]}]}"#
        );
        // Only in "data" arrays, only as elements, never inside strings.
        for body in [
            br#"{"a":"NaN","data":[1,2],"c":"\"NaN"}"#.as_slice(),
            br#"{"data":[NaNa,Infinite]}"#,
            br#"{"id":NaN,"data":[1]}"#,
            br#"{"x":[NaN],"data":[1]}"#,
            br#"{"data":NaN}"#,
        ] {
            assert_eq!(
                spell_non_finite(body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let v: serde_json::Value = serde_json::from_str(&spelled).unwrap();
        let x = v["inputs"][0]["data"].to_string();
        let (n, bytes) = decode(DataType::Fp32, &x).unwrap();
        assert_eq!(n, 6);
        let f: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(f[0].is_nan() && f[5].is_nan());
        assert_eq!(
            &f[1..5],
            &[
                f32::NEG_INFINITY,
                f32::INFINITY,
                f32::INFINITY,
                f32::NEG_INFINITY
            ]
        );
        let (_, h) = decode(DataType::Fp16, &x).unwrap();
        assert!(half::f16::from_le_bytes([h[0], h[1]]).is_nan());
        // Integers have no NaN, BYTES elements are strings, and an ordinary string is no float.
        assert!(decode(DataType::Int32, &x).unwrap_err().contains("string"));
        assert!(decode(DataType::Bytes, &x).unwrap_err().contains("NaN"));
        assert!(decode(DataType::Fp32, r#"["NaN"]"#)
            .unwrap_err()
            .contains("string"));
    }

    #[test]
    fn floats_are_read_correctly_rounded() {
        // Found by tuning/fuzz.sh (json_data): an integer literal too large for 64 bits was read
        // one ulp off, so FP64 data did not survive a round trip through friday's own JSON.
        for text in [
            "3633720368375784527203685479",
            "2.2250738585072011e-308",
            "0.1",
        ] {
            let (_, bytes) = decode(DataType::Fp64, &format!("[{text}]")).unwrap();
            let want: f64 = text.parse().unwrap();
            assert_eq!(bytes, want.to_le_bytes(), "{text}");
        }
    }

    #[test]
    fn non_finite_floats_are_written_as_triton_writes_them() {
        let v = [1.5f32, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut out = Vec::new();
        to_writer_triton(
            &mut out,
            &(
                JsonData {
                    datatype: DataType::Fp32,
                    data: &data,
                },
                None::<u8>,
            ),
        )
        .unwrap();
        // The tensor's non-finite elements are tokens; a genuine null stays null.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[[1.5,NaN,Infinity,-Infinity],null]"
        );
        let h: Vec<u8> = [half::f16::NAN, half::f16::NEG_INFINITY]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let mut out = Vec::new();
        to_writer_triton(
            &mut out,
            &JsonData {
                datatype: DataType::Fp16,
                data: &h,
            },
        )
        .unwrap();
        assert_eq!(out, b"[NaN,-Infinity]");
        // Any other serializer writes null, and nothing is left over for the next null.
        assert_eq!(
            encode(DataType::Fp32, &data).unwrap(),
            "[1.5,null,null,null]"
        );
        let mut out = Vec::new();
        to_writer_triton(&mut out, &None::<u8>).unwrap();
        assert_eq!(out, b"null");
    }

    #[test]
    fn nested_and_flat_arrays_agree() {
        let (n1, a) = decode(DataType::Int32, "[[1,2],[3,4]]").unwrap();
        let (n2, b) = decode(DataType::Int32, "[1,2,3,4]").unwrap();
        assert_eq!((n1, n2), (4, 4));
        assert_eq!(a, b);
        assert_eq!(encode(DataType::Int32, &a).unwrap(), "[1,2,3,4]");
    }

    #[test]
    fn every_datatype_round_trips() {
        let cases = [
            (DataType::Bool, "[true,false]"),
            (DataType::Uint8, "[0,255]"),
            (DataType::Uint16, "[0,65535]"),
            (DataType::Uint32, "[0,4294967295]"),
            (DataType::Uint64, "[0,18446744073709551615]"),
            (DataType::Int8, "[-128,127]"),
            (DataType::Int16, "[-32768,32767]"),
            (DataType::Int32, "[-2147483648,2147483647]"),
            (
                DataType::Int64,
                "[-9223372036854775808,9223372036854775807]",
            ),
            (DataType::Fp16, "[1.5,-2.0]"),
            (DataType::Bf16, "[1.5,-2.0]"),
            (DataType::Fp32, "[1.5,-2.25]"),
            (DataType::Fp64, "[1.5,-2.25]"),
            (DataType::Bytes, r#"["ab",""]"#),
        ];
        for (d, json) in cases {
            let (n, bytes) = decode(d, json).unwrap_or_else(|e| panic!("{d:?}: {e}"));
            assert_eq!(n, 2, "{d:?}");
            if let Some(size) = d.element_size() {
                assert_eq!(bytes.len(), 2 * size, "{d:?}");
            }
            assert_eq!(encode(d, &bytes).unwrap(), json, "{d:?}");
        }
    }

    #[test]
    fn wrong_elements_name_the_problem() {
        let e = decode(DataType::Int8, "[128]").unwrap_err();
        assert!(e.contains("out of range for INT8"), "{e}");
        let e = decode(DataType::Int32, "[1.5]").unwrap_err();
        assert!(e.contains("non-integer"), "{e}");
        let e = decode(DataType::Fp32, r#"["x"]"#).unwrap_err();
        assert!(e.contains("got string"), "{e}");
        let e = decode(DataType::Bool, "[1]").unwrap_err();
        assert!(e.contains("BOOL"), "{e}");
        let e = decode(DataType::Fp32, "[null]").unwrap_err();
        assert!(e.contains("null"), "{e}");
        let e = decode(DataType::Fp32, r#"[{"a":1}]"#).unwrap_err();
        assert!(e.contains("object"), "{e}");
        assert!(decode(DataType::Uint8, "[-1]").is_err());
        let e = decode(DataType::Fp32, "[1e300]").unwrap_err();
        assert!(e.contains("out of range for FP32"), "{e}");
        assert!(decode(DataType::Fp16, "[70000]").is_err());
        assert!(decode(DataType::Fp32, "[3.4e38]").is_ok());
        assert!(decode(DataType::Fp64, "[1e300]").is_ok());
        assert!(decode(DataType::Fp32, "[1,2").is_err());
    }

    #[test]
    fn a_scalar_is_one_element() {
        assert_eq!(decode(DataType::Fp32, "3").unwrap().0, 1);
    }

    #[test]
    fn non_utf8_bytes_cannot_be_json() {
        let data = [2, 0, 0, 0, 0xff, 0xfe];
        let e = encode(DataType::Bytes, &data).unwrap_err().to_string();
        assert!(e.contains("binary_data"), "{e}");
    }

    proptest! {
        #[test]
        fn fp32_survives_json(values in proptest::collection::vec(any::<f32>().prop_filter("finite", |v| v.is_finite()), 0..32)) {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let json = encode(DataType::Fp32, &bytes).unwrap();
            let (n, back) = decode(DataType::Fp32, &json).unwrap();
            prop_assert_eq!(n, values.len());
            prop_assert_eq!(back, bytes);
        }

        #[test]
        fn any_json_text_never_panics(text in ".{0,64}", d in 0usize..14) {
            let _ = decode(DataType::ALL[d], &text);
        }
    }
}
