//! `nanami get | apply | delete | node | audit`: the manager's object API from
//! the command line. Objects are the topology document's shapes; each is read with
//! its revision and written under `--if-match REV` (or `--create-only`).
//!
//! Exit codes: 0 done; 1 the manager refused the result as invalid (every issue
//! printed with its path, as `nanami validate` prints them); 2 any other error;
//! 3 a precondition failed (412: the object changed since its revision was read,
//! or it exists / does not exist), with its current revision.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use nanami_api::objects::{object_path, Lifecycle};
use nanami_api::wire::{AuditEntry, ObjectKind, Precondition, Versioned, WriteResponse};
use nanami_api::{ApiError, Client};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::status::{block_on, ManagerArgs};
use crate::table::columns;

/// The exit code of a failed precondition (412).
pub const EXIT_CONFLICT: u8 = 3;
/// The exit code of a write refused as invalid (422), as `nanami validate`'s.
pub const EXIT_INVALID: u8 = 1;

/// An object kind on the command line (singular or plural).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A catalog region (platform scope).
    #[value(alias = "regions")]
    Region,
    /// A workspace's spec: tenant and region access (platform scope).
    #[value(alias = "workspaces")]
    Workspace,
    /// A network of a workspace.
    #[value(alias = "networks")]
    Network,
    /// A node of a workspace.
    #[value(alias = "nodes")]
    Node,
    /// A gateway of a workspace.
    #[value(alias = "gateways")]
    Gateway,
}

impl Kind {
    fn object_kind(self) -> ObjectKind {
        match self {
            Self::Region => ObjectKind::Region,
            Self::Workspace => ObjectKind::Workspace,
            Self::Network => ObjectKind::Network,
            Self::Node => ObjectKind::Node,
            Self::Gateway => ObjectKind::Gateway,
        }
    }

    fn name(self) -> &'static str {
        self.object_kind().name()
    }

    /// The object's path; networks, nodes and gateways need their workspace.
    fn path(self, workspace: Option<&str>, id: Option<&str>) -> anyhow::Result<String> {
        match (self, workspace) {
            (Self::Region | Self::Workspace, _) => Ok(object_path(self.object_kind(), None, id)),
            (Self::Network | Self::Node | Self::Gateway, Some(ws)) => {
                Ok(object_path(self.object_kind(), Some(ws), id))
            }
            (Self::Network | Self::Node | Self::Gateway, None) => {
                bail!("a {} is in a workspace: give --workspace WS", self.name())
            }
        }
    }
}

/// `--if-match` and `--create-only`.
#[derive(Args, Debug, Clone, Default)]
pub struct WriteArgs {
    /// Write only if the object is at this revision (`*`: only if it exists).
    #[arg(long, value_name = "REV")]
    pub if_match: Option<String>,
    /// Write only if the object does not exist yet.
    #[arg(long, conflicts_with = "if_match")]
    pub create_only: bool,
}

impl WriteArgs {
    fn precondition(&self) -> Precondition {
        match (&self.if_match, self.create_only) {
            (Some(r), _) if r == "*" => Precondition::Exists,
            (Some(r), _) => Precondition::Match(r.clone()),
            (None, true) => Precondition::Absent,
            (None, false) => Precondition::Any,
        }
    }
}

/// `nanami node …`.
#[derive(Subcommand, Debug, Clone)]
pub enum NodeCommand {
    /// Make the node active.
    Enable(NodeTarget),
    /// Make the node disabled: it keeps its record but gets no peer anywhere.
    Disable(NodeTarget),
    /// Make the node revoked; its credential is revoked too.
    Revoke(NodeTarget),
    /// Replace the node's public key (the node made the new private key itself).
    RotateKey {
        #[command(flatten)]
        target: NodeTarget,
        /// The new public key (base64).
        #[arg(long)]
        public_key: String,
    },
}

/// The node a lifecycle request is about, and how to reach the manager.
#[derive(Args, Debug, Clone)]
pub struct NodeTarget {
    /// The node id.
    pub id: String,
    /// Its workspace.
    #[arg(long)]
    pub workspace: String,
    /// Only if the node is at this revision (`*`: only if it exists).
    #[arg(long, value_name = "REV")]
    pub if_match: Option<String>,
    #[command(flatten)]
    pub manager: ManagerArgs,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One object of an `apply` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    kind: Kind,
    #[serde(default)]
    workspace: Option<String>,
    object: Value,
    /// This object's own precondition (a revision, or `*`).
    #[serde(default)]
    if_match: Option<String>,
}

