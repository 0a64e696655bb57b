//! ONNX models on rten, in pure Rust.
//!
//! A model is loaded once per process and shared read-only by every shard and worker (its
//! weights live in the one `rten::Model`); each calling thread keeps its own scratch. rten runs
//! a model on a rayon pool: every thread that calls a model gets a pool of one thread of its own,
//! started from it, so it inherits that thread's CPU and scheduling class (a worker's pinned
//! `SCHED_IDLE`, a shard's pinned CPU) and computes only while its caller waits. No pool sized
//! to the machine competes with the shards.
//!
//! The KServe signature comes from the ONNX graph as declared (an `INT64` input is `INT64` to
//! clients even though rten computes it in 32 bits): inputs, outputs, datatypes and dimensions,
//! with a leading dimension that is dynamic on every input and output taken as the batch
//! dimension, as Triton's ONNX auto-complete does. A `config.pbtxt` may declare the signature
//! instead (checked against the graph), reshaping tensors between what clients send and what the
//! model takes.
//!
//! Inputs are handed to rten as views of the request's bytes where they are aligned for their
//! element type (FP32, INT32, INT8, UINT8), and copied (converted) otherwise: INT64 and BOOL,
//! which rten computes as INT32, and a binary tensor that sits unaligned in a read buffer.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use rten::{NodeId, RunOptions, ThreadPool, Value, ValueOrView, ValueView};
use rten_onnx::onnx::{DataType as OnnxType, ModelProto, ValueInfoProto};
use rten_tensor::prelude::*;
use rten_tensor::Tensor as RtenTensor;
use smallvec::SmallVec;

use super::pbtxt::TensorDecl;
use super::{Model, ModelError, ModelMetadata, Outputs, TensorSpec};
use crate::tensor::{DataType, Tensor};

/// `max_batch_size` of a model whose every input and output has a dynamic leading dimension and
/// whose configuration does not say otherwise (Triton's `default-max-batch-size`).
pub const DEFAULT_MAX_BATCH_SIZE: usize = 4;

/// The `max_batch_size` a model serves at: the configured one, if its graph can batch along the
/// first dimension (`batchable`: every input and output's is dynamic); otherwise
/// [`DEFAULT_MAX_BATCH_SIZE`] for a batchable graph and 0 (no batch dimension) for another. Both
/// ONNX backends decide it so.
pub(crate) fn batch_size(
    configured: Option<usize>,
    batchable: bool,
    path: &Path,
) -> Result<usize, String> {
    match configured {
        Some(n) if n > 0 && !batchable => Err(format!(
            "max_batch_size is {n}, but not every input and output of {} has a dynamic first \
             dimension to batch along; set max_batch_size = 0",
            path.display()
        )),
        Some(n) => Ok(n),
        None if batchable => Ok(DEFAULT_MAX_BATCH_SIZE),
        None => Ok(0),
    }
}

/// How a load error begins when rten itself cannot build the graph (an operator it lacks), as
/// opposed to a model that does not fit its configuration.
pub const RTEN_CANNOT_LOAD: &str = "rten cannot load";

/// How a tensor's elements travel between the KServe datatype and rten's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Element {
    F32,
    I32,
    I8,
    U8,
    /// Declared INT64, computed as i32 by rten.
    I64,
    /// Declared BOOL (one byte, 0 or 1), computed as i32 by rten.
    Bool,
}

impl Element {
    fn from_onnx(t: OnnxType) -> Option<(Element, DataType)> {
        Some(match t {
            OnnxType::FLOAT => (Element::F32, DataType::Fp32),
            OnnxType::INT32 => (Element::I32, DataType::Int32),
            OnnxType::INT8 => (Element::I8, DataType::Int8),
            OnnxType::UINT8 => (Element::U8, DataType::Uint8),
            OnnxType::INT64 => (Element::I64, DataType::Int64),
            OnnxType::BOOL => (Element::Bool, DataType::Bool),
            _ => return None,
        })
    }
}

/// One input or output: its node in rten's graph, how its elements convert, and, where
/// `config.pbtxt` reshapes it, the shape on the other side (without the batch dimension): the
/// shape the model takes for an input, the shape clients get for an output.
#[derive(Debug)]
struct Port {
    node: NodeId,
    element: Element,
    reshape: Option<Vec<i64>>,
}

