//! Random valid topology documents for property tests, and a catalogue of faults.
#![allow(dead_code, clippy::unwrap_used)]

use nanami_model::doc::{
    Document, GatewayDoc, MembershipDoc, NetworkDoc, NodeDoc, OneOrMany, PolicyDoc, RegionDoc,
    WorkspaceDoc,
};
use nanami_model::{Health, PrivateKey, Topology};
use proptest::prelude::*;

/// A distinct, valid public key for each `n`.
pub fn key(n: u32) -> String {
    let mut bytes = [7u8; 32];
    // Byte 0 is clamped by X25519; vary bytes 1..5.
    bytes[1..5].copy_from_slice(&n.to_le_bytes());
    PrivateKey::from_bytes(bytes).public_key().to_string()
}

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub status: u8,
    pub networks: Vec<bool>,
    pub explicit: bool,
    pub exit: bool,
    pub endpoint: bool,
}

#[derive(Debug, Clone)]
pub struct GatewaySpec {
    pub networks: Vec<bool>,
    pub roles: u8,
    pub region: usize,
    pub capacity: Option<u32>,
    pub drain: bool,
}

#[derive(Debug, Clone)]
pub struct NetSpec {
    pub v6: bool,
    pub routes: u8,
    pub exit: bool,
    pub nat: bool,
    /// 0 auto, 1 manual, 2 balanced.
    pub policy: u8,
    /// Wanted redundancy, capped at the gateways that can hold a client.
    pub redundancy: u32,
    pub health_targets: bool,
}

#[derive(Debug, Clone)]
pub struct WsSpec {
    pub regions: Vec<usize>,
    pub nets: Vec<NetSpec>,
    pub nodes: Vec<NodeSpec>,
    pub gateways: Vec<GatewaySpec>,
}

fn net_spec() -> impl Strategy<Value = NetSpec> {
    (
        any::<bool>(),
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        0u8..3,
        1u32..4,
        any::<bool>(),
    )
        .prop_map(
            |(v6, routes, exit, nat, policy, redundancy, health_targets)| NetSpec {
                v6,
                routes,
                exit,
                nat,
                policy,
                redundancy,
                health_targets,
            },
        )
}

fn ws_spec(regions: usize) -> impl Strategy<Value = WsSpec> {
    (1usize..4).prop_flat_map(move |nets| {
        (
            proptest::sample::subsequence((0..regions).collect::<Vec<_>>(), 1..=regions)
                .prop_shuffle(),
            proptest::collection::vec(net_spec(), nets),
            proptest::collection::vec(
                (
                    0u8..4,
                    proptest::collection::vec(any::<bool>(), nets),
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                )
                    .prop_map(|(status, networks, explicit, exit, endpoint)| {
                        NodeSpec {
                            status,
                            networks,
                            explicit,
                            exit,
                            endpoint,
                        }
                    }),
                0..8,
            ),
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<bool>(), nets),
                    1u8..8,
                    0usize..8,
                    proptest::option::of(1u32..4),
                    proptest::bool::weighted(0.15),
                )
                    .prop_map(|(networks, roles, region, capacity, drain)| {
                        GatewaySpec {
                            networks,
                            roles,
                            region,
                            capacity,
                            drain,
                        }
                    }),
                1..5,
            ),
        )
            .prop_map(|(regions, nets, nodes, gateways)| WsSpec {
                regions,
                nets,
                nodes,
                gateways,
            })
    })
}

/// A random valid document. Some regions are `draining` (never the first).
pub fn document() -> impl Strategy<Value = Document> {
    (1usize..4)
        .prop_flat_map(|regions| {
            (
                Just(regions),
                proptest::collection::vec(ws_spec(regions), 1..4),
                proptest::collection::vec(proptest::bool::weighted(0.2), regions),
            )
        })
        .prop_map(|(regions, specs, draining)| {
            let mut doc = build(regions, &specs);
            for (r, d) in doc.regions.iter_mut().zip(draining).skip(1) {
                if d {
                    r.state = "draining".into();
                }
            }
            doc
        })
}

