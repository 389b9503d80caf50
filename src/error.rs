//! The library's one error type. Every variant names what it concerns (file, node,
//! field) so a user can find the offending part of their model without a debugger.

use std::path::PathBuf;

/// Everything repfuse can fail with. The binary wraps these in `anyhow` for context;
/// the library never panics on user input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A node's shapes or attributes are inconsistent.
    #[error("node `{node}`: {field}: {why}")]
    Shape { node: String, field: String, why: String },
    /// An op or configuration repfuse cannot handle here.
    #[error("node `{node}`: unsupported: {why}")]
    Unsupported { node: String, why: String },
    /// The graph as a whole is malformed (cycle, dangling or duplicate names).
    #[error("graph: {0}")]
    Graph(String),
    /// A tensor is missing, has the wrong shape, or holds values that make the
    /// arithmetic meaningless (NaN, Inf, negative variance).
    #[error("tensor `{tensor}`: {why}")]
    Tensor { tensor: String, why: String },
    /// A file could not be read, parsed or written.
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No GPU adapter is available.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// A device limit is too small for the requested work.
    #[error("device limit `{what}`: need {need}, adapter has {have}")]
    Limit { what: String, need: u64, have: u64 },
    /// The GPU failed (shader, out of memory, lost device, timeout).
    #[error("gpu: {0}")]
    Gpu(String),
    /// A WGSL shader failed to parse or validate.
    #[error("shader `{name}`: {why}")]
    Shader { name: String, why: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(node: &str, field: &str, why: impl Into<String>) -> Self {
        Error::Shape { node: node.to_string(), field: field.to_string(), why: why.into() }
    }
    pub fn tensor(tensor: &str, why: impl Into<String>) -> Self {
        Error::Tensor { tensor: tensor.to_string(), why: why.into() }
    }
    pub fn unsupported(node: &str, why: impl Into<String>) -> Self {
        Error::Unsupported { node: node.to_string(), why: why.into() }
    }
}
