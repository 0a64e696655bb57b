//! Joining requests into one batch, running it, and splitting its outputs back per request.
//!
//! Requests join along the batch (first) dimension: their inputs are appended in order, and the
//! model sees one tensor per input whose first dimension is the sum of theirs. A batch of one
//! request moves its tensors instead of copying them. The model's outputs are kept in the
//! [`BatchResult`], and each request reads its rows through [`BatchResult::view`] without
//! another copy; an output the model borrowed from its input (identity) stays a range of that
//! input.

use std::borrow::Cow;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};

use smallvec::SmallVec;

use crate::model::Model;
use crate::tensor::{bytes_elements, element_count, DataType, Shape, Tensor};

/// The inputs of one request, in the model's metadata order, owning their data.
pub type Inputs = SmallVec<[Tensor<'static>; 2]>;

/// Joins requests' inputs along the batch dimension. `parts` holds each request's inputs; all
/// have the same shapes beyond the batch dimension (the policy only batches such requests).
/// `buffer` supplies an empty buffer for `n` bytes of joined data; `recycle` takes back the
/// parts' buffers once they are copied.
pub fn concat(
    mut parts: Vec<Inputs>,
    mut buffer: impl FnMut(usize) -> Vec<u8>,
    mut recycle: impl FnMut(Vec<u8>),
) -> Inputs {
    if parts.len() == 1 {
        return parts.pop().expect("one part");
    }
    let first = &parts[0];
    let mut joined: Inputs = SmallVec::new();
    for (i, t) in first.iter().enumerate() {
        let bytes: usize = parts.iter().map(|p| p[i].data.len()).sum();
        let rows: usize = parts
            .iter()
            .map(|p| p[i].shape.first().copied().unwrap_or(1))
            .sum();
        let mut data = buffer(bytes);
        for p in &parts {
            data.extend_from_slice(&p[i].data);
        }
        let mut shape = t.shape.clone();
        if let Some(d) = shape.first_mut() {
            *d = rows;
        }
        joined.push(Tensor {
            datatype: t.datatype,
            shape,
            data: Cow::Owned(data),
        });
    }
    for t in parts.into_iter().flatten() {
        if let Cow::Owned(v) = t.data {
            recycle(v);
        }
    }
    joined
}

/// Whether the `len` bytes at address `addr` lie within `buf`.
pub fn within(buf: &[u8], addr: usize, len: usize) -> bool {
    let start = buf.as_ptr() as usize;
    addr >= start
        && addr
            .checked_add(len)
            .is_some_and(|end| end <= start + buf.len())
}

/// Where an output's bytes live.
#[derive(Debug)]
enum OutputData {
    /// The model produced them.
    Owned(Vec<u8>),
    /// The model returned (part of) input `index` unchanged.
    Input { index: usize, range: Range<usize> },
}

#[derive(Debug)]
struct OutputTensor {
    datatype: DataType,
    shape: Shape,
    data: OutputData,
}

/// One request's batch size, and per output the byte range of its rows.
type RequestRows = (usize, SmallVec<[Range<usize>; 2]>);

/// A batch after the model ran: its inputs, its outputs, and each request's rows. `'i` is the
/// inputs' lifetime: `'static` for queued requests (pooled buffers), shorter for the idle fast
/// path, which runs a request on the bytes it arrived in.
#[derive(Debug)]
pub struct BatchResult<'i> {
    inputs: SmallVec<[Tensor<'i>; 2]>,
    outputs: SmallVec<[OutputTensor; 2]>,
    /// Per request: its batch size, and per output the byte range of its rows. Inline for a
    /// batch of one (the idle fast path allocates nothing here).
    rows: SmallVec<[RequestRows; 1]>,
}

/// Runs `model` on the joined `inputs` of requests whose batch sizes are `sizes` (in order).
/// `batched` says the model has a batch dimension to split outputs along; without one there is
/// exactly one request. A panicking model is an error, not an unwinding shard.
pub fn run<'i>(
    model: &dyn Model,
    inputs: SmallVec<[Tensor<'i>; 2]>,
    sizes: &[usize],
    batched: bool,
) -> Result<BatchResult<'i>, String> {
    let outputs = catch_unwind(AssertUnwindSafe(|| {
        model.infer(&inputs).map(|outs| {
            outs.into_iter()
                .map(|t| own_output(t, &inputs))
                .collect::<SmallVec<[OutputTensor; 2]>>()
        })
    }))
    .map_err(|_| "panicked".to_string())?
    .map_err(|e| e.0)?;
    let mut result = BatchResult {
        inputs,
        outputs,
        rows: SmallVec::new(),
    };
    result.split(sizes, batched)?;
    Ok(result)
}