pub fn build(regions: usize, specs: &[WsSpec]) -> Document {
    let mut key_n = 0u32;
    let mut next_key = || {
        key_n += 1;
        key(key_n)
    };
    let mut doc = Document {
        version: 1,
        regions: (0..regions)
            .map(|r| RegionDoc {
                id: format!("r{r}"),
                display_name: None,
                state: "active".into(),
            })
            .collect(),
        workspaces: Vec::new(),
        unknown_fields: Vec::new(),
    };
    for (w, spec) in specs.iter().enumerate() {
        let ws_regions: Vec<String> = spec.regions.iter().map(|r| format!("r{r}")).collect();
        let mut networks = Vec::new();
        let mut nodes = Vec::new();
        let mut gateways = Vec::new();
        for (n, ns) in spec.nets.iter().enumerate() {
            let mut overlay = vec![format!("100.{}.0.0/24", 64 + w * 8 + n)];
            let mut routes: Vec<String> = (0..ns.routes)
                .map(|r| format!("10.{}.{}.0/24", w * 10 + n, r))
                .collect();
            if ns.v6 {
                overlay.push(format!("fd00:{w}:{n}::/64"));
                if ns.routes > 0 {
                    routes.push(format!("fd10:{w}:{n}::/64"));
                }
            }
            networks.push(NetworkDoc {
                id: format!("net{n}"),
                overlay: OneOrMany::Many(overlay),
                routes,
                exit: ns.exit,
                nat: ns.nat,
                gateways: PolicyDoc::default(),
                health_targets: if ns.health_targets && ns.routes > 0 {
                    vec![format!("10.{}.0.1", w * 10 + n)]
                } else {
                    vec![]
                },
            });
        }
        for (i, ns) in spec.nodes.iter().enumerate() {
            let memberships = ns
                .networks
                .iter()
                .enumerate()
                .filter(|(_, m)| **m)
                .map(|(n, _)| MembershipDoc {
                    network: format!("net{n}"),
                    address: ns
                        .explicit
                        .then(|| OneOrMany::One(format!("100.{}.0.{}", 64 + w * 8 + n, 100 + i))),
                })
                .collect();
            nodes.push(NodeDoc {
                id: format!("w{w}-n{i}"),
                public_key: next_key(),
                status: ["active", "pending", "disabled", "revoked"][usize::from(ns.status)].into(),
                endpoints: if ns.endpoint {
                    vec![format!("198.51.100.{}:{}", i + 1, 40000 + w)]
                } else {
                    vec![]
                },
                memberships,
                exit: ns.exit,
            });
        }
        for (g, gs) in spec.gateways.iter().enumerate() {
            let mut served: Vec<usize> = gs
                .networks
                .iter()
                .enumerate()
                .filter(|(_, m)| **m)
                .map(|(n, _)| n)
                .collect();
            if served.is_empty() {
                served.push(0);
            }
            let mut roles = Vec::new();
            if gs.roles & 1 != 0 {
                roles.push("ingress".to_owned());
            }
            if gs.roles & 2 != 0 {
                roles.push("egress".to_owned());
            }
            if gs.roles & 4 != 0 && served.iter().any(|n| spec.nets[*n].exit) {
                roles.push("exit".to_owned());
            }
            if roles.is_empty() {
                roles.push("ingress".to_owned());
            }
            let node_id = format!("w{w}-gn{g}");
            nodes.push(NodeDoc {
                id: node_id.clone(),
                public_key: next_key(),
                status: "active".into(),
                endpoints: vec![],
                memberships: (0..spec.nets.len())
                    .map(|n| MembershipDoc {
                        network: format!("net{n}"),
                        address: None,
                    })
                    .collect(),
                exit: false,
            });
            gateways.push(GatewayDoc {
                id: format!("w{w}-g{g}"),
                node: node_id,
                region: ws_regions[gs.region % ws_regions.len()].clone(),
                networks: served.iter().map(|n| format!("net{n}")).collect(),
                roles,
                endpoint: format!("203.0.{w}.{}:51820", g + 1),
                listen_port: 51820,
                capacity: gs.capacity,
                drain: gs.drain,
                uplink: None,
            });
        }
        for (n, ns) in spec.nets.iter().enumerate() {
            let serving: Vec<&GatewayDoc> = gateways
                .iter()
                .filter(|g| g.networks.contains(&format!("net{n}")))
                .collect();
            let holders = serving
                .iter()
                .filter(|g| g.roles.iter().any(|r| r == "ingress"))
                .count() as u32;
            let redundancy = ns.redundancy.min(holders).max(1);
            match ns.policy {
                1 if !serving.is_empty() => {
                    networks[n].gateways = PolicyDoc {
                        policy: "manual".into(),
                        manual: serving.iter().rev().map(|g| g.id.clone()).collect(),
                        redundancy,
                    };
                }
                2 => {
                    networks[n].gateways = PolicyDoc {
                        policy: "balanced".into(),
                        manual: vec![],
                        redundancy,
                    };
                }
                _ => {
                    networks[n].gateways.redundancy = redundancy;
                }
            }
        }
        // A client wants an exit only where one of its networks can give it one
        // (validation refuses the others).
        for node in &mut nodes {
            node.exit = node.exit
                && node.memberships.iter().any(|m| {
                    networks.iter().any(|n| n.id == m.network && n.exit)
                        && gateways.iter().any(|g| {
                            g.networks.contains(&m.network) && g.roles.iter().any(|r| r == "exit")
                        })
                });
        }
        doc.workspaces.push(WorkspaceDoc {
            id: format!("ws{w}"),
            tenant: format!("tenant-{w}"),
            regions: ws_regions,
            networks,
            nodes,
            gateways,
        });
    }
    doc
}