/// An `apply` file: one item or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Items {
    Many(Vec<Item>),
    One(Item),
}

/// Runs a call; a 412 or a 422 becomes its exit code after its message, any
/// other failure an error.
fn outcome<T>(result: Result<T, ApiError>, what: &str) -> anyhow::Result<Result<T, ExitCode>> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(ApiError::Status {
            status,
            message,
            current_revision,
            ..
        }) if status.as_u16() == 412 => {
            let now = match &current_revision {
                Some(r) => format!("its revision is now {r}"),
                None => "it does not exist".to_owned(),
            };
            eprintln!("conflict: {what}: {message} ({now}); read it again and retry");
            Ok(Err(ExitCode::from(EXIT_CONFLICT)))
        }
        Err(ApiError::Status { status, issues, .. }) if status.as_u16() == 422 => {
            eprintln!(
                "invalid: {what}: the result would have {} problem{}",
                issues.len(),
                if issues.len() == 1 { "" } else { "s" }
            );
            for issue in &issues {
                eprintln!("  {issue}");
            }
            Ok(Err(ExitCode::from(EXIT_INVALID)))
        }
        Err(e) => Err(anyhow::Error::new(e).context(what.to_owned())),
    }
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn text(v: &Value, field: &str) -> String {
    match v.get(field) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.is_empty() => "-".to_owned(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                // A membership shows as its network.
                Value::Object(m) => m
                    .get("network")
                    .and_then(Value::as_str)
                    .map_or_else(|| i.to_string(), str::to_owned),
                other @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::Array(_)) => {
                    other.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// The table of `items` of `kind`: its most telling fields, then the revision.
pub fn table(kind: Kind, items: &[Versioned<Value>]) -> String {
    let fields: &[(&str, &str)] = match kind {
        Kind::Region => &[("ID", "id"), ("STATE", "state"), ("NAME", "display_name")],
        Kind::Workspace => &[("ID", "id"), ("TENANT", "tenant"), ("REGIONS", "regions")],
        Kind::Network => &[
            ("ID", "id"),
            ("OVERLAY", "overlay"),
            ("ROUTES", "routes"),
            ("EXIT", "exit"),
        ],
        Kind::Node => &[
            ("ID", "id"),
            ("STATUS", "status"),
            ("NETWORKS", "memberships"),
            ("PUBLIC KEY", "public_key"),
        ],
        Kind::Gateway => &[
            ("ID", "id"),
            ("NODE", "node"),
            ("REGION", "region"),
            ("NETWORKS", "networks"),
            ("ROLES", "roles"),
            ("ENDPOINT", "endpoint"),
        ],
    };
    let mut rows = vec![fields
        .iter()
        .map(|(h, _)| (*h).to_owned())
        .chain(["REVISION".to_owned()])
        .collect::<Vec<_>>()];
    for item in items {
        rows.push(
            fields
                .iter()
                .map(|(_, f)| text(&item.object, f))
                .chain([item.revision.clone()])
                .collect(),
        );
    }
    columns(&rows, "")
}

/// `nanami get KIND [ID] [--workspace WS]`.
pub fn get(
    manager: &ManagerArgs,
    kind: Kind,
    id: Option<&str>,
    workspace: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = manager.client()?;
    let path = kind.path(workspace, id)?;
    let what = match id {
        Some(id) => format!("getting {} {id}", kind.name()),
        None => format!("listing {}s", kind.name()),
    };
    let items = match id {
        Some(_) => block_on(client.get_object::<Value>(&path))?.map(|one| vec![one]),
        None => block_on(client.list_objects::<Value>(&path))?,
    };
    let items = match outcome(items, &what)? {
        Ok(items) => items,
        Err(code) => return Ok(code),
    };
    match (json, id) {
        (true, Some(_)) => print_json(&items[0])?,
        (true, None) => print_json(&serde_json::json!({ "items": items }))?,
        (false, _) => print!("{}", table(kind, &items)),
    }
    Ok(ExitCode::SUCCESS)
}

fn read_items(file: &Path) -> anyhow::Result<Vec<Item>> {
    let text = crate::read(file)?;
    let items: Items = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("reading {}", file.display()))?
    } else {
        serde_yaml_ng::from_str(&text).with_context(|| format!("reading {}", file.display()))?
    };
    Ok(match items {
        Items::Many(items) => items,
        Items::One(item) => vec![item],
    })
}