/// An ONNX model run by rten.
pub struct OnnxModel {
    model: rten::Model,
    meta: ModelMetadata,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("name", &self.meta.name)
            .finish()
    }
}

thread_local! {
    /// This thread's pool of one rten thread, started from it (see the module docs).
    static POOL: Arc<ThreadPool> = Arc::new(ThreadPool::with_num_threads(1));
}

/// ONNX's name for an element type, for errors.
fn onnx_type_name(t: OnnxType) -> String {
    let name = match t {
        OnnxType::UINT16 => "UINT16",
        OnnxType::INT16 => "INT16",
        OnnxType::STRING => "STRING",
        OnnxType::FLOAT16 => "FLOAT16",
        OnnxType::DOUBLE => "DOUBLE",
        OnnxType::UINT32 => "UINT32",
        OnnxType::UINT64 => "UINT64",
        OnnxType::BFLOAT16 => "BFLOAT16",
        _ => return format!("element type {}", t.0),
    };
    name.to_string()
}

/// A value's name, element type and dimensions as the graph declares them.
fn signature(v: &ValueInfoProto, what: &str) -> Result<(String, OnnxType, Vec<i64>), String> {
    let name = v.name.clone().unwrap_or_default();
    let tensor = v
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| format!("{what} '{name}' is not a tensor"))?;
    let elem = tensor
        .elem_type
        .ok_or_else(|| format!("{what} '{name}' declares no element type"))?;
    let dims = tensor
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| d.dim_value.filter(|&v| v > 0).unwrap_or(-1))
                .collect()
        })
        .unwrap_or_default();
    Ok((name, elem, dims))
}

impl OnnxModel {
    /// Loads `path` (an ONNX file) as model `name`. `max_batch_size`: the configured one, if
    /// any; otherwise [`DEFAULT_MAX_BATCH_SIZE`] for a model with a batch dimension, 0 without.
    /// `inputs` and `outputs`: what `config.pbtxt` declares (empty: the graph's own signature).
    pub fn load(
        path: &Path,
        name: &str,
        max_batch_size: Option<usize>,
        (inputs, outputs): (&[TensorDecl], &[TensorDecl]),
    ) -> Result<Self, String> {
        let declared = (inputs, outputs);
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let proto = ModelProto::parse_buf(&bytes)
            .map_err(|e| format!("{} is not a valid ONNX model: {e}", path.display()))?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| format!("{} has no graph", path.display()))?;
        // Old exporters list initializers among the inputs: those are weights, not inputs.
        let weights: std::collections::HashSet<&str> = graph
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect();
        let declared_inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|v| !weights.contains(v.name.as_deref().unwrap_or("")))
            .map(|v| signature(v, "input"))
            .collect::<Result<_, _>>()?;
        let declared_outputs: Vec<_> = graph
            .output
            .iter()
            .map(|v| signature(v, "output"))
            .collect::<Result<_, _>>()?;
        drop(proto);
        let model = rten::Model::load(bytes)
            .map_err(|e| format!("{RTEN_CANNOT_LOAD} {}: {e}", path.display()))?;

        let batchable = declared_inputs
            .iter()
            .chain(&declared_outputs)
            .all(|(_, _, dims)| dims.first() == Some(&-1));
        let max_batch_size = batch_size(max_batch_size, batchable, path)?;
        let element = |what: &str, name: &str, elem: OnnxType| {
            Element::from_onnx(elem).ok_or_else(|| {
                format!(
                    "{what} '{name}' is {}, which friday's rten backend does not serve \
                     (FP32, INT32, INT64, INT8, UINT8 and BOOL are served)",
                    onnx_type_name(elem)
                )
            })
        };
        let ports = |graph: &[GraphTensor<OnnxType>], decls: &[TensorDecl], what: &str| {
            bind(graph, decls, what, max_batch_size, |name, elem| {
                element(what, name, elem)
            })?
            .into_iter()
            .map(|b| {
                let node = model
                    .find_node(&b.graph_name)
                    .ok_or_else(|| format!("rten found no {what} named '{}'", b.graph_name))?;
                Ok((
                    Port {
                        node,
                        element: b.element,
                        reshape: b.reshape,
                    },
                    b.spec,
                ))
            })
            .collect::<Result<(Vec<Port>, Vec<TensorSpec>), String>>()
        };
        let (inputs, input_specs) = ports(&declared_inputs, declared.0, "input")?;
        let (outputs, output_specs) = ports(&declared_outputs, declared.1, "output")?;
        Ok(OnnxModel {
            model,
            meta: ModelMetadata {
                name: name.to_string(),
                platform: "onnxruntime_onnx".to_string(),
                backend: "onnxruntime".to_string(),
                max_batch_size,
                inputs: input_specs,
                outputs: output_specs,
            },
            inputs,
            outputs,
        })
    }
}

