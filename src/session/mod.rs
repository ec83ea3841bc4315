//! Session layer. In this branch: cloud provisioning only.

pub mod provision;
