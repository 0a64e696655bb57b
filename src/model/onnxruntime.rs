//! ONNX models on ONNX Runtime, for the operators rten lacks.
//!
//! The library is loaded at run time, once per process, from `ORT_DYLIB_PATH` (the onnxruntime
//! wheel on PyPI ships `onnxruntime/capi/libonnxruntime.so.*`); without it friday runs on rten
//! alone. A model has one session per shard, each with one intra-op and one inter-op thread and
//! no spinning, so ONNX Runtime starts no threads that compete with the shards; the sessions
//! share ONNX Runtime's prepacked weights. The KServe signature is the session's; a
//! `config.pbtxt` that declares inputs or outputs (to rename, reorder or reshape them) is not
//! applied on ONNX Runtime yet, and such a model is refused rather than served differently.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::memory::Allocator;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynTensor, TensorElementType};

use super::{Model, ModelError, ModelMetadata, Outputs, TensorSpec};
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
                    "ONNX Runtime is not available: set ORT_DYLIB_PATH to its library (for \
                     example the onnxruntime wheel's onnxruntime/capi/libonnxruntime.so.*)"
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

/// One port of the model: its name and ONNX Runtime's element type.
struct Port {
    name: String,
    element: TensorElementType,
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
    pub fn load(
        path: &Path,
        name: &str,
        max_batch_size: Option<usize>,
        count: usize,
        library: Option<&Path>,
    ) -> Result<Self, String> {
        let env = runtime(library)?;
        // The sessions share the weights ONNX Runtime prepacks (its matrix layouts), so each
        // session adds its own buffers, not another copy of the packed weights.
        let prepacked = ort::session::builder::PrepackedWeights::new();
        let open = || -> Result<Session, String> {
            let options = |e: ort::Error<_>| format!("ONNX Runtime session options: {e}");
            Session::builder(env)
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
                .map_err(options)?
                .commit_from_file(path)
                .map_err(|e| format!("ONNX Runtime cannot load {}: {e}", path.display()))
        };
        let first = open()?;
        let port = |o: &ort::value::Outlet, what: &str| -> Result<(Port, TensorSpec), String> {
            let element = o.dtype().tensor_type().ok_or_else(|| {
                format!(
                    "{what} '{}' is not a tensor; friday serves tensors only",
                    o.name()
                )
            })?;
            let datatype = element_type(element).ok_or_else(|| {
                format!(
                    "{what} '{}' has element type {element:?}, which friday does not serve",
                    o.name()
                )
            })?;
            let dims: Vec<i64> = o
                .dtype()
                .tensor_shape()
                .map(|s| s.iter().map(|&d| if d > 0 { d } else { -1 }).collect())
                .unwrap_or_default();
            Ok((
                Port {
                    name: o.name().to_string(),
                    element,
                },
                TensorSpec::new(o.name(), datatype, &dims),
            ))
        };
        let (inputs, mut in_specs): (Vec<Port>, Vec<TensorSpec>) = first
            .inputs()
            .iter()
            .map(|o| port(o, "input"))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        let (outputs, mut out_specs): (Vec<Port>, Vec<TensorSpec>) = first
            .outputs()
            .iter()
            .map(|o| port(o, "output"))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        let batchable = in_specs
            .iter()
            .chain(&out_specs)
            .all(|s| s.dims.first() == Some(&-1));
        let max_batch_size = super::onnx::batch_size(max_batch_size, batchable, path)?;
        if max_batch_size > 0 {
            for s in in_specs.iter_mut().chain(out_specs.iter_mut()) {
                s.dims.remove(0);
            }
        }
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
        // A thread without a shard (the model manager warming the model up): any free one.
        for s in &self.sessions {
            if let Ok(g) = s.try_lock() {
                return g;
            }
        }
        lock(&self.sessions[0])
    }
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
        let fail = |e: ort::Error| ModelError(format!("ONNX Runtime: {e}"));
        let allocator = Allocator::default();
        let mut values: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (t, port) in inputs.iter().zip(&self.inputs) {
            let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            let mut value = DynTensor::new(&allocator, port.element, shape).map_err(fail)?;
            let dst = value.data_ptr_mut().cast::<u8>();
            // SAFETY: the tensor was just allocated for `shape` elements of the input's type,
            // whose bytes are exactly `t.data` (the protocol checked size against shape and
            // datatype); the source may be unaligned, so it is copied bytewise.
            unsafe { std::ptr::copy_nonoverlapping(t.data.as_ptr(), dst, t.data.len()) };
            values.push((port.name.as_str(), value.into()));
        }
        let mut session = self.session();
        let results = session.run(values).map_err(fail)?;
        let mut outputs = Outputs::new();
        for (port, spec) in self.outputs.iter().zip(&self.meta.outputs) {
            let v = results.get(&port.name).ok_or_else(|| {
                ModelError(format!("ONNX Runtime returned no output '{}'", port.name))
            })?;
            let shape: crate::tensor::Shape =
                v.shape().iter().map(|&d| d.max(0) as usize).collect();
            let bytes = spec.datatype.element_size().unwrap_or(0) * v.shape().num_elements();
            let v = v
                .view()
                .downcast::<ort::value::DynTensorValueType>()
                .map_err(fail)?;
            let src = v.data_ptr().cast::<u8>();
            // SAFETY: ONNX Runtime's CPU tensor holds `num_elements` elements of the output's
            // declared type; they are copied out before the session runs again.
            let data = unsafe { std::slice::from_raw_parts(src, bytes) }.to_vec();
            outputs.push(Tensor {
                datatype: spec.datatype,
                shape,
                data: data.into(),
            });
        }
        Ok(outputs)
    }
}