/// A fault injected into a valid document, with the path prefix its issue must carry.
pub type Fault = fn(&mut Document) -> Option<String>;

fn ws0(doc: &mut Document) -> Option<&mut WorkspaceDoc> {
    doc.workspaces.first_mut()
}

/// Every fault kind the validator must catch. Each returns the path its issue must
/// start with, or `None` if the document has no place for it.
pub const FAULTS: &[(&str, Fault)] = &[
    ("unknown field", |d| {
        use nanami_model::doc::{PathPart, UnknownField};
        let ws = d.workspaces.first()?;
        let path = format!(
            "workspaces[{}].gateways[{}].colour",
            ws.id,
            ws.gateways.first()?.id
        );
        d.unknown_fields.push(UnknownField {
            path: vec![
                PathPart::Field("workspaces".into()),
                PathPart::Index(0),
                PathPart::Field("gateways".into()),
                PathPart::Index(0),
                PathPart::Field("colour".into()),
            ],
        });
        Some(path)
    }),
    ("malformed key", |d| {
        let ws = ws0(d)?;
        let n = ws.nodes.first_mut()?;
        n.public_key = "not-a-key".into();
        Some(format!("workspaces[{}].nodes[{}].public_key", ws.id, n.id))
    }),
    ("duplicate public key", |d| {
        let ws = ws0(d)?;
        let k = ws.nodes.first()?.public_key.clone();
        let n = ws.nodes.get_mut(1)?;
        n.public_key = k;
        Some(format!("workspaces[{}].nodes[{}].public_key", ws.id, n.id))
    }),
    ("duplicate node id", |d| {
        let ws = ws0(d)?;
        let mut n = ws.nodes.first()?.clone();
        n.public_key = key(999_999);
        n.memberships.clear();
        let id = n.id.clone();
        ws.nodes.push(n);
        Some(format!("workspaces[{}].nodes[{id}].id", ws.id))
    }),
    ("overlapping overlays", |d| {
        let ws = ws0(d)?;
        let first = ws.networks.first()?.overlay.clone();
        let mut net = ws.networks.first()?.clone();
        net.id = "dup-overlay".into();
        net.overlay = first;
        net.routes.clear();
        net.gateways = PolicyDoc::default();
        net.health_targets.clear();
        ws.networks.push(net);
        Some(format!("workspaces[{}].networks[", ws.id))
    }),
    ("address outside overlay", |d| {
        let ws = ws0(d)?;
        let n = ws.nodes.iter_mut().find(|n| !n.memberships.is_empty())?;
        n.memberships[0].address = Some(OneOrMany::One("192.0.2.1".into()));
        Some(format!(
            "workspaces[{}].nodes[{}].memberships[0].address",
            ws.id, n.id
        ))
    }),
    ("region without access", |d| {
        d.regions.push(RegionDoc {
            id: "elsewhere".into(),
            display_name: None,
            state: "active".into(),
        });
        let ws = ws0(d)?;
        let g = ws.gateways.first_mut()?;
        g.region = "elsewhere".into();
        Some(format!("workspaces[{}].gateways[{}].region", ws.id, g.id))
    }),
    ("unknown network", |d| {
        let ws = ws0(d)?;
        let n = ws.nodes.first_mut()?;
        n.memberships.push(MembershipDoc {
            network: "nowhere".into(),
            address: None,
        });
        let i = n.memberships.len() - 1;
        Some(format!(
            "workspaces[{}].nodes[{}].memberships[{i}].network",
            ws.id, n.id
        ))
    }),
    ("exit role without exit", |d| {
        let ws = ws0(d)?;
        let g = ws.gateways.first_mut()?;
        g.roles.push("exit".into());
        let served = g.networks.clone();
        let id = g.id.clone();
        for n in ws.networks.iter_mut().filter(|n| served.contains(&n.id)) {
            n.exit = false;
        }
        Some(format!("workspaces[{}].gateways[{id}].roles", ws.id))
    }),
    ("manual names unknown gateway", |d| {
        let ws = ws0(d)?;
        let n = ws.networks.first_mut()?;
        n.gateways = PolicyDoc {
            policy: "manual".into(),
            manual: vec!["ghost".into()],
            redundancy: 1,
        };
        Some(format!(
            "workspaces[{}].networks[{}].gateways.manual[0]",
            ws.id, n.id
        ))
    }),
    ("listen port clash", |d| {
        let ws = ws0(d)?;
        let mut g = ws.gateways.first()?.clone();
        g.id = "clash".into();
        g.endpoint = "203.0.113.250:51821".into();
        ws.gateways.push(g);
        Some(format!("workspaces[{}].gateways[clash].listen_port", ws.id))
    }),
    ("overlay exhaustion", |d| {
        let ws = ws0(d)?;
        ws.networks.push(NetworkDoc {
            id: "tiny".into(),
            overlay: OneOrMany::One("100.127.255.252/30".into()),
            routes: vec![],
            exit: false,
            nat: true,
            gateways: PolicyDoc::default(),
            health_targets: vec![],
        });
        for n in ws.nodes.iter_mut().take(3) {
            n.memberships.push(MembershipDoc {
                network: "tiny".into(),
                address: None,
            });
        }
        (ws.nodes.len() >= 3).then(|| format!("workspaces[{}].networks[tiny].overlay", ws.id))
    }),
    ("interface name too long", |d| {
        let ws = ws0(d)?;
        let mut g = ws.gateways.first()?.clone();
        g.id = "gateway-far-too-long".into();
        g.endpoint = "203.0.113.251:51822".into();
        g.listen_port = 51822;
        ws.gateways.push(g);
        Some(format!(
            "workspaces[{}].gateways[gateway-far-too-long].id",
            ws.id
        ))
    }),
    ("retired region", |d| {
        d.regions.push(RegionDoc {
            id: "old".into(),
            display_name: None,
            state: "retired".into(),
        });
        let ws = ws0(d)?;
        ws.regions.push("old".into());
        let mut g = ws.gateways.first()?.clone();
        g.id = "in-old".into();
        g.endpoint = "203.0.113.252:51823".into();
        g.listen_port = 51823;
        g.region = "old".into();
        ws.gateways.push(g);
        Some(format!("workspaces[{}].gateways[in-old].region", ws.id))
    }),
    (
        "redundancy above the gateways that can hold a client",
        |d| {
            let ws = ws0(d)?;
            let n = ws.networks.last_mut()?;
            let id = n.id.clone();
            let holders = ws
                .gateways
                .iter()
                .filter(|g| g.networks.contains(&id) && g.roles.iter().any(|r| r == "ingress"))
                .count() as u32;
            let n = ws.networks.last_mut()?;
            n.gateways.redundancy = (holders + 1).max(2);
            Some(format!(
                "workspaces[{}].networks[{}].gateways.redundancy",
                ws.id, n.id
            ))
        },
    ),
    ("health target outside the routes", |d| {
        let ws = ws0(d)?;
        let n = ws.networks.first_mut()?;
        n.health_targets.push("192.0.2.77".into());
        let i = n.health_targets.len() - 1;
        Some(format!(
            "workspaces[{}].networks[{}].health_targets[{i}]",
            ws.id, n.id
        ))
    }),
];

