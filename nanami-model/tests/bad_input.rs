//! The bad-input catalogue: documents a control plane (or an attacker holding its
//! API) might send, each refused with a clear error naming the offending path.
//!
//! The model is pure, so "nothing changed" means: no `Topology` comes out at all
//! (there is no partially valid value a caller could apply), the error lists the
//! problem with its path, and the same input is refused the same way as YAML and as
//! JSON. Keeping the last good state while a bad document is refused is the
//! manager's and daemon's job, tested there.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use nanami_model::doc::{Document, MAX_DOCUMENT_BYTES};
use nanami_model::validate::MAX_NAME_LEN;
use nanami_model::{
    compile_all, Health, ParseError, PublicKey, Topology, TopologyError, ValidationErrors,
};

const K_GW: &str = "8X4C2QwIBaOpONJxT0R3eWUCPX5oEfyQOroEBMH2I04=";
const K_1: &str = "5Ys1CGaa1T+Cu94tmuUPAJfS5ZIv81YnM3I7wvaPNxQ=";
const K_3: &str = "aXhV5SamJBiCkRXJd34aHjeoYzcxPyQ6kmNfaoYU1ls=";
const K_GX: &str = "taw8SJQn4e4sQCcGZP2YtoaCgmPGKtaE4LlXcGzY5Ug=";

/// A small valid document: one workspace, one gateway, two clients.
const BASE: &str = r#"
version: 1
regions:
  - { id: eu, state: active }
workspaces:
  - id: acme
    tenant: acme-corp
    regions: [eu]
    networks:
      - id: corp
        overlay: 100.80.0.0/22
        routes: [10.20.0.0/16]
    nodes:
      - id: gw-a
        public_key: "8X4C2QwIBaOpONJxT0R3eWUCPX5oEfyQOroEBMH2I04="
        status: active
        memberships: [{ network: corp, address: 100.80.0.1 }]
      - id: laptop-1
        public_key: "5Ys1CGaa1T+Cu94tmuUPAJfS5ZIv81YnM3I7wvaPNxQ="
        status: active
        memberships: [{ network: corp, address: 100.80.0.10 }]
      - id: laptop-2
        public_key: "0f9iE4KjyCGVSj+comoVDFBsdl5b1eq/4kXMiJ1oKiU="
        status: active
        memberships: [{ network: corp }]
    gateways:
      - id: gw-a
        node: gw-a
        region: eu
        networks: [corp]
        roles: [ingress, egress]
        endpoint: "203.0.113.10:51820"
        listen_port: 51820
"#;

fn base() -> Document {
    Document::from_yaml(BASE).unwrap()
}

/// A second workspace, valid on its own, to add to [`base`].
fn globex(overlay: &str, route: &str) -> nanami_model::doc::WorkspaceDoc {
    let text = format!(
        r#"
version: 1
regions: [{{ id: eu, state: active }}]
workspaces:
  - id: globex
    tenant: globex-inc
    regions: [eu]
    networks: [{{ id: prod, overlay: "{overlay}", routes: ["{route}"] }}]
    nodes:
      - {{ id: gx-gw-1, public_key: "{K_GX}", status: active, memberships: [{{ network: prod }}] }}
    gateways:
      - {{ id: gx-gw-1, node: gx-gw-1, region: eu, networks: [prod], roles: [ingress], endpoint: "203.0.113.30:51820", listen_port: 51820 }}
"#
    );
    let mut doc = Document::from_yaml(&text).unwrap();
    doc.workspaces.remove(0)
}

/// Validates `doc` expecting a refusal; checks YAML and JSON agree, and that the
/// refusal is stable (pure: refusing twice gives the same issues).
fn rejected(doc: &Document) -> ValidationErrors {
    let errs = Topology::from_document(doc).expect_err("the document should be refused");
    assert!(!errs.0.is_empty());
    let json = doc.to_json().unwrap();
    let again = Topology::from_json(&json).expect_err("refused as JSON too");
    assert_eq!(again, TopologyError::Invalid(errs.clone()), "{json}");
    let yaml = doc.to_yaml().unwrap();
    match Topology::from_yaml(&yaml) {
        Err(TopologyError::Invalid(again)) => assert_eq!(again, errs, "{yaml}"),
        // `to_yaml` writes control characters raw, which YAML then refuses to read:
        // still refused, one step earlier.
        Err(TopologyError::Parse(ParseError::Yaml(e))) => {
            assert!(e.contains("control characters"), "{e}")
        }
        other => panic!("{yaml}\nnot refused the same way: {other:?}"),
    }
    assert_eq!(Topology::from_document(doc).unwrap_err(), errs);
    errs
}

