//! Rendering of the aws reports (tables and JSON).