/// A graph input or output as the graph declares it: name, element type (the backend's), and
/// dimensions (-1 where dynamic).
pub(crate) type GraphTensor<E> = (String, E, Vec<i64>);

/// One input or output as served: the graph's name for it, the backend's element, the reshape
/// `config.pbtxt` asks for (see [`declared_port`]) and the KServe spec.
pub(crate) struct Bound<X> {
    pub graph_name: String,
    pub element: X,
    pub reshape: Option<Vec<i64>>,
    pub spec: TensorSpec,
}

/// The graph's inputs or outputs (`what`) as served, for either ONNX backend: in the order
/// `config.pbtxt` declares them (the graph's own when it declares none), without the batch
/// dimension when `max_batch_size` > 0, each checked against its declaration. `element` maps
/// a graph element type to the backend's and the KServe datatype, or says why it cannot.
pub(crate) fn bind<E: Copy, X>(
    graph: &[GraphTensor<E>],
    declared: &[TensorDecl],
    what: &str,
    max_batch_size: usize,
    mut element: impl FnMut(&str, E) -> Result<(X, DataType), String>,
) -> Result<Vec<Bound<X>>, String> {
    order(graph, declared, what, what == "input")?
        .into_iter()
        .map(|(name, elem, dims)| {
            let (element, datatype) = element(name, *elem)?;
            let dims = if max_batch_size > 0 {
                dims.get(1..).unwrap_or_default().to_vec()
            } else {
                dims.clone()
            };
            let (reshape, spec) = match declared.iter().find(|t| &t.name == name) {
                Some(decl) => declared_port(what, decl, &dims, datatype)?,
                None => (None, TensorSpec::new(name, datatype, &dims)),
            };
            Ok(Bound {
                graph_name: name.clone(),
                element,
                reshape,
                spec,
            })
        })
        .collect()
}

/// The graph's inputs or outputs in the order `config.pbtxt` declares them (the graph's order
/// when it declares none). Every declared one must be in the graph; every graph input must be
/// declared (`all`), while a configuration may serve a subset of the outputs.
fn order<'g, E>(
    graph: &'g [GraphTensor<E>],
    declared: &[TensorDecl],
    what: &str,
    all: bool,
) -> Result<Vec<&'g GraphTensor<E>>, String> {
    if declared.is_empty() {
        return Ok(graph.iter().collect());
    }
    let names = || {
        graph
            .iter()
            .map(|g| g.0.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Vec::with_capacity(declared.len());
    for d in declared {
        let g = graph.iter().find(|g| g.0 == d.name).ok_or_else(|| {
            format!(
                "config.pbtxt declares {what} '{}', which the model does not have (its {what}s: {})",
                d.name,
                names()
            )
        })?;
        out.push(g);
    }
    if all {
        if let Some(g) = graph
            .iter()
            .find(|g| !declared.iter().any(|d| d.name == g.0))
        {
            return Err(format!(
                "the model takes {what} '{}', which config.pbtxt does not declare",
                g.0
            ));
        }
    }
    Ok(out)
}

/// A tensor `config.pbtxt` declares, checked against the graph's `dims` (without the batch
/// dimension) and `datatype`: the port's reshape, if any, and the served spec.
pub(crate) fn declared_port(
    what: &str,
    decl: &TensorDecl,
    dims: &[i64],
    datatype: DataType,
) -> Result<(Option<Vec<i64>>, TensorSpec), String> {
    let name = &decl.name;
    if decl.datatype != datatype {
        return Err(format!(
            "{what} '{name}' is {} in the model but {} in config.pbtxt",
            datatype.config_name(),
            decl.datatype.config_name()
        ));
    }
    // The model's side of the tensor: the reshape if there is one, else the declared dims.
    let model_side = decl.reshape.as_deref().unwrap_or(&decl.dims);
    let fits = model_side.len() == dims.len()
        && model_side
            .iter()
            .zip(dims)
            .all(|(&c, &g)| c == g || c == -1 || g == -1);
    if !fits && !dims.is_empty() {
        return Err(format!(
            "{what} '{name}' has dims {dims:?} in the model (without the batch dimension), \
             config.pbtxt says {model_side:?}"
        ));
    }
    let reshape = match &decl.reshape {
        None => None,
        Some(r) => {
            let count = |d: &[i64]| {
                d.iter()
                    .filter(|&&x| x >= 0)
                    .try_fold(1i64, |a, &x| a.checked_mul(x))
            };
            let fixed = |d: &[i64]| d.iter().all(|&x| x >= 0);
            let (reshape_count, dims_count) = (count(r), count(&decl.dims));
            // An input's reshape is the model's shape: it must be fixed, of the same size. An
            // output is given to clients in its declared dims, at most one of them free (sized
            // by the rest), so the reshape's size must be a multiple of theirs.
            let ok = match (reshape_count, dims_count) {
                (Some(rc), Some(dc)) if fixed(r) && dc > 0 => {
                    if what == "input" {
                        fixed(&decl.dims) && rc == dc
                    } else {
                        let free = decl.dims.iter().filter(|&&x| x < 0).count();
                        (free == 0 && rc == dc) || (free == 1 && rc % dc == 0)
                    }
                }
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "{what} '{name}': reshape {r:?} cannot serve dims {:?} (friday reshapes \
                     between fixed shapes of the same size)",
                    decl.dims
                ));
            }
            Some(if what == "input" {
                r.clone()
            } else {
                decl.dims.clone()
            })
        }
    };
    Ok((reshape, TensorSpec::new(name, datatype, &decl.dims)))
}

