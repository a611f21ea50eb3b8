//! The async driver (work in progress).
