//! placeholder

pub mod backup;