/// `shape` with its trailing dimensions (after the batch dimension, if `batched`) replaced by
/// `reshape`, one -1 in it sized so that the element count stays the same.
pub(crate) fn reshaped(shape: &[usize], reshape: &[i64], batched: bool) -> SmallVec<[usize; 4]> {
    let total: usize = shape.iter().product();
    let mut out: SmallVec<[usize; 4]> = SmallVec::new();
    if batched {
        out.push(shape.first().copied().unwrap_or(1));
    }
    let lead: usize = out.iter().product();
    let known: usize = reshape
        .iter()
        .filter(|&&d| d >= 0)
        .map(|&d| d as usize)
        .product();
    let free = (total / lead.max(1)) / known.max(1);
    out.extend(
        reshape
            .iter()
            .map(|&d| if d < 0 { free } else { d as usize }),
    );
    out
}

/// Reads little-endian elements of `N` bytes.
fn elements<const N: usize, T>(data: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact")))
        .collect()
}

/// An rten value of `shape` holding `data`.
fn value<T>(shape: &[usize], data: Vec<T>, name: &str) -> Result<Value, ModelError>
where
    Value: From<RtenTensor<T>>,
{
    RtenTensor::try_from_data(shape, data)
        .map(Value::from)
        .map_err(|e| ModelError(format!("input '{name}': {e}")))
}

/// `data` seen as elements of `T` in `shape`, without a copy, where it is aligned for `T` (the
/// batcher's and the decoder's buffers are; a binary tensor inside a read buffer may not be).
fn view<'a, T: Pod>(data: &'a [u8], shape: &[usize]) -> Option<ValueOrView<'a>>
where
    ValueView<'a>: From<rten_tensor::TensorView<'a, T>>,
{
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: `T` is a plain number type (the `Pod` bound): every bit pattern is a valid value,
    // so reading the aligned middle of the bytes as `T`s is sound; the wire is little-endian, as
    // is this target.
    let (head, body, tail) = unsafe { data.align_to::<T>() };
    if !head.is_empty() || !tail.is_empty() {
        return None;
    }
    rten_tensor::TensorView::try_from_data(shape, body)
        .ok()
        .map(ValueOrView::from)
}

/// Number types every bit pattern of which is a valid value.
trait Pod: Copy + 'static {}
impl Pod for f32 {}
impl Pod for i32 {}
impl Pod for i8 {}
impl Pod for u8 {}

