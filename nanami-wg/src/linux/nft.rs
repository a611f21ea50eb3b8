//! The `inet nanami` nftables table: rendered from a [`FilterSet`] as one script,
//! applied in one atomic transaction, and read back into a [`FilterSet`].
//!
//! Why the `nft` program and not netlink from Rust: `nft -f` is the kernel
//! maintainers' own parser and batches the whole script (delete the old table,
//! create the new) into a single netlink transaction, which is exactly the
//! atomicity Nanami needs; the rendered script is plain text, so golden tests pin it
//! without root. The filter changes only when the topology does, so one process
//! spawn per change costs nothing that matters. Reading back uses `nft -j` (JSON).
//!
//! Every rule carries a comment that encodes it (`nanami accept nm-gw-a 100.80.0.0/22
//! 10.20.0.0/16`), so reading back needs no expression decompiler; a table whose
//! chains or guard rules are missing or reordered reads back as absent, so it is
//! replaced whole.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::Stdio;

use ipnet::IpNet;
use nanami_model::state::{NFT_TABLE, PRIVATE_RANGES};
use nanami_model::{Destination, FilterRule, FilterSet, InterfaceName, NatRule};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::PlatformError;
use crate::netns::Netns;

/// Largest `nft -j` output read back; a table of a gateway with thousands of rules is
/// well under it.
const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;

const ESTABLISHED: &str = "nanami established";
const DROP: &str = "nanami drop";

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ip6",
    }
}

fn private_set(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "@private4",
        IpNet::V6(_) => "@private6",
    }
}

fn dest_match(source: &IpNet, destination: &Destination) -> String {
    match destination {
        Destination::Prefix(p) => format!("{} daddr {p}", family(p)),
        Destination::Internet => format!("{} daddr != {}", family(source), private_set(source)),
    }
}

fn dest_word(destination: &Destination) -> String {
    match destination {
        Destination::Prefix(p) => p.to_string(),
        Destination::Internet => "internet".to_owned(),
    }
}

fn accept_comment(r: &FilterRule) -> String {
    format!(
        "nanami accept {} {} {}",
        r.interface,
        r.source,
        dest_word(&r.destination)
    )
}

fn masquerade_comment(r: &NatRule) -> String {
    format!(
        "nanami masquerade {} {}",
        r.source,
        dest_word(&r.destination)
    )
}

/// The table definition for `filter`.
pub fn render(filter: &FilterSet) -> String {
    let (v4, v6): (Vec<&str>, Vec<&str>) = PRIVATE_RANGES.iter().partition(|r| !r.contains(':'));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "table inet {NFT_TABLE} {{");
    out.push_str("\tcomment \"managed by nanami: changes are reverted\"\n");
    let _ = writeln!(
        out,
        "\tset private4 {{ type ipv4_addr; flags interval; elements = {{ {} }}; }}",
        v4.join(", ")
    );
    let _ = writeln!(
        out,
        "\tset private6 {{ type ipv6_addr; flags interval; elements = {{ {} }}; }}",
        v6.join(", ")
    );
    out.push_str(
        "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n",
    );
    let _ = writeln!(
        out,
        "\t\tct state established,related accept comment \"{ESTABLISHED}\""
    );
    for r in &filter.accept {
        let _ = writeln!(
            out,
            "\t\tiifname \"{}\" {} saddr {} {} accept comment \"{}\"",
            r.interface,
            family(&r.source),
            r.source,
            dest_match(&r.source, &r.destination),
            accept_comment(r)
        );
    }
    let _ = writeln!(out, "\t\tiifname \"nm-*\" drop comment \"{DROP}\"");
    out.push_str("\t}\n");
    out.push_str(
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
    );
    for r in &filter.masquerade {
        let _ = writeln!(
            out,
            "\t\t{} saddr {} {} masquerade comment \"{}\"",
            family(&r.source),
            r.source,
            dest_match(&r.source, &r.destination),
            masquerade_comment(r)
        );
    }
    out.push_str("\t}\n}\n");
    out
}

/// The script that replaces the table with `filter` in one transaction: declaring
/// the table first makes the delete succeed whether or not it existed.
pub fn replace_script(filter: &FilterSet) -> String {
    format!(
        "table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n{}",
        render(filter)
    )
}

/// The script that removes the table, whether or not it exists.
pub fn delete_script() -> String {
    format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")
}

fn parse_dest(word: &str) -> Option<Destination> {
    if word == "internet" {
        Some(Destination::Internet)
    } else {
        word.parse().ok().map(Destination::Prefix)
    }
}