/// Asserts one issue sits at `path` with a message containing `needle`.
#[track_caller]
fn has_issue(errs: &ValidationErrors, path: &str, needle: &str) {
    assert!(
        errs.0
            .iter()
            .any(|i| i.path == path && i.message.contains(needle)),
        "no issue at {path} containing {needle:?} in:\n{errs}"
    );
}

#[test]
fn the_base_document_is_valid() {
    let t = Topology::from_document(&base()).unwrap();
    assert_eq!(compile_all(&t, &Health::all_up()).len(), 1);
}

// ---- keys ----

#[test]
fn keys_of_the_wrong_length_are_refused() {
    for (key, len) in [
        ("AAAA", 3),
        ("5Ys1CGaa1T+Cu94tmuUPAJfS5ZIv81YnM3I7wvaPNw==", 31),
        ("5Ys1CGaa1T+Cu94tmuUPAJfS5ZIv81YnM3I7wvaPNxQA", 33),
        ("", 0),
    ] {
        let mut doc = base();
        doc.workspaces[0].nodes[1].public_key = key.into();
        let errs = rejected(&doc);
        let path = "workspaces[acme].nodes[laptop-1].public_key";
        if key.is_empty() {
            has_issue(&errs, path, "not a valid WireGuard key");
        } else {
            has_issue(&errs, path, &format!("decodes to {len} bytes"));
        }
    }
}

#[test]
fn keys_that_are_not_base64_are_refused() {
    for key in [
        "not a key at all",
        // URL-safe alphabet and missing padding are not wg(8)'s base64.
        "5Ys1CGaa1T-Cu94tmuUPAJfS5ZIv81YnM3I7wvaPNxQ=",
        "5Ys1CGaa1T+Cu94tmuUPAJfS5ZIv81YnM3I7wvaPNxQ",
        // Hex is the UAPI form, not the document's.
        "e5862d0869a6d53f82bbde2d9ae50f0097d2e5922ff356273373b23bc2f68f71",
        "5Ys1CGaa1T+Cu94tmuUPAJfS5ZIv81YnM3I7wvaP NxQ=",
    ] {
        let mut doc = base();
        doc.workspaces[0].nodes[1].public_key = key.into();
        let errs = rejected(&doc);
        has_issue(
            &errs,
            "workspaces[acme].nodes[laptop-1].public_key",
            "not a valid WireGuard key",
        );
    }
}

/// Every small-order point of Curve25519 (libsodium's list), with and without the
/// ignored top bit: a peer with one of them could be impersonated by anyone.
#[test]
fn low_order_curve25519_points_are_refused() {
    let mut points: Vec<[u8; 32]> = vec![[0; 32]];
    let mut one = [0u8; 32];
    one[0] = 1;
    points.push(one);
    let hex = [
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];
    for h in hex {
        let mut p = [0u8; 32];
        for (i, b) in p.iter_mut().enumerate() {
            *b = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap();
        }
        points.push(p);
    }
    let with_top_bit: Vec<[u8; 32]> = points
        .iter()
        .map(|p| {
            let mut q = *p;
            q[31] |= 0x80;
            q
        })
        .collect();
    points.extend(with_top_bit);
    use base64::Engine as _;
    for p in points {
        assert!(PublicKey::from_bytes(p).is_err(), "{p:?} accepted");
        let mut doc = base();
        doc.workspaces[0].nodes[1].public_key = base64::engine::general_purpose::STANDARD.encode(p);
        let errs = rejected(&doc);
        has_issue(
            &errs,
            "workspaces[acme].nodes[laptop-1].public_key",
            "low-order",
        );
    }
}

#[test]
fn a_key_used_by_two_nodes_is_refused() {
    let mut doc = base();
    doc.workspaces[0].nodes[2].public_key = K_1.into();
    let errs = rejected(&doc);
    has_issue(
        &errs,
        "workspaces[acme].nodes[laptop-2].public_key",
        "already used by",
    );
}

