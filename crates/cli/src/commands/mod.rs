//! One file per group of commands.

pub mod access;
pub mod backup;
pub mod cluster;
pub mod context;
pub mod dev;
pub mod environments;
pub mod read;
pub mod registry;
pub mod repos;
pub mod run;
pub mod services;
pub mod tests;
