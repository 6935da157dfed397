//! pb: remote objects for tokio (in progress).

// --- AMP section (owned by the AMP work) ---
pub use pb_core::amp;
pub use pb_derive::{AmpCommand, AmpError, AmpFields};
// --- end AMP section ---