#[test]
fn a_key_shared_across_workspaces_is_refused() {
    let mut doc = base();
    let mut gx = globex("100.90.0.0/24", "172.20.0.0/16");
    gx.nodes[0].public_key = K_1.into();
    doc.workspaces.push(gx);
    let errs = rejected(&doc);
    assert!(
        errs.0.iter().any(|i| i.message.contains("already used by")),
        "{errs}"
    );
}

// ---- AllowedIPs ----

/// AllowedIPs on a gateway are derived from member addresses; a document can only
/// try to give two peers the same AllowedIPs by giving them the same address.
#[test]
fn two_peers_with_the_same_address_are_refused() {
    let mut doc = base();
    doc.workspaces[0].nodes[2].memberships[0].address =
        Some(nanami_model::doc::OneOrMany::One("100.80.0.10".into()));
    let errs = rejected(&doc);
    has_issue(
        &errs,
        "workspaces[acme].nodes[laptop-2].memberships[0].address",
        "already taken by",
    );
}

#[test]
fn a_peer_with_the_gateways_address_is_refused() {
    let mut doc = base();
    doc.workspaces[0].nodes[1].memberships[0].address =
        Some(nanami_model::doc::OneOrMany::One("100.80.0.1".into()));
    let errs = rejected(&doc);
    has_issue(
        &errs,
        "workspaces[acme].nodes[laptop-1].memberships[0].address",
        "already taken by",
    );
}

/// The positive side: in every compiled gateway, no two peers' AllowedIPs overlap
/// (the example topology, with allocation and two networks).
#[test]
fn compiled_allowed_ips_never_overlap_across_peers() {
    let t = Topology::from_yaml(include_str!("../../examples/topology.yaml")).unwrap();
    for (gw, state) in compile_all(&t, &Health::all_up()) {
        for iface in state.interfaces.values() {
            let all: Vec<_> = iface
                .peers
                .values()
                .flat_map(|p| p.allowed_ips.iter().map(move |n| (p, n)))
                .collect();
            for (i, (p, a)) in all.iter().enumerate() {
                for (q, b) in &all[i + 1..] {
                    if !std::ptr::eq(*p, *q) {
                        assert!(
                            !a.contains(*b) && !b.contains(*a),
                            "{gw}: {a} and {b} overlap across peers"
                        );
                    }
                }
            }
        }
    }
}

// ---- prefixes ----

#[test]
fn overlapping_networks_in_one_workspace_are_refused() {
    let mut doc = base();
    let mut lab = doc.workspaces[0].networks[0].clone();
    lab.id = "lab".into();
    lab.overlay = nanami_model::doc::OneOrMany::One("100.80.1.0/24".into());
    lab.routes = vec![];
    doc.workspaces[0].networks.push(lab);
    let errs = rejected(&doc);
    assert!(
        errs.0.iter().any(|i| i.message.contains("overlaps")),
        "{errs}"
    );
}

#[test]
fn overlays_in_the_kernels_own_space_are_refused() {
    // A link-local, loopback or multicast overlay: the kernel puts its own addresses
    // there, and the platform could not tell Nanami's from them.
    for overlay in [
        "fe80::/64",
        "169.254.0.0/16",
        "127.0.0.0/24",
        "169.0.0.0/8",
        "ff02::/64",
    ] {
        let mut doc = base();
        doc.workspaces[0].networks[0].overlay = nanami_model::doc::OneOrMany::One(overlay.into());
        let errs = rejected(&doc);
        has_issue(
            &errs,
            "workspaces[acme].networks[corp].overlay",
            "belong to the kernel",
        );
    }
}

