//! Nanami's test kit: what the root-only integration suites need to build small
//! networks out of Linux network namespaces and run real processes in them.
//!
//! - [`netns::Netns`]: a named network namespace (unique per test process, or a
//!   fixed name), `lo` up, commands run inside, threads entered into it; dropping
//!   it stops the processes it started and everything else still inside, then
//!   deletes it.
//! - [`veth`]: veth pairs between two namespaces, addressed and up; a bridge port.
//! - [`process::Process`]: a child (usually inside a namespace) whose output goes
//!   to a log that failure messages quote; stopped (SIGTERM, then SIGKILL) and
//!   reaped on drop.
//! - [`wait`]: `wait_until` (and `wait_until_async`) with a deadline and a message, failing
//!   with the last observation; async variants for tokio tests.
//! - [`root::require_root`]: the one root check (it fails, never skips), and
//!   [`root::require_tools`].
//! - [`port`]: ports that cannot race: a bound socket handed over, a
//!   [`port::Reserved`] port nobody else takes until a child binds it, or the port a
//!   child reports in its log.
//!
//! Everything here fails the calling test with a message (it panics); it is a
//! dev-dependency only. The namespace mechanics themselves (creating, entering,
//! deleting) are `nanami_wg::netns`, which the product and `nanami lab` use too.
#![deny(missing_docs)]

pub mod netns;
pub mod port;
pub mod process;
pub mod root;
pub mod veth;
pub mod wait;

pub use netns::{ifname, run, Netns};
pub use process::Process;
pub use root::{require_root, require_tools};
pub use veth::veth;
pub use wait::{wait_until, wait_until_async};
