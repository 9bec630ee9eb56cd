//! Compose files to a validated, typed skiff spec.
//!
//! The pipeline, per file: YAML text → [`node`] tree with positions → interpolation → `extends`
//! → merge with the files before it; then the merged tree → typed [`model`] → semantic
//! validation. Every error says `file:line:col: field.path: reason`.
//!
//! **Invariant:** this crate performs no I/O. Files are read through [`loader::Loader`], and the
//! process environment arrives as a plain map, so every step is a pure function of its inputs.

pub mod de;
pub mod diag;
pub mod dotenv;
pub mod extends;
pub mod interpolate;
pub mod loader;
pub mod merge;
pub mod model;
pub mod node;
pub mod order;
pub mod project;
pub mod render;
pub mod runtime;
pub mod schema;
pub mod template;
pub mod units;
pub mod validate;