/// Workspaces are tenants and choose their private ranges: another workspace may
/// use the same overlay and routes, or prefixes inside ours. Isolation is
/// structural (each gateway's state comes from its own workspace only), not by
/// disjoint addresses.
#[test]
fn another_workspace_may_reuse_our_overlay_and_routes() {
    for (overlay, route) in [
        // The very same prefixes as acme's corp.
        ("100.80.0.0/22", "10.20.0.0/16"),
        // Inside acme's overlay, and a route inside acme's route.
        ("100.80.2.0/24", "10.20.5.0/24"),
        // Enclosing them.
        ("100.64.0.0/10", "10.0.0.0/8"),
    ] {
        let mut doc = base();
        doc.workspaces.push(globex(overlay, route));
        let t = Topology::from_document(&doc)
            .unwrap_or_else(|e| panic!("{overlay} / {route} must be accepted: {e}"));
        let states = compile_all(&t, &Health::all_up());
        let acme_keys: BTreeSet<PublicKey> =
            [K_GW, K_1, "0f9iE4KjyCGVSj+comoVDFBsdl5b1eq/4kXMiJ1oKiU="]
                .iter()
                .map(|k| k.parse().unwrap())
                .collect();
        let gx_key: PublicKey = K_GX.parse().unwrap();
        let acme = &states[&nanami_model::GatewayId::new("gw-a").unwrap()];
        let peers: BTreeSet<PublicKey> = acme
            .interfaces
            .values()
            .flat_map(|i| i.peers.keys().copied())
            .collect();
        assert!(
            !peers.is_empty() && peers.is_subset(&acme_keys),
            "{peers:?}"
        );
        assert!(!peers.contains(&gx_key));
        let globex = &states[&nanami_model::GatewayId::new("gx-gw-1").unwrap()];
        assert!(globex
            .interfaces
            .values()
            .all(|i| i.peers.keys().all(|k| !acme_keys.contains(k))));
    }
}

/// Inside one workspace the overlap rules stay, even when another workspace uses
/// the same prefixes legitimately: only the workspace's own prefixes are compared.
#[test]
fn overlaps_inside_a_workspace_are_still_refused_next_to_a_reusing_one() {
    let mut doc = base();
    doc.workspaces.push(globex("100.80.0.0/22", "10.20.0.0/16"));
    doc.workspaces[1].networks[0]
        .routes
        .push("100.80.1.0/24".into());
    let errs = rejected(&doc);
    assert_eq!(errs.0.len(), 1, "{errs}");
    has_issue(
        &errs,
        "workspaces[globex].networks[prod].routes[1]",
        "100.80.1.0/24 overlaps 100.80.0.0/22 at workspaces[globex].networks[prod].overlay",
    );
    assert!(!errs.to_string().contains("acme"), "{errs}");
}

#[test]
fn a_default_route_is_refused() {
    for route in ["0.0.0.0/0", "::/0"] {
        let mut doc = base();
        doc.workspaces[0].networks[0].routes.push(route.into());
        let errs = rejected(&doc);
        has_issue(
            &errs,
            "workspaces[acme].networks[corp].routes[1]",
            "would swallow every destination",
        );
    }
}

/// Two halves of the default route, the classic way around a `/0` check, still
/// swallow the overlay.
#[test]
fn a_split_default_route_that_swallows_the_overlay_is_refused() {
    let mut doc = base();
    doc.workspaces[0].networks[0].routes = vec!["0.0.0.0/1".into(), "128.0.0.0/1".into()];
    let errs = rejected(&doc);
    assert!(
        errs.0.iter().any(|i| i.message.contains("overlaps")),
        "{errs}"
    );
}

#[test]
fn a_route_covering_the_overlay_is_refused() {
    let mut doc = base();
    doc.workspaces[0].networks[0].routes = vec!["100.64.0.0/10".into()];
    let errs = rejected(&doc);
    assert!(
        errs.0.iter().any(|i| i.message.contains("overlaps")),
        "{errs}"
    );
}

#[test]
fn one_bad_prefix_among_good_ones_refuses_the_whole_document() {
    for bad in [
        "10.22.0.0/33",
        "10.22.0.1/16",
        "10.22.0.0",
        "ten.0.0.0/8",
        "10.22.0.0/16 ",
    ] {
        let mut doc = base();
        doc.workspaces[0].networks[0].routes = vec![
            "10.20.0.0/16".into(),
            "10.21.0.0/16".into(),
            bad.into(),
            "10.23.0.0/16".into(),
        ];
        let errs = rejected(&doc);
        assert_eq!(errs.0.len(), 1, "{bad}: {errs}");
        assert_eq!(errs.0[0].path, "workspaces[acme].networks[corp].routes[2]");
    }
}

#[test]
fn a_prefix_with_host_bits_names_the_fix() {
    let mut doc = base();
    doc.workspaces[0].networks[0].routes = vec!["10.20.0.1/16".into()];
    let errs = rejected(&doc);
    has_issue(
        &errs,
        "workspaces[acme].networks[corp].routes[0]",
        "did you mean 10.20.0.0/16?",
    );
}

// ---- size and depth ----

