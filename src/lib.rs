//! pb: remote objects for tokio (in progress).

// --- AMP section (owned by the AMP work) ---
pub use pb_core::amp;
// --- end AMP section ---
