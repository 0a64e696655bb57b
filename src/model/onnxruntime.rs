//! ONNX models on ONNX Runtime: the models rten cannot run, and those that ask for it.
//!
//! The library is loaded at run time, once per process, from `[onnxruntime] library` or
//! `ORT_DYLIB_PATH` (the onnxruntime wheel on PyPI ships `onnxruntime/capi/libonnxruntime.so.*`);
//! without it friday runs on rten alone. A model has one session per shard, each with one
//! intra-op and one inter-op thread and no spinning, so ONNX Runtime computes on the calling
//! shard's (or its worker's) thread and starts no threads that compete with the shards. With
//! more than one session, the weights are held once: the sessions share friday's copy of the
//! initializers and one container of ONNX Runtime's prepacked weights. The KServe signature is
//! the session's, or what `config.pbtxt` declares (renamed, reordered, reshaped), checked and
//! applied exactly as on rten.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::environment::Environment;
use ort::memory::Allocator;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynTensor, DynValue, TensorElementType};

use super::onnx::{bind, reshaped, GraphTensor};
use super::pbtxt::TensorDecl;
use super::{Model, ModelError, ModelMetadata, Outputs};
use crate::tensor::{DataType, Tensor};

static RUNTIME: OnceLock<Result<Environment, String>> = OnceLock::new();

