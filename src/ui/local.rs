//! Rendering of the local reports (tables and JSON).