/// Public keys `key(1..=n)`, derived once: X25519 is slow in debug builds and the
/// assignment tests need hundreds per case.
pub fn keys(n: usize) -> Vec<String> {
    use std::sync::Mutex;
    static CACHE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap();
    while cache.len() < n {
        let next = cache.len() as u32 + 1;
        cache.push(key(next));
    }
    cache[..n].to_vec()
}

/// One workspace, one active region, one network `net` with `policy` and
/// `redundancy`, gateways `g{salt}-{i}` (i < `gateways`, ingress + egress, each
/// with `capacity`) and active clients `c{salt}-{i}` (i < `clients`). The gateway
/// ids are short enough for interface names whatever the salt (salt < 10^6).
pub fn fleet(
    salt: u32,
    policy: &str,
    redundancy: u32,
    gateways: usize,
    clients: usize,
    capacity: Option<u32>,
) -> Document {
    let keys = keys(gateways + clients + 1);
    let mut nodes = Vec::new();
    let mut gws = Vec::new();
    for g in 0..gateways {
        let id = format!("g{salt}-{g}");
        nodes.push(NodeDoc {
            id: id.clone(),
            // Gateways take keys from the end so adding clients never renumbers them.
            public_key: keys[keys.len() - 1 - g].clone(),
            status: "active".into(),
            endpoints: vec![],
            memberships: vec![MembershipDoc {
                network: "net".into(),
                address: None,
            }],
            exit: false,
        });
        gws.push(GatewayDoc {
            id: id.clone(),
            node: id,
            region: "r0".into(),
            networks: vec!["net".into()],
            roles: vec!["ingress".into(), "egress".into()],
            endpoint: format!("203.0.113.{}:51820", g + 1),
            listen_port: 51820,
            capacity,
            drain: false,
            uplink: None,
        });
    }
    for (c, key) in keys.iter().take(clients).enumerate() {
        nodes.push(NodeDoc {
            id: format!("c{salt}-{c}"),
            public_key: key.clone(),
            status: "active".into(),
            endpoints: vec![],
            memberships: vec![MembershipDoc {
                network: "net".into(),
                address: None,
            }],
            exit: false,
        });
    }
    Document {
        version: 1,
        regions: vec![RegionDoc {
            id: "r0".into(),
            display_name: None,
            state: "active".into(),
        }],
        workspaces: vec![WorkspaceDoc {
            id: "ws".into(),
            tenant: "tenant".into(),
            regions: vec!["r0".into()],
            networks: vec![NetworkDoc {
                id: "net".into(),
                overlay: OneOrMany::One("100.64.0.0/18".into()),
                routes: vec!["10.0.0.0/24".into()],
                exit: false,
                nat: true,
                gateways: PolicyDoc {
                    policy: policy.into(),
                    manual: vec![],
                    redundancy,
                },
                health_targets: vec!["10.0.0.1".into()],
            }],
            nodes,
            gateways: gws,
        }],
        unknown_fields: Vec::new(),
    }
}

