//! Pure policy: names, hashes, the allowlist model and decisions. No I/O lives here (no axum,
//! reqwest, tokio or file system), so every deny path is a table test.

pub mod allowlist;
pub mod decide;
pub mod filename;
pub mod hash;
pub mod name;
pub mod oci;
pub mod requirements;
pub mod units;

pub use allowlist::{Policy, ProjectRules, Source};
pub use decide::{Decision, DenyReason};
pub use filename::DistFilename;
pub use hash::Sha256;
pub use name::ProjectName;