thread_local! {
    /// Which of a model's sessions this thread runs (its shard's CPU, modulo the sessions), once
    /// set.
    static SESSION: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Says which session the calling thread runs models on: its shard's CPU (a shard and its
/// worker share one; two shards on CPUs equal modulo the session count would share one too,
/// safely, through its mutex).
pub fn set_thread_session(index: usize) {
    SESSION.with(|s| s.set(Some(index)));
}

/// The ONNX Runtime environment: the library loaded once, from `library` or else
/// `ORT_DYLIB_PATH`. An error says what is missing and how to provide it.
pub fn runtime(library: Option<&Path>) -> Result<&'static Environment, String> {
    RUNTIME
        .get_or_init(|| {
            let path = library
                .map(Path::to_path_buf)
                .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
                .ok_or_else(|| {
                    "ONNX Runtime's library is not available: set library under [onnxruntime] \
                     or ORT_DYLIB_PATH to its path (the onnxruntime wheel on PyPI ships \
                     onnxruntime/capi/libonnxruntime.so.*)"
                        .to_string()
                })?;
            ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
                .with_name("friday")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn element_type(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Bool => DataType::Bool,
        _ => return None,
    })
}

/// One input or output of the model: its name in the graph, ONNX Runtime's element type, and
/// the reshape `config.pbtxt` asks for (the model's shape for an input, the clients' for an
/// output, without the batch dimension).
struct Port {
    name: String,
    element: TensorElementType,
    reshape: Option<Vec<i64>>,
}

/// An ONNX model on ONNX Runtime: one session per shard.
pub struct OrtModel {
    meta: ModelMetadata,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    /// One per shard (each used by its shard's thread, or its worker, never both: so never
    /// contended); the mutex is there because a session runs with `&mut`.
    sessions: Vec<Mutex<Session>>,
}

impl OrtModel {
    /// Loads `path` as model `name` with `count` sessions (one per shard), each on one thread.
    /// `declared`: the inputs and outputs `config.pbtxt` declares (empty: the graph's own), as
    /// on rten.
    pub fn load(
        path: &Path,
        name: &str,
        max_batch_size: Option<usize>,
        declared: (&[TensorDecl], &[TensorDecl]),
        count: usize,
        library: Option<&Path>,
    ) -> Result<Self, String> {
        let env = runtime(library)?;
        // More than one session share the model's weights: friday reads them once and hands
        // every session the same tensors, and the sessions share the copies ONNX Runtime
        // prepacks (its matrix layouts) through one container. A lone session keeps its own
        // weights: ONNX Runtime frees the originals of the weights it prepacks, which it cannot
        // do with lent ones. So the second shard adds those originals once, and every further
        // shard only its session's working buffers.
        let prepacked = ort::session::builder::PrepackedWeights::new();
        let shared = if count > 1 {
            // A file rten's parser cannot read is still ONNX Runtime's to try: each session then
            // keeps its own weights.
            shared_initializers(path).unwrap_or_else(|e| {
                tracing::warn!(model = name, reason = %e, "each session keeps its own weights");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let open = || -> Result<Session, String> {
            let options = |e: ort::Error<_>| format!("ONNX Runtime session options: {e}");
            let mut builder = Session::builder(env)
                .map_err(|e| format!("ONNX Runtime session: {e}"))?
                .with_intra_threads(1)
                .map_err(options)?
                .with_inter_threads(1)
                .map_err(options)?
                .with_parallel_execution(false)
                .map_err(options)?
                .with_intra_op_spinning(false)
                .map_err(options)?
                .with_inter_op_spinning(false)
                .map_err(options)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(options)?
                .with_prepacked_weights(&prepacked)
                .map_err(options)?;
            for (name, value) in &shared {
                builder = builder
                    .with_initializer(name, Arc::clone(value))
                    .map_err(options)?;
            }
            builder
                .commit_from_file(path)
                .map_err(|e| format!("ONNX Runtime cannot load {}: {e}", path.display()))
        };
        let first = open()?;
        let graph =
            |outlets: &[ort::value::Outlet]| -> Vec<GraphTensor<Option<TensorElementType>>> {
                outlets
                    .iter()
                    .map(|o| {
                        let dims = o
                            .dtype()
                            .tensor_shape()
                            .map(|s| s.iter().map(|&d| if d > 0 { d } else { -1 }).collect())
                            .unwrap_or_default();
                        (o.name().to_string(), o.dtype().tensor_type(), dims)
                    })
                    .collect()
            };
        let (graph_inputs, graph_outputs) = (graph(first.inputs()), graph(first.outputs()));
        let batchable = graph_inputs
            .iter()
            .chain(&graph_outputs)
            .all(|(_, _, dims)| dims.first() == Some(&-1));
        let max_batch_size = super::onnx::batch_size(max_batch_size, batchable, path)?;
        let ports = |graph: &[GraphTensor<Option<TensorElementType>>],
                     decls: &[TensorDecl],
                     what: &str| {
            let element = |name: &str, t: Option<TensorElementType>| {
                let t = t.ok_or_else(|| {
                    format!("{what} '{name}' is not a tensor; friday serves tensors only")
                })?;
                let datatype = element_type(t).ok_or_else(|| {
                    format!("{what} '{name}' has element type {t:?}, which friday does not serve")
                })?;
                Ok((t, datatype))
            };
            Ok::<_, String>(
                bind(graph, decls, what, max_batch_size, element)?
                    .into_iter()
                    .map(|b| {
                        (
                            Port {
                                name: b.graph_name,
                                element: b.element,
                                reshape: b.reshape,
                            },
                            b.spec,
                        )
                    })
                    .unzip(),
            )
        };
        let (inputs, in_specs) = ports(&graph_inputs, declared.0, "input")?;
        let (outputs, out_specs) = ports(&graph_outputs, declared.1, "output")?;
        let mut sessions = vec![Mutex::new(first)];
        for _ in 1..count.max(1) {
            sessions.push(Mutex::new(open()?));
        }
        Ok(OrtModel {
            meta: ModelMetadata {
                name: name.to_string(),
                platform: "onnxruntime_onnx".into(),
                backend: "onnxruntime".into(),
                max_batch_size,
                inputs: in_specs,
                outputs: out_specs,
            },
            inputs,
            outputs,
            sessions,
        })
    }

    /// The session the calling thread runs on.
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        let n = self.sessions.len();
        if let Some(i) = SESSION.with(Cell::get) {
            return lock(&self.sessions[i % n]);
        }
        // A thread without a shard: any free one.
        for s in &self.sessions {
            if let Ok(g) = s.try_lock() {
                return g;
            }
        }
        lock(&self.sessions[0])
    }
}

/// Initializers smaller than this stay in each session (sharing them saves nothing).
const SHARED_INITIALIZER_MIN_BYTES: usize = 4096;

/// The model's weights as ONNX Runtime tensors, read once (with rten's ONNX parser), for every
/// session to use in place of its own copy. Weights stored outside the model file stay with
/// ONNX Runtime, as do small ones and types friday does not map.
fn shared_initializers(path: &Path) -> Result<Vec<(String, Arc<DynValue>)>, String> {
    use rten_onnx::onnx::{DataLocation, DataType as Onnx, ModelProto};
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let model = ModelProto::parse_file(file)
        .map_err(|e| format!("cannot read {} as ONNX: {e}", path.display()))?;
    let mut shared = Vec::new();
    for t in model.graph.iter().flat_map(|g| &g.initializer) {
        let (Some(name), Some(kind)) = (&t.name, t.data_type) else {
            continue;
        };
        if t.data_location == Some(DataLocation::EXTERNAL) {
            continue;
        }
        // Large weights are raw little-endian bytes; the typed fields cover the older exporters.
        let bytes: Vec<u8> = match &t.raw_data {
            Some(raw) => raw.take(),
            None if kind == Onnx::FLOAT => le_bytes(&t.float_data, f32::to_le_bytes),
            None if kind == Onnx::DOUBLE => le_bytes(&t.double_data, f64::to_le_bytes),
            None if kind == Onnx::INT64 => le_bytes(&t.int64_data, i64::to_le_bytes),
            None if kind == Onnx::INT32 => le_bytes(&t.int32_data, i32::to_le_bytes),
            None => continue,
        };
        if bytes.len() < SHARED_INITIALIZER_MIN_BYTES {
            continue;
        }
        let dims = t.dims.as_slice();
        let value = match kind {
            Onnx::FLOAT => owned::<f32>(dims, &bytes),
            Onnx::DOUBLE => owned::<f64>(dims, &bytes),
            Onnx::FLOAT16 => owned::<half::f16>(dims, &bytes),
            Onnx::BFLOAT16 => owned::<half::bf16>(dims, &bytes),
            Onnx::INT8 => owned::<i8>(dims, &bytes),
            Onnx::UINT8 => owned::<u8>(dims, &bytes),
            Onnx::INT16 => owned::<i16>(dims, &bytes),
            Onnx::UINT16 => owned::<u16>(dims, &bytes),
            Onnx::INT32 => owned::<i32>(dims, &bytes),
            Onnx::UINT32 => owned::<u32>(dims, &bytes),
            Onnx::INT64 => owned::<i64>(dims, &bytes),
            Onnx::UINT64 => owned::<u64>(dims, &bytes),
            _ => continue,
        };
        // A weight whose size does not match its shape is left to ONNX Runtime to report.
        let Some(value) =
            value.map_err(|e| format!("ONNX Runtime cannot hold weight '{name}': {e}"))?
        else {
            continue;
        };
        shared.push((name.clone(), Arc::new(value)));
    }
    Ok(shared)
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], to: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to(v)).collect()
}

/// A tensor of `dims` over `bytes` (little-endian `T`s) in memory friday owns, as ONNX Runtime
/// requires of a shared initializer; `None` when the sizes disagree.
fn owned<T>(dims: &[i64], bytes: &[u8]) -> Result<Option<DynValue>, ort::Error>
where
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + Default + 'static,
{
    let size = std::mem::size_of::<T>();
    let elements = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?));
    if elements.and_then(|n| n.checked_mul(size)) != Some(bytes.len()) {
        return Ok(None);
    }
    let mut data = vec![T::default(); bytes.len() / size];
    // SAFETY: `data` holds exactly `bytes.len()` bytes of plain numbers, for which any bit
    // pattern is valid; ONNX stores them little-endian, as the hosts friday runs on do.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), data.as_mut_ptr().cast::<u8>(), bytes.len())
    };
    Ok(Some(
        ort::value::Tensor::from_array((dims.to_vec(), data))?.into_dyn(),
    ))
}

