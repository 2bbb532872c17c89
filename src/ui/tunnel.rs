//! Rendering of the tunnel reports (tables and JSON).
