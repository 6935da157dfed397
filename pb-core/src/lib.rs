//! pb-core: the protocol core of pb (in progress).

// --- AMP section (owned by the AMP work) ---
pub mod amp;
// --- end AMP section ---
