//! The fault suite's moving parts: a recorded workload (`workload`) and the faults injected
//! while it runs (`nemesis`); `crate::linearizability` judges the histories.

mod nemesis;
mod workload;

pub use nemesis::{DISK_RESERVE_BYTES, FULL_DISK_LEAVES_BYTES, FaultLog, Nemesis, SMALL_DISK_BYTES, run_nemesis};
pub use workload::{KeyHistory, NAMESPACE, Recorded, Workload, final_reads, run_workload};