/// Keeps an output without copying when it borrows from an input.
fn own_output(t: Tensor<'_>, inputs: &[Tensor<'_>]) -> OutputTensor {
    let data = match t.data {
        Cow::Owned(v) => OutputData::Owned(v),
        Cow::Borrowed(slice) => {
            let (start, len) = (slice.as_ptr() as usize, slice.len());
            inputs
                .iter()
                .enumerate()
                .find_map(|(index, input)| {
                    let base = input.data.as_ptr() as usize;
                    (start >= base && start + len <= base + input.data.len()).then(|| {
                        OutputData::Input {
                            index,
                            range: start - base..start - base + len,
                        }
                    })
                })
                .unwrap_or_else(|| OutputData::Owned(slice.to_vec()))
        }
    };
    OutputTensor {
        datatype: t.datatype,
        shape: t.shape,
        data,
    }
}

impl<'i> BatchResult<'i> {
    fn bytes(&self, output: usize) -> &[u8] {
        match &self.outputs[output].data {
            OutputData::Owned(v) => v,
            OutputData::Input { index, range } => &self.inputs[*index].data[range.clone()],
        }
    }

    /// Splits every output into each request's rows.
    fn split(&mut self, sizes: &[usize], batched: bool) -> Result<(), String> {
        let total: usize = sizes.iter().sum();
        let mut per_request: SmallVec<[SmallVec<[Range<usize>; 2]>; 1]> =
            SmallVec::from_elem(SmallVec::new(), sizes.len());
        for o in 0..self.outputs.len() {
            let t = &self.outputs[o];
            let data = self.bytes(o);
            if !batched || sizes.len() == 1 {
                per_request[0].push(0..data.len());
                continue;
            }
            if t.shape.first() != Some(&total) {
                return Err(format!(
                    "output {o} has shape {:?}, but the batch has {total} rows",
                    t.shape.as_slice()
                ));
            }
            let row_elements = element_count(&t.shape[1..]).ok_or("output shape overflows")?;
            let mut offset = 0usize;
            match t.datatype.element_size() {
                Some(size) => {
                    let row_bytes = row_elements * size;
                    if data.len() != row_bytes * total {
                        return Err(format!(
                            "output {o} has {} bytes for {total} rows",
                            data.len()
                        ));
                    }
                    for (r, &n) in per_request.iter_mut().zip(sizes) {
                        r.push(offset..offset + n * row_bytes);
                        offset += n * row_bytes;
                    }
                }
                None => {
                    // BYTES: walk the elements to find where each request's rows end.
                    let mut ends = Vec::with_capacity(total * row_elements);
                    let mut at = 0usize;
                    for e in bytes_elements(data) {
                        let e = e.map_err(|_| format!("output {o} has malformed BYTES data"))?;
                        at += 4 + e.len();
                        ends.push(at);
                    }
                    if ends.len() != total * row_elements {
                        return Err(format!(
                            "output {o} has {} elements for {total} rows",
                            ends.len()
                        ));
                    }
                    let mut element = 0usize;
                    for (r, &n) in per_request.iter_mut().zip(sizes) {
                        element += n * row_elements;
                        let end = if element == 0 { 0 } else { ends[element - 1] };
                        r.push(offset..end);
                        offset = end;
                    }
                }
            }
        }
        self.rows = sizes.iter().copied().zip(per_request).collect();
        Ok(())
    }

    /// Request `i`'s outputs (in the model's metadata order), borrowing the batch's data.
    pub fn view(&self, i: usize) -> SmallVec<[Tensor<'_>; 2]> {
        let (rows, ranges) = &self.rows[i];
        let single = self.rows.len() == 1;
        self.outputs
            .iter()
            .enumerate()
            .map(|(o, t)| {
                let mut shape = t.shape.clone();
                if !single {
                    shape[0] = *rows;
                }
                Tensor {
                    datatype: t.datatype,
                    shape,
                    data: Cow::Borrowed(&self.bytes(o)[ranges[o].clone()]),
                }
            })
            .collect()
    }

    /// Whether the `len` bytes at address `addr` lie within one of the buffers the batch owns
    /// (its inputs' or its outputs' data), so that they live as long as it does. Borrowed inputs
    /// are not its own.
    pub fn holds(&self, addr: usize, len: usize) -> bool {
        let inputs = self.inputs.iter().filter_map(|t| match &t.data {
            Cow::Owned(v) => Some(v.as_slice()),
            Cow::Borrowed(_) => None,
        });
        let outputs = self.outputs.iter().filter_map(|t| match &t.data {
            OutputData::Owned(v) => Some(v.as_slice()),
            OutputData::Input { .. } => None,
        });
        inputs.chain(outputs).any(|b| within(b, addr, len))
    }

