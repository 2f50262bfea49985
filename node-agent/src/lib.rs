//! The Yonder node agent: runs workloads with their anonymous memory under userfaultfd and pages
//! it to memory servers.

pub mod eviction;
pub mod pages;
pub mod uffd;