#[test]
fn a_document_over_the_size_limit_is_refused_before_parsing() {
    // Valid YAML (a comment) padded past the limit: refused by size, not by syntax.
    let mut text = String::from(BASE);
    text.push('#');
    text.push_str(&"x".repeat(MAX_DOCUMENT_BYTES + 1 - text.len()));
    assert_eq!(text.len(), MAX_DOCUMENT_BYTES + 1);
    for r in [Topology::from_yaml(&text), Topology::from_json(&text)] {
        assert_eq!(
            r.unwrap_err(),
            TopologyError::Parse(ParseError::TooLarge {
                size: MAX_DOCUMENT_BYTES + 1,
                limit: MAX_DOCUMENT_BYTES,
            })
        );
    }
}

/// The model's limit is 32 MiB; a 10 MB body must be refused earlier, by the
/// manager's HTTP body limit. Here: a 10 MB document of junk is a parse error,
/// quickly, not an allocation of its own size per element.
#[test]
fn a_ten_megabyte_junk_document_is_a_parse_error() {
    let junk = "a".repeat(10_000_000);
    assert!(matches!(
        Topology::from_yaml(&junk),
        Err(TopologyError::Parse(ParseError::Yaml(_)))
    ));
    let list = format!("[{}1]", "1,".repeat(5_000_000));
    assert!(matches!(
        Topology::from_json(&list),
        Err(TopologyError::Parse(ParseError::Json(_)))
    ));
}

/// Runs `f` on a thread with a small stack, so unbounded recursion would overflow
/// it (and abort the test binary) rather than pass by luck on a big main stack.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deeply_nested_json_is_a_clean_error() {
    let depth = 100_000;
    let cases = [
        "[".repeat(depth),
        format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)),
        format!(
            "{{\"version\":1,\"regions\":{}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        ),
    ];
    for text in cases {
        let r = on_small_stack(move || Topology::from_json(&text));
        assert!(
            matches!(r, Err(TopologyError::Parse(ParseError::Json(_)))),
            "{r:?}"
        );
    }
}

/// Depth 2,000 is far past serde_yaml_ng's recursion limit (128). Deeper flow
/// nesting is refused too, but in time quadratic in the depth: see
/// `yaml_flow_nesting_is_refused_in_linear_time`.
#[test]
fn deeply_nested_yaml_is_a_clean_error() {
    let depth = 2_000;
    let indented: String = (0..2_000)
        .map(|i| format!("{}a:\n", " ".repeat(i)))
        .collect();
    let cases = [
        "[".repeat(depth),
        format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        format!("{}1{}", "{a: ".repeat(depth), "}".repeat(depth)),
        format!(
            "version: 1\nregions: {}{}",
            "[".repeat(depth),
            "]".repeat(depth)
        ),
        "- ".repeat(depth),
        indented,
    ];
    for text in cases {
        let r = on_small_stack(move || Topology::from_yaml(&text));
        assert!(
            matches!(
                r,
                Err(TopologyError::Parse(
                    ParseError::Yaml(_) | ParseError::TooDeep { .. }
                ))
            ),
            "{r:?}"
        );
    }
}

/// Found by this catalogue: libyaml's scanner (unsafe-libyaml, under serde_yaml_ng)
/// does work proportional to the flow depth for every token, so `[` repeated n
/// times cost O(n²): 100,000 levels took minutes (upstream: acatton/serde-yaml-ng#16,
/// open). `Document::from_yaml` now refuses nesting past `MAX_YAML_NESTING` in a
/// linear pre-scan, before the parser sees the text.
#[test]
fn yaml_flow_nesting_is_refused_in_linear_time() {
    let depth = 100_000;
    let cases = [
        "[".repeat(depth),
        format!("{}{}", "{\"\":[".repeat(depth / 2), "]}".repeat(depth / 2)),
    ];
    for text in cases {
        let start = std::time::Instant::now();
        let r = Topology::from_yaml(&text);
        assert!(matches!(r, Err(TopologyError::Parse(_))), "{r:?}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{} bytes of nesting took {:?}",
            text.len(),
            start.elapsed()
        );
    }
}

