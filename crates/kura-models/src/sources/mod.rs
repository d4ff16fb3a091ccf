//! The remote sources of model files. Each hands back files in the staging
//! directory; checking and installing them is the resolver's job.

pub(crate) mod hub;
pub(crate) mod wheel;
