//! The Yonder node agent: runs workloads with their anonymous memory under userfaultfd and pages
//! it to memory servers.

pub mod agent;
pub mod connect;
pub mod daemon;
pub mod embedded;
pub mod eviction;
pub mod fdpass;
pub mod malloc;
pub mod pages;
pub mod procfs;
pub mod remote;
pub mod seccomp;
pub mod spin;
pub mod stats;
pub mod uffd;
pub mod workload;

#[path = "../shim/src/proto.rs"]
pub mod shim_proto;