/// #23: a quote inside a plain scalar (`k: 5"`, `k: -'`) is text, but the old
/// pre-scan took it for an opening quote and skipped to the end of the text, so
/// libyaml met 100,000 nested brackets after all (minutes of CPU). The scan now
/// tokenizes as libyaml does. Measured in the test profile (opt-level 1, on a
/// shared 2-core machine): the refusals take 2-30 µs (the scan stops at the 65th
/// bracket), the same-line cases about 1.7 ms (libyaml reads one long plain
/// scalar); the bound is 1 s.
#[test]
fn quotes_in_plain_scalars_do_not_hide_deep_nesting() {
    let depth = 100_000;
    let brackets = "[".repeat(depth);
    for prefix in [
        "k: 5\"\n",
        "k: -'\n",
        "version: 1\nk: 5\"\n",
        "k: -'\n  x\"\n",
    ] {
        let text = format!("{prefix}{brackets}");
        let start = std::time::Instant::now();
        let r = Topology::from_yaml(&text);
        let took = start.elapsed();
        assert!(
            matches!(
                r,
                Err(TopologyError::Parse(ParseError::TooDeep { limit: 64, .. }))
            ),
            "{prefix:?}: {r:?}"
        );
        assert!(
            took < std::time::Duration::from_secs(1),
            "{prefix:?} + {depth} brackets took {took:?}"
        );
    }
    // On the same line the brackets are part of the plain scalar (`5"[[[…`): no
    // nesting at all, and an ordinary parse error, as fast.
    for prefix in ["k: 5\"", "k: -'"] {
        let text = format!("{prefix}{brackets}");
        let start = std::time::Instant::now();
        let r = Topology::from_yaml(&text);
        assert!(matches!(r, Err(TopologyError::Parse(_))), "{r:?}");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }
}

/// Quoted text may hold any brackets: only nesting counts.
#[test]
fn brackets_inside_quoted_names_are_not_nesting() {
    let mut doc = base();
    doc.workspaces[0].tenant = format!("acme {}", "[{".repeat(100));
    let yaml = doc.to_yaml().unwrap();
    assert!(Topology::from_yaml(&yaml).is_ok(), "{yaml}");
}