fn parse_accept(comment: &str) -> Option<FilterRule> {
    let mut w = comment.strip_prefix("nanami accept ")?.split(' ');
    let rule = FilterRule {
        interface: InterfaceName::new(w.next()?).ok()?,
        source: w.next()?.parse().ok()?,
        destination: parse_dest(w.next()?)?,
    };
    w.next().is_none().then_some(rule)
}

fn parse_masquerade(comment: &str) -> Option<NatRule> {
    let mut w = comment.strip_prefix("nanami masquerade ")?.split(' ');
    let rule = NatRule {
        source: w.next()?.parse().ok()?,
        destination: parse_dest(w.next()?)?,
    };
    w.next().is_none().then_some(rule)
}

/// Reads `nft -j list table inet nanami` output. `Ok(None)` when the table is absent
/// or not intact (a chain, the guard rules or a rule's comment missing or altered):
/// either way the planner replaces it whole.
pub fn parse_list(json: &str) -> Result<Option<FilterSet>, PlatformError> {
    if json.len() > MAX_LIST_BYTES {
        return Err(PlatformError::Nft(format!(
            "nft listing is {} bytes, over the {MAX_LIST_BYTES} limit",
            json.len()
        )));
    }
    let doc: Value = serde_json::from_str(json)
        .map_err(|e| PlatformError::Nft(format!("unreadable nft JSON: {e}")))?;
    let Some(items) = doc.get("nftables").and_then(Value::as_array) else {
        return Err(PlatformError::Nft(
            "nft JSON without an `nftables` list".into(),
        ));
    };
    let mut chains = BTreeSet::new();
    let mut forward: Vec<&str> = Vec::new();
    let mut postrouting: Vec<&str> = Vec::new();
    let mut unreadable = false;
    for item in items {
        if let Some(chain) = item.get("chain") {
            let name = chain.get("name").and_then(Value::as_str).unwrap_or("");
            let hook = chain.get("hook").and_then(Value::as_str).unwrap_or("");
            let kind = chain.get("type").and_then(Value::as_str).unwrap_or("");
            chains.insert((name.to_owned(), hook.to_owned(), kind.to_owned()));
        } else if let Some(rule) = item.get("rule") {
            let chain = rule.get("chain").and_then(Value::as_str).unwrap_or("");
            let Some(comment) = rule.get("comment").and_then(Value::as_str) else {
                unreadable = true;
                continue;
            };
            match chain {
                "forward" => forward.push(comment),
                "postrouting" => postrouting.push(comment),
                _ => unreadable = true,
            }
        }
    }
    let intact = chains.contains(&("forward".into(), "forward".into(), "filter".into()))
        && chains.contains(&("postrouting".into(), "postrouting".into(), "nat".into()))
        && forward.first() == Some(&ESTABLISHED)
        && forward.last() == Some(&DROP)
        && !unreadable;
    if !intact {
        return Ok(None);
    }
    let mut set = FilterSet::default();
    for c in &forward[1..forward.len() - 1] {
        match parse_accept(c) {
            Some(r) => {
                set.accept.insert(r);
            }
            None => return Ok(None),
        }
    }
    for c in &postrouting {
        match parse_masquerade(c) {
            Some(r) => {
                set.masquerade.insert(r);
            }
            None => return Ok(None),
        }
    }
    Ok(Some(set))
}

/// `nft`, run in `netns` (the current namespace when `None`) with the C locale:
/// its error text is matched ("No such file or directory"), and a translated
/// message must not turn a missing table into a failure.
fn nft(netns: Option<&Netns>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("nft");
    crate::netns::enter_before_exec(&mut cmd, netns);
    cmd.env("LC_ALL", "C");
    cmd
}

/// Runs `nft`, feeding `script` on standard input.
pub async fn run_script(script: &str) -> Result<(), PlatformError> {
    run_script_in(None, script).await
}

