"""The native module (Rust, pyo3). Use the wrappers in ``repfuse``."""

from typing import Optional, Tuple

__version__: str

class RepfuseError(Exception):
    """An error from repfuse: bad or unsupported input, an unwritable file, a GPU failure."""

def fuse(
    data: Optional[bytes],
    path: str,
    output: Optional[str],
    *,
    verify: bool,
    backend: str,
    widen_shortcuts: bool,
    compose_cost_limit: float,
    f32: bool,
    inject_fault: bool = ...,
) -> Tuple[Optional[bytes], str]: ...
def verify(a_data: Optional[bytes], a_path: str, b_data: Optional[bytes], b_path: str, seed: int) -> str: ...
def inspect(data: Optional[bytes], path: str) -> str: ...
def main(argv: list[str]) -> int: ...
