//! The diff: `plan(desired, observed) -> Plan`.

use std::cmp::Ordering;
use std::fmt;

use nanami_model::{GatewayState, InterfaceName, InterfaceState};
use serde::{Deserialize, Serialize};

use crate::observed::Observed;
use crate::op::Op;

/// An ordered list of [`Op`]s that takes an observed state to a desired one. Empty
/// means converged.
///
/// It renders for people as a diff, one line per op (`+` add, `~` change in place,
/// `-` remove), and serializes as `{"ops": [{"op": "add_peer", ...}, ...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    ops: Vec<Op>,
}

impl Plan {
    /// A plan of these ops, in this order (for tests and tools; [`plan`] builds the
    /// real ones).
    pub fn from_ops(ops: Vec<Op>) -> Self {
        Self { ops }
    }

    /// The ops, in the order they must be applied.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The ops, owned.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    /// Number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whether the observed state already matched: the same as [`Plan::is_empty`].
    pub fn is_converged(&self) -> bool {
        self.is_empty()
    }

    /// The state after applying every op to `state` with the model semantics of
    /// [`Op::apply`].
    #[must_use]
    pub fn apply_to(&self, state: &GatewayState) -> GatewayState {
        let mut out = state.clone();
        for op in &self.ops {
            op.apply(&mut out);
        }
        out
    }
}

impl<'a> IntoIterator for &'a Plan {
    type Item = &'a Op;
    type IntoIter = std::slice::Iter<'a, Op>;
    fn into_iter(self) -> Self::IntoIter {
        self.ops.iter()
    }
}

/// One line per op; an empty plan renders as `= converged`.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ops.is_empty() {
            return writeln!(f, "= converged");
        }
        for op in &self.ops {
            writeln!(f, "{op}")?;
        }
        Ok(())
    }
}

/// An element of a merge walk over two sorted sequences.
enum Joined<D, O> {
    /// Only desired has it.
    Desired(D),
    /// Only observed has it.
    Observed(O),
    /// Both have it.
    Both(D, O),
}

