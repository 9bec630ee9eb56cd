//! Diagnostics: every error and warning names where it comes from.
//!
//! The rendered form is `file:line:col: field.path: message`, the shape compilers use, so editors
//! and terminals can jump to the spot. Parts that are unknown are left out.

use std::fmt;
use std::sync::Arc;

/// A position in a source file: 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    pub file: Arc<str>,
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub fn new(file: impl Into<Arc<str>>, line: u32, col: u32) -> Self {
        Pos {
            file: file.into(),
            line,
            col,
        }
    }

    /// A position for values that do not come from a file (defaults, command-line flags).
    pub fn synthetic(what: &str) -> Self {
        Pos::new(format!("<{what}>"), 0, 0)
    }

    pub fn is_synthetic(&self) -> bool {
        self.line == 0
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_synthetic() {
            f.write_str(&self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.col)
        }
    }
}

/// One finding about the input: an error or a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub pos: Option<Pos>,
    /// Dotted field path such as `services.web.deploy.replicas`; empty at the top level.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn new(pos: Option<Pos>, path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            pos,
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn at(pos: &Pos, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Some(pos.clone()), path, message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(pos) = &self.pos {
            write!(f, "{pos}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// The error of every fallible step of this crate: one or more diagnostics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub diagnostics: Vec<Diagnostic>,
}

impl SpecError {
    pub fn one(d: Diagnostic) -> Self {
        SpecError {
            diagnostics: vec![d],
        }
    }

    pub fn at(pos: &Pos, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::one(Diagnostic::at(pos, path, message))
    }

    /// An error about the project as a whole (no file position).
    pub fn msg(message: impl Into<String>) -> Self {
        Self::one(Diagnostic::new(None, "", message))
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Builds dotted field paths: `services.web.ports[1].target`.
pub fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

pub fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}