/// "Billion laughs": aliases that expand exponentially must be refused, not
/// expanded.
#[test]
fn yaml_alias_bombs_are_refused() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let start = std::time::Instant::now();
    let r = Topology::from_yaml(&text);
    assert!(matches!(r, Err(TopologyError::Parse(_))), "{r:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

// ---- names and ids ----

#[test]
fn unicode_display_names_are_accepted() {
    let mut doc = base();
    doc.regions[0].display_name = Some("Zürich · 東京 · Ελλάδα 🌍".into());
    doc.workspaces[0].tenant = "Acme Ünïcödé GmbH".into();
    Topology::from_document(&doc).unwrap();
}

#[test]
fn control_characters_in_names_are_refused() {
    for name in ["acme\0corp", "acme\ncorp", "acme\u{1b}[31mcorp", "\u{7f}"] {
        let mut doc = base();
        doc.workspaces[0].tenant = name.into();
        let errs = rejected(&doc);
        has_issue(
            &errs,
            "workspaces[acme].tenant",
            "must not contain control characters",
        );
    }
}

#[test]
fn over_long_names_are_refused() {
    let mut doc = base();
    // Multi-byte characters: the limit is in bytes.
    doc.workspaces[0].tenant = "é".repeat(MAX_NAME_LEN / 2 + 1);
    let errs = rejected(&doc);
    has_issue(
        &errs,
        "workspaces[acme].tenant",
        &format!("the limit is {MAX_NAME_LEN}"),
    );
}

#[test]
fn unicode_and_over_long_ids_are_refused() {
    for (id, needle) in [
        ("läptop", "may hold only"),
        ("LAPTOP", "may hold only"),
        ("laptop\u{200b}1", "may hold only"),
        ("-laptop", "may hold only"),
        ("", "must not be empty"),
    ] {
        let mut doc = base();
        doc.workspaces[0].nodes[1].id = id.into();
        let errs = rejected(&doc);
        assert!(
            errs.0
                .iter()
                .any(|i| i.path.ends_with(".id") && i.message.contains(needle)),
            "{id:?}: {errs}"
        );
    }
    let mut doc = base();
    doc.workspaces[0].nodes[1].id = "a".repeat(64);
    let errs = rejected(&doc);
    assert!(
        errs.0.iter().any(|i| i.message.contains("the limit is 63")),
        "{errs}"
    );
}

#[test]
fn a_gateway_id_too_long_for_an_interface_name_is_refused() {
    let mut doc = base();
    doc.workspaces[0].gateways[0].id = "gateway-abcde".into(); // 13 bytes: nm- + 13 > 15
    let errs = rejected(&doc);
    assert!(
        errs.0
            .iter()
            .any(|i| i.message.contains("over Linux's limit")),
        "{errs}"
    );
}

/// Ids name interfaces, UAPI sockets (`/var/run/wireguard/nm-<id>.sock`) and
/// files in the services: none may carry a path.
#[test]
fn ids_that_try_path_traversal_are_refused() {
    for id in [
        "..",
        "../etc",
        "../../etc/passwd",
        "a/b",
        "gw/../../x",
        "%2e%2e",
        ".hidden",
        "a\\b",
    ] {
        let mut doc = base();
        doc.workspaces[0].gateways[0].id = id.into();
        let errs = rejected(&doc);
        has_issue(&errs, "workspaces[acme].gateways[#0].id", "may hold only");

        let mut doc = base();
        doc.workspaces[0].nodes[1].id = id.into();
        let errs = rejected(&doc);
        has_issue(&errs, "workspaces[acme].nodes[#1].id", "may hold only");

        let mut doc = base();
        doc.workspaces[0].id = id.into();
        let errs = rejected(&doc);
        has_issue(&errs, "workspaces[#0].id", "may hold only");

        // As a reference, too.
        let mut doc = base();
        doc.workspaces[0].nodes[1].memberships[0].network = id.into();
        let errs = rejected(&doc);
        assert!(
            errs.0.iter().any(|i| i.path.ends_with(".network")),
            "{id:?}: {errs}"
        );
    }
}

// ---- duplicates ----

#[test]
fn duplicate_ids_are_refused() {
    let mut doc = base();
    doc.workspaces[0].nodes[2].id = "laptop-1".into();
    has_issue(
        &rejected(&doc),
        "workspaces[acme].nodes[laptop-1].id",
        "duplicate node id",
    );

    let mut doc = base();
    let g = doc.workspaces[0].gateways[0].clone();
    doc.workspaces[0].gateways.push(g);
    assert!(rejected(&doc)
        .0
        .iter()
        .any(|i| i.message.contains("duplicate gateway id")));

    let mut doc = base();
    let n = doc.workspaces[0].networks[0].clone();
    doc.workspaces[0].networks.push(n);
    assert!(rejected(&doc)
        .0
        .iter()
        .any(|i| i.message.contains("duplicate network id")));

    let mut doc = base();
    let r = doc.regions[0].clone();
    doc.regions.push(r);
    assert!(rejected(&doc)
        .0
        .iter()
        .any(|i| i.message.contains("duplicate region id")));

    let mut doc = base();
    let mut gx = globex("100.90.0.0/24", "172.20.0.0/16");
    gx.id = "acme".into();
    doc.workspaces.push(gx);
    assert!(rejected(&doc)
        .0
        .iter()
        .any(|i| i.message.contains("duplicate workspace id")));
}

/// Node ids are unique in the whole document, not only in a workspace.
#[test]
fn a_node_id_reused_by_another_workspace_is_refused() {
    let mut doc = base();
    let mut gx = globex("100.90.0.0/24", "172.20.0.0/16");
    let extra = nanami_model::doc::NodeDoc {
        id: "laptop-1".into(),
        public_key: K_3.into(),
        ..gx.nodes[0].clone()
    };
    gx.nodes.push(extra);
    doc.workspaces.push(gx);
    assert!(rejected(&doc)
        .0
        .iter()
        .any(|i| i.message.contains("duplicate node id")));
}

/// A key written twice in one mapping is an error, not "the last one wins": a
/// reviewer reading the first `public_key` must see the one that is used.
#[test]
fn duplicate_keys_in_a_mapping_are_refused() {
    let yaml = BASE.replacen(
        &format!("public_key: \"{K_1}\"\n"),
        &format!("public_key: \"{K_1}\"\n        public_key: \"{K_GW}\"\n"),
        1,
    );
    assert_ne!(yaml, BASE);
    assert!(matches!(
        Topology::from_yaml(&yaml),
        Err(TopologyError::Parse(ParseError::Yaml(_)))
    ));
    let json = r#"{"version": 1, "version": 1, "regions": [], "workspaces": []}"#;
    assert!(matches!(
        Topology::from_json(json),
        Err(TopologyError::Parse(ParseError::Json(_)))
    ));
}

/// An unknown field is a validation issue at its path, reported with every other
/// problem instead of hiding them behind a parse error.
#[test]
fn unknown_fields_are_refused_with_their_paths_next_to_other_problems() {
    let yaml = BASE
        .replacen("status: active", "status: active\n        admin: true", 1)
        .replacen(
            "roles: [ingress, egress]",
            "roles: [ingress, egress]\n        colour: blue",
            1,
        )
        .replacen("version: 1", "version: 1\nextra: { nested: [1, 2] }", 1)
        .replacen(
            "overlay: 100.80.0.0/22",
            "overlay: 100.80.0.0/22\n        gateways: { policy: auto, weight: 3 }",
            1,
        )
        .replacen(
            "{ network: corp, address: 100.80.0.10 }",
            "{ network: corp, address: 100.80.0.10, primary: yes }",
            1,
        )
        .replacen(
            "- { id: eu, state: active }",
            "- { id: eu, state: active, \"bad\\nkey]\": 1 }",
            1,
        )
        // And one problem of another kind.
        .replacen("10.20.0.0/16", "10.20.0.1/16", 1);
    let Err(TopologyError::Invalid(errs)) = Topology::from_yaml(&yaml) else {
        panic!("{yaml}\nnot refused by validation");
    };
    let issues: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
    let expected = [
        "extra: unknown field `extra`; the document has version, regions, workspaces",
        "regions[eu].\"bad\\nkey]\": unknown field `\"bad\\nkey]\"`; a region has id, display_name, state",
        "workspaces[acme].networks[corp].gateways.weight: unknown field `weight`; a network's `gateways` has policy, manual, redundancy",
        "workspaces[acme].nodes[gw-a].admin: unknown field `admin`; a node has",
        "workspaces[acme].nodes[laptop-1].memberships[0].primary: unknown field `primary`; a membership has network, address",
        "workspaces[acme].gateways[gw-a].colour: unknown field `colour`; a gateway has",
        "workspaces[acme].networks[corp].routes[0]: 10.20.0.1/16 has host bits set",
    ];
    assert_eq!(issues.len(), expected.len(), "{errs}");
    for want in expected {
        assert!(
            issues.iter().any(|i| i.starts_with(want)),
            "missing {want:?} in {issues:#?}"
        );
    }
    // No issue text carries the raw newline of the hostile key.
    assert!(issues.iter().all(|i| !i.contains('\n')), "{issues:#?}");

    // The same as JSON.
    let json = r#"{"version": 1, "regions": [], "workspaces": [], "surprise": {"x": [1]}}"#;
    let Err(TopologyError::Invalid(errs)) = Topology::from_json(json) else {
        panic!("not refused by validation");
    };
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].path, "surprise");
    assert!(errs.0[0].message.starts_with("unknown field `surprise`"));
}