/// Walks two sequences sorted by the same key in merge order: linear in their total
/// length, with no lookup per element (`plan` of 100k peers must stay in
/// milliseconds).
fn merge_join<D, O, K: Ord + ?Sized>(
    desired: impl IntoIterator<Item = D>,
    observed: impl IntoIterator<Item = O>,
    key_d: impl Fn(&D) -> &K,
    key_o: impl Fn(&O) -> &K,
    mut f: impl FnMut(Joined<D, O>),
) {
    let mut d = desired.into_iter().peekable();
    let mut o = observed.into_iter().peekable();
    loop {
        let order = match (d.peek(), o.peek()) {
            (Some(x), Some(y)) => key_d(x).cmp(key_o(y)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => return,
        };
        match order {
            Ordering::Less => {
                if let Some(x) = d.next() {
                    f(Joined::Desired(x));
                }
            }
            Ordering::Greater => {
                if let Some(y) = o.next() {
                    f(Joined::Observed(y));
                }
            }
            Ordering::Equal => {
                if let (Some(x), Some(y)) = (d.next(), o.next()) {
                    f(Joined::Both(x, y));
                }
            }
        }
    }
}

/// The ops of each phase, collected during one walk and concatenated in phase
/// order (see [`Phase`](crate::Phase)). Within a phase, ops follow the ordered
/// collections they come from, so a plan is deterministic; rules are removed in
/// the reverse of that order (the reverse of how they are added), so a catch-all
/// rule placed after its exceptions (an exit, see `Rule::exit`) goes before them.
#[derive(Default)]
struct Phases {
    remove_rules: Vec<Op>,
    remove_routes: Vec<Op>,
    delete_filter: Vec<Op>,
    remove_peers: Vec<Op>,
    remove_addresses: Vec<Op>,
    delete_interfaces: Vec<Op>,
    create_interfaces: Vec<Op>,
    interface_attributes: Vec<Op>,
    add_addresses: Vec<Op>,
    peers: Vec<Op>,
    filter: Vec<Op>,
    add_routes: Vec<Op>,
    add_rules: Vec<Op>,
    forwarding: Vec<Op>,
}

impl Phases {
    fn into_plan(self) -> Plan {
        let mut ops = Vec::new();
        let mut remove_rules = self.remove_rules;
        remove_rules.reverse();
        for phase in [
            remove_rules,
            self.remove_routes,
            self.delete_filter,
            self.remove_peers,
            self.remove_addresses,
            self.delete_interfaces,
            self.create_interfaces,
            self.interface_attributes,
            self.add_addresses,
            self.peers,
            self.filter,
            self.add_routes,
            self.add_rules,
            self.forwarding,
        ] {
            ops.extend(phase);
        }
        Plan { ops }
    }

    fn create_interface(&mut self, name: &InterfaceName, want: &InterfaceState) {
        self.create_interfaces.push(Op::CreateInterface {
            interface: name.clone(),
            listen_port: want.listen_port,
            mtu: want.mtu,
        });
        for address in &want.addresses {
            self.add_addresses.push(Op::AddAddress {
                interface: name.clone(),
                address: *address,
            });
        }
        for (key, peer) in &want.peers {
            self.peers.push(Op::AddPeer {
                interface: name.clone(),
                public_key: *key,
                peer: peer.clone(),
            });
        }
    }

    fn update_interface(
        &mut self,
        name: &InterfaceName,
        want: &InterfaceState,
        have: &InterfaceState,
    ) {
        if want.listen_port != have.listen_port {
            self.interface_attributes.push(Op::SetListenPort {
                interface: name.clone(),
                listen_port: want.listen_port,
            });
        }
        if want.mtu != have.mtu {
            self.interface_attributes.push(Op::SetMtu {
                interface: name.clone(),
                mtu: want.mtu,
            });
        }
        merge_join(
            &want.addresses,
            &have.addresses,
            |a| *a,
            |a| *a,
            |j| match j {
                Joined::Desired(address) => self.add_addresses.push(Op::AddAddress {
                    interface: name.clone(),
                    address: *address,
                }),
                Joined::Observed(address) => self.remove_addresses.push(Op::RemoveAddress {
                    interface: name.clone(),
                    address: *address,
                }),
                Joined::Both(..) => {}
            },
        );
        merge_join(
            &want.peers,
            &have.peers,
            |p| p.0,
            |p| p.0,
            |j| match j {
                Joined::Desired((key, peer)) => self.peers.push(Op::AddPeer {
                    interface: name.clone(),
                    public_key: *key,
                    peer: peer.clone(),
                }),
                Joined::Observed((key, _)) => self.remove_peers.push(Op::RemovePeer {
                    interface: name.clone(),
                    public_key: *key,
                }),
                // The whole configuration in one op: an endpoint or AllowedIPs change
                // must not remove the peer, which would drop its session.
                Joined::Both((key, want), (_, have)) => {
                    if want != have {
                        self.peers.push(Op::UpdatePeer {
                            interface: name.clone(),
                            public_key: *key,
                            peer: want.clone(),
                        });
                    }
                }
            },
        );
    }
}

/// The ops that take `observed` to `desired`, in a safe order. Pure and
/// deterministic; telemetry never causes an op. See the crate docs for its laws.
///
/// Only what Nanami owns is compared, on both sides: foreign objects in `observed`
/// are left alone and foreign objects in `desired` are ignored. Forwarding is only
/// ever enabled, never disabled.
pub fn plan(desired: &GatewayState, observed: &Observed) -> Plan {
    diff(desired, &observed.state)
}

/// [`plan`] against a bare observed state (no telemetry).
pub(crate) fn diff(desired: &GatewayState, observed: &GatewayState) -> Plan {
    let mut p = Phases::default();

    let owned_d = desired.interfaces.iter().filter(|(n, _)| n.is_owned());
    let owned_o = observed.interfaces.iter().filter(|(n, _)| n.is_owned());
    merge_join(
        owned_d,
        owned_o,
        |i| i.0,
        |i| i.0,
        |j| match j {
            Joined::Desired((name, want)) => p.create_interface(name, want),
            // Deleting the link takes its peers and addresses with it: one op.
            Joined::Observed((name, _)) => p.delete_interfaces.push(Op::DeleteInterface {
                interface: name.clone(),
            }),
            Joined::Both((name, want), (_, have)) => p.update_interface(name, want, have),
        },
    );

    let routes_d = desired.routes.iter().filter(|r| r.is_owned());
    let routes_o = observed.routes.iter().filter(|r| r.is_owned());
    merge_join(
        routes_d,
        routes_o,
        |r| *r,
        |r| *r,
        |j| match j {
            Joined::Desired(route) => p.add_routes.push(Op::AddRoute {
                route: route.clone(),
            }),
            Joined::Observed(route) => p.remove_routes.push(Op::RemoveRoute {
                route: route.clone(),
            }),
            Joined::Both(..) => {}
        },
    );

    let rules_d = desired.rules.iter().filter(|r| r.is_owned());
    let rules_o = observed.rules.iter().filter(|r| r.is_owned());
    merge_join(
        rules_d,
        rules_o,
        |r| *r,
        |r| *r,
        |j| match j {
            Joined::Desired(rule) => p.add_rules.push(Op::AddRule { rule: rule.clone() }),
            Joined::Observed(rule) => p.remove_rules.push(Op::RemoveRule { rule: rule.clone() }),
            Joined::Both(..) => {}
        },
    );

    match (&desired.filter, &observed.filter) {
        (Some(want), Some(have)) if want == have => {}
        (Some(want), _) => p.filter.push(Op::ReplaceFilter {
            filter: want.clone(),
        }),
        (None, Some(_)) => p.delete_filter.push(Op::DeleteFilter),
        (None, None) => {}
    }

    for family in desired.forwarding.difference(&observed.forwarding) {
        p.forwarding.push(Op::EnableForwarding { family: *family });
    }

    p.into_plan()
}
