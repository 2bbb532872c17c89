//! Rendering of the fleet reports (tables and JSON).