fn describe(kind: Kind, workspace: Option<&str>, id: &str) -> String {
    match (kind, workspace) {
        (Kind::Region | Kind::Workspace, _) | (_, None) => format!("{} {id}", kind.name()),
        (_, Some(ws)) => format!("{} {id} of workspace {ws}", kind.name()),
    }
}

fn written_line(w: &WriteResponse) -> String {
    let object = describe_object(w);
    let changed = if w.changed.is_empty() {
        "no gateway changed".to_owned()
    } else {
        let list: Vec<String> = w
            .changed
            .iter()
            .map(|(g, n)| format!("{g} (generation {n})"))
            .collect();
        format!("changed: {}", list.join(", "))
    };
    match &w.revision {
        Some(r) => format!("{object}: revision {r}; {changed}"),
        None => format!("{object}: deleted; {changed}"),
    }
}

fn describe_object(w: &WriteResponse) -> String {
    match &w.object.workspace {
        Some(ws) if w.object.kind != "workspace" => {
            format!("{} {} of workspace {ws}", w.object.kind, w.object.id)
        }
        Some(_) | None => format!("{} {}", w.object.kind, w.object.id),
    }
}

/// `nanami apply -f FILE`: each object in order; stops at the first refusal (the
/// objects before it stay written).
pub fn apply(
    manager: &ManagerArgs,
    file: &Path,
    write: &WriteArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let items = read_items(file)?;
    if items.len() > 1 && (write.if_match.is_some() || write.create_only) {
        bail!(
            "--if-match and --create-only apply to one object; {} has {}: give each its own `if_match`",
            file.display(),
            items.len()
        );
    }
    let client = manager.client()?;
    let mut written = Vec::new();
    let mut code = ExitCode::SUCCESS;
    for item in &items {
        let id = item
            .object
            .get("id")
            .and_then(Value::as_str)
            .with_context(|| format!("a {} in {} has no id", item.kind.name(), file.display()))?;
        let what = describe(item.kind, item.workspace.as_deref(), id);
        let path = item.kind.path(item.workspace.as_deref(), Some(id))?;
        let precondition = match &item.if_match {
            Some(r) => WriteArgs {
                if_match: Some(r.clone()),
                create_only: false,
            }
            .precondition(),
            None => write.precondition(),
        };
        let result = block_on(client.put_object(&path, &item.object, &precondition))?;
        match outcome(result, &format!("applying {what}"))? {
            Ok(w) => {
                if !json {
                    println!("{}", written_line(&w));
                }
                written.push(w);
            }
            Err(c) => {
                code = c;
                break;
            }
        }
    }
    if json {
        print_json(&written)?;
    }
    Ok(code)
}

/// `nanami delete KIND ID [--workspace WS]`.
pub fn delete(
    manager: &ManagerArgs,
    kind: Kind,
    id: &str,
    workspace: Option<&str>,
    if_match: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = manager.client()?;
    let path = kind.path(workspace, Some(id))?;
    let precondition = WriteArgs {
        if_match: if_match.map(str::to_owned),
        create_only: false,
    }
    .precondition();
    let result = block_on(client.delete_object(&path, &precondition))?;
    finish_write(
        result,
        &format!("deleting {}", describe(kind, workspace, id)),
        json,
    )
}