fn lock(m: &Mutex<Session>) -> std::sync::MutexGuard<'_, Session> {
    // A session whose run panicked is still usable: ONNX Runtime holds no Rust invariants.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Model for OrtModel {
    fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    fn runtime(&self) -> &'static str {
        "onnxruntime"
    }

    fn infer<'a>(&self, inputs: &'a [Tensor<'_>]) -> Result<Outputs<'a>, ModelError> {
        self.run(&mut self.session(), inputs)
    }

    /// Every session runs the batch: each shard's first request finds its session warm.
    fn warm_up(&self, inputs: &[Tensor<'_>]) -> Result<(), ModelError> {
        for session in &self.sessions {
            self.run(&mut lock(session), inputs)?;
        }
        Ok(())
    }
}

impl OrtModel {
    /// Runs one batch on `session`.
    fn run<'a>(
        &self,
        session: &mut Session,
        inputs: &'a [Tensor<'_>],
    ) -> Result<Outputs<'a>, ModelError> {
        let fail = |e: ort::Error| ModelError(format!("ONNX Runtime: {e}"));
        let allocator = Allocator::default();
        let mut values: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        let batched = self.meta.max_batch_size > 0;
        for ((t, port), spec) in inputs.iter().zip(&self.inputs).zip(&self.meta.inputs) {
            let shape: Vec<i64> = match &port.reshape {
                Some(r) => reshaped(&t.shape, r, batched)
                    .iter()
                    .map(|&d| d as i64)
                    .collect(),
                None => t.shape.iter().map(|&d| d as i64).collect(),
            };
            // What the tensor about to be allocated holds: checked here, not trusted (a batch
            // from the protocol fits its spec, and so must anything else that runs the model).
            let size = spec.datatype.element_size().and_then(|e| {
                shape
                    .iter()
                    .try_fold(e, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
            });
            if t.datatype != spec.datatype || size != Some(t.data.len()) {
                return Err(ModelError(format!(
                    "input '{}': {} bytes of {} for shape {shape:?} of {}",
                    spec.name,
                    t.data.len(),
                    t.datatype.name(),
                    spec.datatype.name()
                )));
            }
            let mut value = DynTensor::new(&allocator, port.element, shape).map_err(fail)?;
            if !t.data.is_empty() {
                let dst = value.data_ptr_mut().cast::<u8>();
                // SAFETY: the tensor was just allocated for `shape` elements of the input's
                // type, exactly `t.data.len()` bytes (checked above, and not zero, so the
                // pointer is real); the source may be unaligned, so it is copied bytewise.
                unsafe { std::ptr::copy_nonoverlapping(t.data.as_ptr(), dst, t.data.len()) };
            }
            values.push((port.name.as_str(), value.into()));
        }
        let results = session.run(values).map_err(fail)?;
        let mut outputs = Outputs::new();
        for (port, spec) in self.outputs.iter().zip(&self.meta.outputs) {
            let v = results.get(&port.name).ok_or_else(|| {
                ModelError(format!("ONNX Runtime returned no output '{}'", port.name))
            })?;
            let mut shape: crate::tensor::Shape =
                v.shape().iter().map(|&d| d.max(0) as usize).collect();
            if let Some(r) = &port.reshape {
                shape = reshaped(&shape, r, batched).into_iter().collect();
            }
            let bytes = spec.datatype.element_size().unwrap_or(0) * v.shape().num_elements();
            let v = v
                .view()
                .downcast::<ort::value::DynTensorValueType>()
                .map_err(fail)?;
            let data = if bytes == 0 {
                Vec::new()
            } else {
                let src = v.data_ptr().cast::<u8>();
                // SAFETY: ONNX Runtime's CPU tensor holds `num_elements` (not zero) elements of
                // the output's declared type; they are copied out before the session runs again.
                unsafe { std::slice::from_raw_parts(src, bytes) }.to_vec()
            };
            outputs.push(Tensor {
                datatype: spec.datatype,
                shape,
                data: data.into(),
            });
        }
        Ok(outputs)
    }
}