/// IPv4 prefixes every workspace of [`shared_pool_document`] draws its overlays and
/// routes from: some equal across workspaces, some nested (the /23 holds two /24s,
/// the /16 two more), so collisions between workspaces are the rule. Any greedy
/// pick of three overlays blocks at most nine of the twelve, so one is always left.
pub const SHARED_V4: [&str; 12] = [
    "100.64.0.0/24",
    "100.64.1.0/24",
    "100.64.0.0/23",
    "100.64.2.0/24",
    "100.64.3.0/24",
    "10.0.0.0/24",
    "10.0.1.0/24",
    "10.0.0.0/16",
    "10.1.0.0/24",
    "10.2.0.0/24",
    "192.168.0.0/24",
    "192.168.1.0/24",
];

/// The IPv6 counterpart of [`SHARED_V4`].
pub const SHARED_V6: [&str; 8] = [
    "fd00::/64",
    "fd00:0:0:1::/64",
    "fd00::/48",
    "fd10::/64",
    "fd10:0:0:1::/64",
    "fd20::/64",
    "fd20:0:0:1::/64",
    "fd30::/64",
];

/// Picks, in `order`, the first prefix of `pool` that overlaps none of `taken`.
fn pick(pool: &[&str], order: &[usize], taken: &mut Vec<ipnet::IpNet>) -> Option<String> {
    for &i in order {
        let net: ipnet::IpNet = pool[i].parse().unwrap();
        if taken.iter().all(|t| !t.contains(&net) && !net.contains(t)) {
            taken.push(net);
            return Some(pool[i].to_owned());
        }
    }
    None
}

