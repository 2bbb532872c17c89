//! Rendering of the probe reports (tables and JSON).
