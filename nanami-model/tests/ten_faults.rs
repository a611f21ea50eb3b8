//! The ten-faults document (`bins/nanami/tests/fixtures/ten-faults.yaml`, also a
//! fuzz seed): ten different problems, one of them an unknown field, all reported
//! in one validation pass, each with its path. The CLI's `nanami validate` test
//! reads the same file; this is the same check without building the CLI.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use nanami_model::{Topology, TopologyError, ValidationErrors};

fn repo_file(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The ten issues, each as (path, start of its message), in the order reported.
const EXPECTED: [(&str, &str); 10] = [
    (
        "workspaces[acme].gateways[gw-a].colour",
        "unknown field `colour`; a gateway has id, node, region, networks, roles, endpoint, listen_port, capacity, drain",
    ),
    (
        "workspaces[acme].nodes[laptop-1].public_key",
        "not a valid WireGuard key",
    ),
    (
        "workspaces[acme].nodes[laptop-1].memberships[0].address",
        "10.99.0.1 is outside the overlay",
    ),
    (
        "workspaces[acme].nodes[laptop-2].public_key",
        "public key already used by workspaces[acme].nodes[gw-a]",
    ),
    (
        "workspaces[acme].nodes[laptop-2].memberships[0].network",
        "unknown network \"nowhere\"",
    ),
    (
        "workspaces[acme].gateways[gw-a].region",
        "this workspace has no access to region \"ap-south\"",
    ),
    (
        "workspaces[acme].gateways[gw-a].roles",
        "role exit, but none of its networks has `exit: true`",
    ),
    (
        "workspaces[acme].gateways[gw-a-second-port].listen_port",
        "port 51820 on node \"gw-a\" is already taken",
    ),
    (
        "workspaces[acme].gateways[gw-a-second-port].id",
        "its interface name nm-gw-a-second-port would be 19 bytes",
    ),
    (
        "workspaces[acme].networks[lab].overlay",
        "100.80.2.0/24 overlaps 100.80.0.0/22",
    ),
];

fn check(errors: &ValidationErrors) {
    let got: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
    assert_eq!(errors.0.len(), 10, "{errors}");
    for (issue, (path, message)) in errors.0.iter().zip(EXPECTED) {
        assert_eq!(issue.path, path, "{got:#?}");
        assert!(
            issue.message.starts_with(message),
            "{path}: {:?} does not start with {message:?}",
            issue.message
        );
    }
    assert!(errors
        .to_string()
        .starts_with("10 problems in the topology"));
}

#[test]
fn the_cli_fixture_yields_all_ten_issues_unknown_field_included() {
    let text = repo_file("bins/nanami/tests/fixtures/ten-faults.yaml");
    match Topology::from_yaml(&text) {
        Err(TopologyError::Invalid(errors)) => check(&errors),
        other => panic!("expected the ten issues, got {other:?}"),
    }
}

#[test]
fn the_json_fuzz_seed_yields_the_same_ten_issues() {
    let text = repo_file("fuzz/seeds/topology_json/ten-faults.json");
    match Topology::from_json(&text) {
        Err(TopologyError::Invalid(errors)) => check(&errors),
        other => panic!("expected the ten issues, got {other:?}"),
    }
    assert_eq!(
        repo_file("fuzz/seeds/topology_yaml/ten-faults.yaml"),
        repo_file("bins/nanami/tests/fixtures/ten-faults.yaml"),
        "the YAML fuzz seed is a copy of the CLI fixture"
    );
}