/// A random valid document whose workspaces all draw their overlays and routes from
/// one small shared pool ([`SHARED_V4`], [`SHARED_V6`]), so that they reuse and nest
/// each other's prefixes often, while the prefixes of each workspace stay disjoint
/// (the rule inside a workspace). Explicit addresses and health targets follow the
/// prefixes drawn.
pub fn shared_pool_document() -> impl Strategy<Value = Document> {
    (document(), any::<u64>()).prop_map(|(mut doc, seed)| {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        for ws in &mut doc.workspaces {
            let mut order4: Vec<usize> = (0..SHARED_V4.len()).collect();
            let mut order6: Vec<usize> = (0..SHARED_V6.len()).collect();
            order4.shuffle(&mut rng);
            order6.shuffle(&mut rng);
            let mut taken = Vec::new();
            // Overlays first, so every network finds one; routes take what is left.
            let mut v4_overlays = Vec::new();
            for n in &mut ws.networks {
                let wants_v6 = n.overlay.as_slice().len() > 1;
                let v4 = pick(&SHARED_V4, &order4, &mut taken).unwrap();
                let mut overlay = vec![v4.clone()];
                if wants_v6 {
                    overlay.extend(pick(&SHARED_V6, &order6, &mut taken));
                }
                v4_overlays.push(v4);
                n.overlay = OneOrMany::Many(overlay);
            }
            for n in &mut ws.networks {
                let (v4_routes, v6_routes) = n
                    .routes
                    .iter()
                    .partition::<Vec<&String>, _>(|r| !r.contains(':'));
                let (want4, want6) = (v4_routes.len(), v6_routes.len());
                let mut routes = Vec::new();
                for _ in 0..want4 {
                    routes.extend(pick(&SHARED_V4, &order4, &mut taken));
                }
                for _ in 0..want6 {
                    routes.extend(pick(&SHARED_V6, &order6, &mut taken));
                }
                let first_v4 = routes.iter().find(|r| !r.contains(':')).cloned();
                n.health_targets = match first_v4 {
                    Some(r) if !n.health_targets.is_empty() => {
                        let net: ipnet::Ipv4Net = r.parse().unwrap();
                        vec![std::net::Ipv4Addr::from(u32::from(net.network()) + 1).to_string()]
                    }
                    _ => vec![],
                };
                n.routes = routes;
            }
            let net_index = |id: &str| id.strip_prefix("net").and_then(|i| i.parse::<usize>().ok());
            for (i, node) in ws.nodes.iter_mut().enumerate() {
                for m in &mut node.memberships {
                    if m.address.is_none() {
                        continue;
                    }
                    let n = net_index(&m.network).unwrap();
                    let net: ipnet::Ipv4Net = v4_overlays[n].parse().unwrap();
                    let host = u32::from(net.network()) + 100 + i as u32;
                    m.address = Some(OneOrMany::One(std::net::Ipv4Addr::from(host).to_string()));
                }
            }
        }
        doc
    })
}

/// Shuffles every list of `doc` (a valid document stays valid, and its topology
/// must not change).
pub fn shuffle(doc: &mut Document, seed: u64) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    doc.regions.shuffle(&mut rng);
    doc.workspaces.shuffle(&mut rng);
    for ws in &mut doc.workspaces {
        ws.networks.shuffle(&mut rng);
        ws.nodes.shuffle(&mut rng);
        ws.gateways.shuffle(&mut rng);
        for n in &mut ws.networks {
            n.routes.shuffle(&mut rng);
            n.health_targets.shuffle(&mut rng);
        }
        for n in &mut ws.nodes {
            n.memberships.shuffle(&mut rng);
        }
        for g in &mut ws.gateways {
            g.networks.shuffle(&mut rng);
            g.roles.shuffle(&mut rng);
        }
    }
}

/// Offline gateways from `offline`'s bits, and (gateway, network) pairs whose
/// forwarding path fails from `unhealthy`'s bits.
pub fn health_from(t: &Topology, offline: u64, unhealthy: u64) -> Health {
    let mut h = Health::default();
    let mut bit = 0u32;
    for ws in t.workspaces.values() {
        for (i, g) in ws.gateways.values().enumerate() {
            if offline & (1 << (i % 64)) != 0 {
                h.offline.insert(g.id.clone());
            }
            for n in &g.networks {
                if unhealthy & (1 << (bit % 64)) != 0 {
                    h.unhealthy.insert((g.id.clone(), n.clone()));
                }
                bit += 1;
            }
        }
    }
    h
}
