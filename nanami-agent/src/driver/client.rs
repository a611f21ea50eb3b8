//! What every client (`nanami connect`, the mobile tunnel) plugs into the
//! driver: it follows its node's configuration ([`NodeFollow`]) and probes its
//! gateways through the tunnel ([`Prober`], on Linux).

use std::time::Duration;

use nanami_api::client::ApiError;
use nanami_api::wire::Subject;
use nanami_api::Client;
use nanami_model::NodeId;

use super::{BoxFuture, Follow};
use crate::VersionedConfig;

/// A client follows its node's configuration: a long-poll on the version (the
/// answer's `ETag`). An answer for another node is refused as undecodable.
#[derive(Debug, Clone)]
pub struct NodeFollow(pub NodeId);

impl Follow for NodeFollow {
    type Desired = VersionedConfig;

    fn subject(&self) -> Subject {
        Subject::Node(self.0.clone())
    }

    fn poll<'a>(
        &'a self,
        client: Client,
        after: Option<String>,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<VersionedConfig>, ApiError>> {
        Box::pin(async move {
            let Some((version, config)) = client
                .node_config_watch(&self.0, after.as_deref(), wait)
                .await?
            else {
                return Ok(None);
            };
            if config.node != self.0 {
                return Err(ApiError::Decode(format!(
                    "the manager sent node {}'s configuration",
                    config.node
                )));
            }
            Ok(Some(VersionedConfig { version, config }))
        })
    }
}

#[cfg(target_os = "linux")]
pub use prober::Prober;

#[cfg(target_os = "linux")]
mod prober {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::IpAddr;
    use std::time::Duration;

    use nanami_model::GatewayId;
    use nanami_wg::probe::Pinger;
    use tokio::sync::mpsc;

    use crate::driver::Input;

    /// Sends a client's failover probes: one ICMP echo to each address of each
    /// gateway (its own overlay address, routed through the tunnel to that
    /// gateway alone); each answer is fed back as [`Input::ProbeReply`].
    #[derive(Clone)]
    pub struct Prober {
        pinger: Pinger,
        replies: mpsc::Sender<Input>,
        timeout: Duration,
    }

    impl std::fmt::Debug for Prober {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Prober")
                .field("timeout", &self.timeout)
                .finish_non_exhaustive()
        }
    }

    impl Prober {
        /// A prober whose answers go to `replies`, each waited for up to
        /// `timeout`. Needs `CAP_NET_RAW` (raw ICMP sockets) and a tokio
        /// runtime; its sockets live in the calling thread's network namespace.
        pub fn new(
            replies: mpsc::Sender<Input>,
            timeout: Duration,
        ) -> Result<Self, nanami_wg::probe::ProbeError> {
            Ok(Self {
                pinger: Pinger::new()?,
                replies,
                timeout,
            })
        }

        /// Probes `targets` (what [`crate::Action::Probe`] names), at once and
        /// in parallel.
        pub fn probe(&self, targets: &BTreeMap<GatewayId, BTreeSet<IpAddr>>) {
            for (gateway, addresses) in targets {
                for address in addresses {
                    let pinger = self.pinger.clone();
                    let replies = self.replies.clone();
                    let gateway = gateway.clone();
                    let (address, timeout) = (*address, self.timeout);
                    tokio::spawn(async move {
                        if pinger.ping(address, timeout).await.is_ok() {
                            let _ = replies.send(Input::ProbeReply(gateway)).await;
                        }
                    });
                }
            }
        }
    }
}