/// Unknown fields are recorded on the document, in reading order, with their
/// positions; nothing else about the document changes.
#[test]
fn the_document_records_its_unknown_fields() {
    use nanami_model::doc::PathPart::{Field, Index};
    let yaml = BASE.replacen(
        "roles: [ingress, egress]",
        "roles: [ingress, egress]\n        colour: blue",
        1,
    );
    let doc = Document::from_yaml(&yaml).unwrap();
    assert_eq!(doc.unknown_fields.len(), 1);
    assert_eq!(
        doc.unknown_fields[0].path,
        [
            Field("workspaces".into()),
            Index(0),
            Field("gateways".into()),
            Index(0),
            Field("colour".into()),
        ]
    );
    assert_eq!(doc.unknown_fields[0].name(), "colour");
    assert_eq!(
        Document {
            unknown_fields: vec![],
            ..doc
        },
        base()
    );
    // Trailing text after a JSON document is still a parse error.
    assert!(matches!(
        Document::from_json(r#"{"version": 1, "regions": [], "workspaces": []} x"#),
        Err(ParseError::Json(_))
    ));
}

/// Problems are reported all at once, so a control plane can fix them in one go,
/// and a document with many is as refused as one with one.
#[test]
fn every_problem_is_reported_at_once() {
    let mut doc = base();
    doc.workspaces[0].nodes[1].public_key = "AAAA".into();
    doc.workspaces[0].nodes[2].id = "../x".into();
    doc.workspaces[0].networks[0]
        .routes
        .push("0.0.0.0/0".into());
    let errs = rejected(&doc);
    let paths: BTreeSet<&str> = errs.0.iter().map(|i| i.path.as_str()).collect();
    assert!(paths.len() >= 3, "{errs}");
}