    /// Hands the batch's buffers back for reuse.
    pub fn into_buffers(self) -> impl Iterator<Item = Vec<u8>> + 'i {
        let inputs = self.inputs.into_iter().filter_map(|t| match t.data {
            Cow::Owned(v) => Some(v),
            Cow::Borrowed(_) => None,
        });
        let outputs = self.outputs.into_iter().filter_map(|t| match t.data {
            OutputData::Owned(v) => Some(v),
            OutputData::Input { .. } => None,
        });
        inputs.chain(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Identity, Simple};
    use smallvec::smallvec;

    fn f32s(rows: usize, cols: usize, start: f32) -> Tensor<'static> {
        let v: Vec<u8> = (0..rows * cols)
            .flat_map(|i| (start + i as f32).to_le_bytes())
            .collect();
        Tensor {
            datatype: DataType::Fp32,
            shape: smallvec![rows, cols],
            data: Cow::Owned(v),
        }
    }

    #[test]
    fn identity_batch_round_trips_per_request_without_copying_outputs() {
        let a: Inputs = smallvec![f32s(1, 3, 0.0)];
        let b: Inputs = smallvec![f32s(2, 3, 100.0)];
        let expect_a = a[0].data.clone();
        let expect_b = b[0].data.clone();
        let joined = concat(vec![a, b], Vec::with_capacity, drop);
        assert_eq!(joined[0].shape.as_slice(), &[3, 3]);
        let result = run(&Identity::new(), joined, &[1, 2], true).unwrap();
        assert!(matches!(result.outputs[0].data, OutputData::Input { .. }));
        let va = result.view(0);
        let vb = result.view(1);
        assert_eq!(va[0].shape.as_slice(), &[1, 3]);
        assert_eq!(vb[0].shape.as_slice(), &[2, 3]);
        assert_eq!(va[0].data, expect_a);
        assert_eq!(vb[0].data, expect_b);
    }

    #[test]
    fn a_single_request_moves_its_inputs() {
        let a: Inputs = smallvec![f32s(1, 3, 0.0)];
        let ptr = a[0].data.as_ptr();
        let joined = concat(vec![a], Vec::with_capacity, drop);
        assert_eq!(joined[0].data.as_ptr(), ptr);
    }

    #[test]
    fn simple_outputs_split_by_rows() {
        let int32 = |rows: usize, v: i32| Tensor {
            datatype: DataType::Int32,
            shape: smallvec![rows, 16],
            data: Cow::Owned((0..rows * 16).flat_map(|_| v.to_le_bytes()).collect()),
        };
        let a: Inputs = smallvec![int32(1, 1), int32(1, 2)];
        let b: Inputs = smallvec![int32(2, 10), int32(2, 20)];
        let result = run(
            &Simple::new(),
            concat(vec![a, b], Vec::with_capacity, drop),
            &[1, 2],
            true,
        )
        .unwrap();
        let vb = result.view(1);
        assert_eq!(vb[0].shape.as_slice(), &[2, 16]);
        let sums: Vec<i32> = crate::model::i32_values(&vb[0]).collect();
        assert_eq!(sums, vec![30; 32]);
        let diffs: Vec<i32> = crate::model::i32_values(&result.view(0)[1]).collect();
        assert_eq!(diffs, vec![-1; 16]);
        drop(vb);
        assert!(result.into_buffers().count() >= 2);
    }

    #[test]
    fn bytes_outputs_split_by_elements() {
        let bytes = |items: &[&str]| {
            let mut v = Vec::new();
            for s in items {
                v.extend_from_slice(&(s.len() as u32).to_le_bytes());
                v.extend_from_slice(s.as_bytes());
            }
            v
        };
        let out = OutputTensor {
            datatype: DataType::Bytes,
            shape: smallvec![3, 1],
            data: OutputData::Owned(bytes(&["a", "bc", "def"])),
        };
        let mut r = BatchResult {
            inputs: SmallVec::new(),
            outputs: smallvec![out],
            rows: SmallVec::new(),
        };
        r.split(&[2, 1], true).unwrap();
        assert_eq!(&r.view(0)[0].data[..], &bytes(&["a", "bc"])[..]);
        assert_eq!(&r.view(1)[0].data[..], &bytes(&["def"])[..]);
    }

    #[test]
    fn outputs_that_do_not_fit_the_batch_are_errors() {
        let out = OutputTensor {
            datatype: DataType::Fp32,
            shape: smallvec![2, 2],
            data: OutputData::Owned(vec![0; 16]),
        };
        let mut r = BatchResult {
            inputs: SmallVec::new(),
            outputs: smallvec![out],
            rows: SmallVec::new(),
        };
        assert!(r.split(&[1, 2], true).is_err());
    }
}