fn to_value<'a>(
    t: &'a Tensor<'_>,
    port: &Port,
    batched: bool,
    name: &str,
) -> Result<ValueOrView<'a>, ModelError> {
    let element = port.element;
    let shape: SmallVec<[usize; 4]> = match &port.reshape {
        Some(r) => reshaped(&t.shape, r, batched),
        None => t.shape.iter().copied().collect(),
    };
    let viewed = match element {
        Element::F32 => view::<f32>(&t.data, &shape),
        Element::I32 => view::<i32>(&t.data, &shape),
        Element::I8 => view::<i8>(&t.data, &shape),
        Element::U8 => view::<u8>(&t.data, &shape),
        Element::Bool | Element::I64 => None,
    };
    if let Some(v) = viewed {
        return Ok(v);
    }
    copied(t, element, &shape, name).map(ValueOrView::from)
}

/// `t` converted into an rten value of `shape` (a copy).
fn copied(
    t: &Tensor<'_>,
    element: Element,
    shape: &[usize],
    name: &str,
) -> Result<Value, ModelError> {
    let shape = shape.to_vec();
    match element {
        Element::F32 => value(&shape, elements(&t.data, f32::from_le_bytes), name),
        Element::I32 => value(&shape, elements(&t.data, i32::from_le_bytes), name),
        Element::I8 => value(&shape, elements(&t.data, i8::from_le_bytes), name),
        Element::U8 => value(&shape, t.data.to_vec(), name),
        Element::Bool => {
            let ints = t.data.iter().map(|&b| i32::from(b != 0)).collect();
            value(&shape, ints, name)
        }
        Element::I64 => {
            let wide = elements(&t.data, i64::from_le_bytes);
            let narrow: Result<Vec<i32>, _> = wide.iter().map(|&v| i32::try_from(v)).collect();
            let narrow = narrow.map_err(|_| {
                ModelError(format!(
                    "input '{name}' holds an INT64 value outside the 32-bit range rten computes in"
                ))
            })?;
            value(&shape, narrow, name)
        }
    }
}

/// Little-endian bytes of every element of `t`, each written by `f`.
fn le_bytes<T: Copy, const N: usize>(t: &RtenTensor<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    t.to_vec().into_iter().flat_map(f).collect()
}

fn from_value(
    v: Value,
    element: Element,
    datatype: DataType,
    name: &str,
) -> Result<Tensor<'static>, ModelError> {
    let (shape, data): (Vec<usize>, Vec<u8>) = match (element, v) {
        (Element::F32, Value::FloatTensor(t)) => {
            (t.shape().to_vec(), le_bytes(&t, f32::to_le_bytes))
        }
        (Element::I32, Value::Int32Tensor(t)) => {
            (t.shape().to_vec(), le_bytes(&t, i32::to_le_bytes))
        }
        (Element::I64, Value::Int32Tensor(t)) => (
            t.shape().to_vec(),
            le_bytes(&t, |v| i64::from(v).to_le_bytes()),
        ),
        (Element::Bool, Value::Int32Tensor(t)) => {
            (t.shape().to_vec(), le_bytes(&t, |v| [u8::from(v != 0)]))
        }
        (Element::Bool | Element::U8, Value::UInt8Tensor(t)) => (t.shape().to_vec(), t.to_vec()),
        (Element::I8, Value::Int8Tensor(t)) => (t.shape().to_vec(), le_bytes(&t, i8::to_le_bytes)),
        _ => {
            return Err(ModelError(format!(
                "output '{name}' came out of rten with an element type other than its declared {}",
                datatype.name()
            )))
        }
    };
    Ok(Tensor {
        datatype,
        shape: shape.into_iter().collect(),
        data: Cow::Owned(data),
    })
}

