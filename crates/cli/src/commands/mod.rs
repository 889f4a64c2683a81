//! One file per group of commands.

pub mod cluster;
pub mod dev;
pub mod read;
pub mod run;
