//! The `repfuse` command's subcommands. Thin: parsing, the library call, printing.

pub mod commands;
pub mod table;