impl Model for OnnxModel {
    fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    fn runtime(&self) -> &'static str {
        "rten"
    }

    fn check_request(&self, inputs: &[Tensor<'_>]) -> Result<(), String> {
        for ((t, port), spec) in inputs.iter().zip(&self.inputs).zip(&self.meta.inputs) {
            if port.element == Element::I64 {
                let outside = t
                    .data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("chunks_exact")))
                    .find(|&v| i32::try_from(v).is_err());
                if let Some(v) = outside {
                    return Err(format!(
                        "input '{}' holds {v}, outside the 32-bit range this model is computed \
                         in (rten computes INT64 as INT32)",
                        spec.name
                    ));
                }
            }
        }
        Ok(())
    }

    fn infer<'a>(&self, inputs: &'a [Tensor<'_>]) -> Result<Outputs<'a>, ModelError> {
        let mut values: Vec<(NodeId, ValueOrView)> = Vec::with_capacity(inputs.len());
        for ((t, port), spec) in inputs.iter().zip(&self.inputs).zip(&self.meta.inputs) {
            let batched = self.meta.max_batch_size > 0;
            values.push((port.node, to_value(t, port, batched, &spec.name)?));
        }
        let ids: SmallVec<[NodeId; 4]> = self.outputs.iter().map(|p| p.node).collect();
        let pool = POOL.with(Arc::clone);
        let opts = RunOptions::default().with_thread_pool(Some(pool));
        let results = self
            .model
            .run(values, &ids, Some(opts))
            .map_err(|e| ModelError(format!("rten: {e}")))?;
        results
            .into_iter()
            .zip(&self.outputs)
            .zip(&self.meta.outputs)
            .map(|((v, port), spec)| {
                let mut t = from_value(v, port.element, spec.datatype, &spec.name)?;
                if let Some(r) = &port.reshape {
                    t.shape = reshaped(&t.shape, r, self.meta.max_batch_size > 0);
                }
                Ok(t)
            })
            .collect()
    }
}

#[cfg(test)]
mod view_tests {
    use super::*;

    #[test]
    fn a_reshape_must_keep_the_size() {
        let decl = |dims: &[i64], reshape: &[i64]| TensorDecl {
            name: "y".into(),
            datatype: DataType::Fp32,
            dims: dims.to_vec(),
            reshape: Some(reshape.to_vec()),
        };
        let fp32 = DataType::Fp32;
        assert!(declared_port("input", &decl(&[4], &[2, 2]), &[2, 2], fp32).is_ok());
        assert!(declared_port("input", &decl(&[5], &[2, 2]), &[2, 2], fp32).is_err());
        assert!(declared_port("output", &decl(&[4], &[2, 2]), &[2, 2], fp32).is_ok());
        assert!(declared_port("output", &decl(&[3], &[4]), &[4], fp32).is_err());
        assert!(declared_port("output", &decl(&[-1, 2], &[2, 2]), &[2, 2], fp32).is_ok());
        assert!(declared_port("output", &decl(&[-1, 3], &[2, 2]), &[2, 2], fp32).is_err());
        assert!(declared_port("output", &decl(&[0], &[2, 2]), &[2, 2], fp32).is_err());
        assert!(
            declared_port("input", &decl(&[i64::MAX, 4], &[2, 2]), &[2, 2], fp32).is_err(),
            "an overflowing size is refused, not wrapped"
        );
    }

    #[test]
    fn aligned_inputs_are_viewed_and_unaligned_ones_copied() {
        let floats = [1.5f32, -2.0, 3.25, 4.0, 0.5];
        // A Vec<f32>'s bytes are aligned for f32; one byte in, they are not.
        let mut bytes: Vec<u8> = Vec::with_capacity(24);
        bytes.extend(floats.iter().flat_map(|f| f.to_le_bytes()));
        let port = |element| Port {
            node: NodeId::from_u32(0),
            element,
            reshape: None,
        };
        let aligned = Tensor {
            datatype: DataType::Fp32,
            shape: [1usize, 4].into_iter().collect(),
            data: Cow::Borrowed(&bytes[..16]),
        };
        let v = to_value(&aligned, &port(Element::F32), true, "x").unwrap();
        let ValueOrView::View(ValueView::FloatTensor(t)) = v else {
            panic!("an aligned FP32 input is viewed, not copied");
        };
        assert_eq!(t.to_vec(), &floats[..4]);
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes[..16]);
        let unaligned = Tensor {
            datatype: DataType::Fp32,
            shape: [1usize, 4].into_iter().collect(),
            data: Cow::Borrowed(&shifted[1..]),
        };
        let v = to_value(&unaligned, &port(Element::F32), true, "x").unwrap();
        let ValueOrView::Value(Value::FloatTensor(t)) = v else {
            panic!("an unaligned input is copied");
        };
        assert_eq!(t.to_vec(), &floats[..4]);
    }
}