/// [`run_script`] in `netns` (the current namespace when `None`).
pub async fn run_script_in(netns: Option<&Netns>, script: &str) -> Result<(), PlatformError> {
    let mut child = nft(netns)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| PlatformError::Nft(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| PlatformError::Nft(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| PlatformError::Nft(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PlatformError::Nft(format!(
            "nft -f failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Reads the table back; `None` when it is absent or not intact.
pub async fn observe() -> Result<Option<FilterSet>, PlatformError> {
    observe_in(None).await
}

/// [`observe`] in `netns` (the current namespace when `None`).
pub async fn observe_in(netns: Option<&Netns>) -> Result<Option<FilterSet>, PlatformError> {
    let out = nft(netns)
        .args(["-j", "list", "table", "inet", NFT_TABLE])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| PlatformError::Nft(format!("cannot run nft: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // nft reports a missing table as "No such file or directory".
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(PlatformError::Nft(format!(
            "nft list failed: {}",
            err.trim()
        )));
    }
    parse_list(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FilterSet {
        let ifname = InterfaceName::new("nm-gw-a").unwrap();
        let overlay: IpNet = "100.80.0.0/22".parse().unwrap();
        let overlay6: IpNet = "fd7a::/64".parse().unwrap();
        let route: IpNet = "10.20.0.0/16".parse().unwrap();
        let mut f = FilterSet::default();
        for (src, dst) in [
            (overlay, Destination::Prefix(overlay)),
            (overlay, Destination::Prefix(route)),
            (overlay, Destination::Internet),
            (overlay6, Destination::Internet),
        ] {
            f.accept.insert(FilterRule {
                interface: ifname.clone(),
                source: src,
                destination: dst,
            });
        }
        f.masquerade.insert(NatRule {
            source: overlay,
            destination: Destination::Prefix(route),
        });
        f.masquerade.insert(NatRule {
            source: overlay,
            destination: Destination::Internet,
        });
        f
    }

    #[test]
    fn renders_the_golden_ruleset() {
        let golden = include_str!("testdata/nanami.nft");
        assert_eq!(render(&sample()), golden);
    }

    #[test]
    fn comments_round_trip() {
        let f = sample();
        for r in &f.accept {
            assert_eq!(parse_accept(&accept_comment(r)).as_ref(), Some(r));
        }
        for r in &f.masquerade {
            assert_eq!(parse_masquerade(&masquerade_comment(r)).as_ref(), Some(r));
        }
        assert_eq!(
            parse_accept("nanami accept nm-x 10.0.0.0/8 10.0.0.0/8 extra"),
            None
        );
        assert_eq!(parse_accept("nanami accept nm-x garbage internet"), None);
    }

    fn listing(forward: &[&str], post: &[&str]) -> String {
        let mut items = vec![
            serde_json::json!({"metainfo": {"version": "1.0.6"}}),
            serde_json::json!({"table": {"family": "inet", "name": "nanami"}}),
            serde_json::json!({"chain": {"family": "inet", "table": "nanami", "name": "forward", "type": "filter", "hook": "forward"}}),
            serde_json::json!({"chain": {"family": "inet", "table": "nanami", "name": "postrouting", "type": "nat", "hook": "postrouting"}}),
        ];
        for c in forward {
            items.push(serde_json::json!({"rule": {"chain": "forward", "comment": c, "expr": []}}));
        }
        for c in post {
            items.push(
                serde_json::json!({"rule": {"chain": "postrouting", "comment": c, "expr": []}}),
            );
        }
        serde_json::json!({ "nftables": items }).to_string()
    }

    #[test]
    fn reads_back_what_it_renders() {
        let f = sample();
        let accepts: Vec<String> = f.accept.iter().map(accept_comment).collect();
        let masq: Vec<String> = f.masquerade.iter().map(masquerade_comment).collect();
        let mut forward = vec![ESTABLISHED];
        forward.extend(accepts.iter().map(String::as_str));
        forward.push(DROP);
        let post: Vec<&str> = masq.iter().map(String::as_str).collect();
        assert_eq!(parse_list(&listing(&forward, &post)).unwrap(), Some(f));
    }

    #[test]
    fn a_damaged_table_reads_as_absent() {
        // The drop guard flushed away.
        assert_eq!(parse_list(&listing(&[ESTABLISHED], &[])).unwrap(), None);
        // A rule without a comment (someone added it by hand).
        let hand = serde_json::json!({"nftables": [
            {"chain": {"name": "forward", "type": "filter", "hook": "forward"}},
            {"chain": {"name": "postrouting", "type": "nat", "hook": "postrouting"}},
            {"rule": {"chain": "forward", "expr": []}}
        ]})
        .to_string();
        assert_eq!(parse_list(&hand).unwrap(), None);
        // An empty but intact table is an empty set.
        assert_eq!(
            parse_list(&listing(&[ESTABLISHED, DROP], &[])).unwrap(),
            Some(FilterSet::default())
        );
    }

    #[test]
    fn hostile_listings_are_errors_not_panics() {
        assert!(parse_list("not json").is_err());
        assert!(parse_list("{}").is_err());
        assert!(parse_list(&"[".repeat(100_000)).is_err());
        assert_eq!(
            parse_list(r#"{"nftables": [{"rule": {"chain": 5, "comment": []}}]}"#).unwrap(),
            None
        );
    }
}
