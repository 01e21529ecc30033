//! Signature verification (cosign). Pure: artifacts and keys are handed in.
//!
//! This version verifies key-based legacy cosign signatures; rules that require signatures are
//! still refused at load until the pull path consults this module.

pub mod cosign;
pub mod keys;