fn finish_write(
    result: Result<WriteResponse, ApiError>,
    what: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match outcome(result, what)? {
        Ok(w) if json => {
            print_json(&w)?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(w) => {
            println!("{}", written_line(&w));
            Ok(ExitCode::SUCCESS)
        }
        Err(code) => Ok(code),
    }
}

/// `nanami node enable|disable|revoke|rotate-key`.
pub fn node(command: &NodeCommand) -> anyhow::Result<ExitCode> {
    let (target, request) = match command {
        NodeCommand::Enable(t) => (t, Some(Lifecycle::Enable)),
        NodeCommand::Disable(t) => (t, Some(Lifecycle::Disable)),
        NodeCommand::Revoke(t) => (t, Some(Lifecycle::Revoke)),
        NodeCommand::RotateKey { target, .. } => (target, None),
    };
    let client: Client = target.manager.client()?;
    let precondition = WriteArgs {
        if_match: target.if_match.clone(),
        create_only: false,
    }
    .precondition();
    let (result, what) = match (request, command) {
        (Some(r), _) => (
            block_on(client.node_lifecycle(&target.workspace, &target.id, r, &precondition))?,
            format!(
                "{} node {} of workspace {}",
                r.name(),
                target.id,
                target.workspace
            ),
        ),
        (None, NodeCommand::RotateKey { public_key, .. }) => (
            block_on(client.rotate_key(&target.workspace, &target.id, public_key, &precondition))?,
            format!(
                "rotating the key of node {} of workspace {}",
                target.id, target.workspace
            ),
        ),
        (None, NodeCommand::Enable(_) | NodeCommand::Disable(_) | NodeCommand::Revoke(_)) => {
            bail!("internal: a lifecycle command without its request")
        }
    };
    finish_write(result, &what, target.json)
}

/// The audit table.
pub fn audit_table(entries: &[AuditEntry]) -> String {
    let short = |r: &Option<String>| {
        r.as_deref()
            .map_or_else(|| "-".to_owned(), |r| r.chars().take(12).collect())
    };
    let mut rows = vec![vec![
        "SEQ".to_owned(),
        "AT (unix ms)".into(),
        "CREDENTIAL".into(),
        "OBJECT".into(),
        "REVISION (old → new)".into(),
        "DIFF".into(),
    ]];
    for e in entries {
        let object = match &e.object.workspace {
            Some(ws) if e.object.kind != "workspace" => {
                format!("{} {}/{}", e.object.kind, ws, e.object.id)
            }
            Some(_) | None => format!("{} {}", e.object.kind, e.object.id),
        };
        rows.push(vec![
            e.seq.to_string(),
            e.at_unix_ms.to_string(),
            format!("{} {}", e.credential_kind, e.credential_id),
            object,
            format!("{} → {}", short(&e.old_revision), short(&e.new_revision)),
            e.diff.replace('\n', "; "),
        ]);
    }
    columns(&rows, "")
}

/// `nanami audit [--after N] [--limit N]`.
pub fn audit(
    manager: &ManagerArgs,
    after: Option<u64>,
    limit: Option<u32>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = manager.client()?;
    let page = match outcome(
        block_on(client.audit(after, limit))?,
        "reading the audit trail",
    )? {
        Ok(page) => page,
        Err(code) => return Ok(code),
    };
    if json {
        print_json(&page)?;
    } else {
        print!("{}", audit_table(&page.entries));
        if let Some(next) = page.next_after {
            println!("(more: --after {next})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `apply -f` argument.
#[derive(Args, Debug, Clone)]
pub struct ApplyFile {
    /// YAML or JSON (`.json`): one `{kind, workspace?, object, if_match?}` or a
    /// list of them; `-` reads standard input.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_node_table_shows_memberships_by_network_and_the_revision() {
        let items = vec![Versioned {
            revision: "abc123".to_owned(),
            object: serde_json::json!({
                "id": "laptop-1", "public_key": "K", "status": "active",
                "memberships": [{"network": "corp", "address": "100.80.0.9"}, {"network": "lab"}]
            }),
        }];
        let text = table(Kind::Node, &items);
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("ID"));
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(row, ["laptop-1", "active", "corp,lab", "K", "abc123"]);
    }

    #[test]
    fn write_flags_name_their_precondition() {
        let args = |if_match: Option<&str>, create_only| WriteArgs {
            if_match: if_match.map(str::to_owned),
            create_only,
        };
        assert_eq!(args(None, false).precondition(), Precondition::Any);
        assert_eq!(args(None, true).precondition(), Precondition::Absent);
        assert_eq!(args(Some("*"), false).precondition(), Precondition::Exists);
        assert_eq!(
            args(Some("ab12"), false).precondition(),
            Precondition::Match("ab12".to_owned())
        );
    }

    #[test]
    fn contents_need_their_workspace() {
        assert_eq!(
            Kind::Node.path(Some("acme"), Some("n1")).unwrap(),
            "/v1/workspaces/acme/nodes/n1"
        );
        assert_eq!(Kind::Region.path(None, None).unwrap(), "/v1/regions");
        assert!(Kind::Gateway.path(None, Some("g")).is_err());
    }
}
