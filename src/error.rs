//! The library's one error type. Every variant names what it concerns (file, node,
//! field) so a user can find the offending part of their model without a debugger.

use std::path::PathBuf;

/// Everything repfuse can fail with. The binary wraps these in `anyhow` for context;
/// the library never panics on user input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A node's shapes or attributes are inconsistent.
    #[error("node `{node}`: {field}: {why}")]
    Shape {
        /// Node name, as in the graph.
        node: String,
        /// The attribute or input at fault, e.g. `kernel`.
        field: String,
        /// What is wrong, for the user.
        why: String,
    },
    /// An op or configuration repfuse cannot handle here.
    #[error("node `{node}`: unsupported: {why}")]
    Unsupported {
        /// Node name, as in the graph.
        node: String,
        /// What is not supported, for the user.
        why: String,
    },
    /// The graph as a whole is malformed (cycle, dangling or duplicate names).
    #[error("graph: {0}")]
    Graph(String),
    /// A tensor is missing, has the wrong shape, or holds values that make the
    /// arithmetic meaningless (NaN, Inf, negative variance).
    #[error("tensor `{tensor}`: {why}")]
    Tensor {
        /// Tensor name, as in `Weights`.
        tensor: String,
        /// What is wrong, for the user.
        why: String,
    },
    /// A file could not be read, parsed or written.
    #[error("{}: {why}", path.display())]
    File {
        /// Path of the file concerned.
        path: PathBuf,
        /// What failed, for the user.
        why: String,
    },
    /// An OS-level I/O failure on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        /// Path of the file concerned.
        path: PathBuf,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// No GPU adapter is available.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// A device limit is too small for the requested work.
    #[error("device limit `{what}`: need {need}, adapter has {have}")]
    Limit {
        /// Limit name, e.g. `max_storage_buffer_binding_size`.
        what: String,
        /// Amount the work needs, in the limit's unit.
        need: u64,
        /// Amount the adapter allows.
        have: u64,
    },
    /// The GPU failed (shader, out of memory, lost device, timeout).
    #[error("gpu: {0}")]
    Gpu(String),
    /// A WGSL shader failed to parse or validate.
    #[error("shader `{name}`: {why}")]
    Shader {
        /// Kernel name, as in `gpu::shaders::ALL`.
        name: String,
        /// The naga diagnostic.
        why: String,
    },
}

/// `Result` with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A [`Error::Shape`] for `field` of node `node`.
    pub fn shape(node: &str, field: &str, why: impl Into<String>) -> Self {
        Error::Shape { node: node.to_string(), field: field.to_string(), why: why.into() }
    }
    /// A [`Error::Tensor`] for tensor `tensor`.
    pub fn tensor(tensor: &str, why: impl Into<String>) -> Self {
        Error::Tensor { tensor: tensor.to_string(), why: why.into() }
    }
    /// A [`Error::Unsupported`] for node `node`.
    pub fn unsupported(node: &str, why: impl Into<String>) -> Self {
        Error::Unsupported { node: node.to_string(), why: why.into() }
    }
}
