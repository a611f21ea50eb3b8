//! `nanami`: the command-line tool.

mod connect;
mod explain;
mod lab;
mod objects;
mod status;
mod table;

use nanami_api::service::shutdown_signal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use nanami_model::{
    compile, compile_node, Document, GatewayId, Health, NodeId, Topology, ValidationErrors,
};

#[derive(Parser)]
#[command(
    name = "nanami",
    version,
    about = "Nanami: WireGuard gateways for private networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a topology document and list every problem with its path.
    Validate {
        /// The document (YAML or JSON; `-` reads standard input).
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print the desired state of one gateway as JSON.
    Compile {
        /// The document.
        file: PathBuf,
        /// The gateway id.
        #[arg(long)]
        gateway: String,
        /// Gateway health as JSON (`{"offline": [..], "unhealthy": [[gw, net], ..]}`);
        /// every gateway is healthy without it.
        #[arg(long)]
        health: Option<PathBuf>,
    },
    /// Print a client's configuration: wg-quick text, or JSON with `--json`.
    ClientConfig {
        /// The document.
        file: PathBuf,
        /// The node id.
        #[arg(long)]
        node: String,
        /// Gateway health as JSON (see `compile`).
        #[arg(long)]
        health: Option<PathBuf>,
        /// Print the JSON form instead of wg-quick text.
        #[arg(long)]
        json: bool,
    },
    /// The table of gateways the manager knows: region, health, conditions,
    /// desired vs observed generation, peers, newest handshake.
    Status {
        #[command(flatten)]
        manager: status::ManagerArgs,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Why a client is on the gateways it is on, or which clients a gateway
    /// carries: the manager's explanation under its current topology and health
    /// (operator credential).
    Explain {
        #[command(subcommand)]
        command: explain::ExplainCommand,
    },
    /// The `+ / ~ / -` diff a gateway needs: from the manager (desired vs last
    /// reported), or from a local topology and an observed-state JSON file.
    Plan {
        /// A local topology document (with --observed); without it, ask the manager.
        file: Option<PathBuf>,
        /// The gateway id.
        #[arg(long)]
        gateway: String,
        /// Observed state (an `Observed` or a `GatewayState`, JSON) for a local plan.
        #[arg(long, requires = "file")]
        observed: Option<PathBuf>,
        /// Gateway health as JSON for a local plan (see `compile`).
        #[arg(long)]
        health: Option<PathBuf>,
        #[command(flatten)]
        manager: status::ManagerArgs,
        /// The plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Objects of the manager with their revisions: a table, or `--json`.
    Get {
        /// region, workspace, network, node or gateway (or their plurals).
        #[arg(value_enum)]
        kind: objects::Kind,
        /// One object's id; all of them without it.
        id: Option<String>,
        /// The workspace (networks, nodes and gateways).
        #[arg(long)]
        workspace: Option<String>,
        #[command(flatten)]
        manager: status::ManagerArgs,
        /// JSON (`{revision, object}`, or `{items: [...]}`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create or replace objects from a file, in order, each under its
    /// precondition. Exit 3 when a precondition fails (412), 1 when the result
    /// would be invalid (422).
    Apply {
        #[command(flatten)]
        file: objects::ApplyFile,
        #[command(flatten)]
        write: objects::WriteArgs,
        #[command(flatten)]
        manager: status::ManagerArgs,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete an object. Exit 3 when `--if-match` fails (412).
    Delete {
        /// region, workspace, network, node or gateway.
        #[arg(value_enum)]
        kind: objects::Kind,
        /// The object's id.
        id: String,
        /// The workspace (networks, nodes and gateways).
        #[arg(long)]
        workspace: Option<String>,
        /// Only if the object is at this revision (`*`: only if it exists).
        #[arg(long, value_name = "REV")]
        if_match: Option<String>,
        #[command(flatten)]
        manager: status::ManagerArgs,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A node's lifecycle: enable, disable, revoke, rotate-key.
    Node {
        #[command(subcommand)]
        command: objects::NodeCommand,
    },
    /// The audit trail this credential may read, oldest first.
    Audit {
        /// Entries after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many entries (the manager caps it).
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        manager: status::ManagerArgs,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The client agent (root): keeps this machine's tunnel to its networks as the
    /// manager configures it, failing over between gateways on its own.
    Connect(connect::ConnectArgs),
    /// A whole Nanami on this machine (root): manager, gateway daemon, LAN, two
    /// wireguard-go clients, in network namespaces.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
        /// Prefix of the lab's namespaces and interfaces.
        #[arg(long, global = true, default_value = "nml")]
        prefix: String,
        /// The lab's state directory.
        #[arg(long, global = true, default_value = "/run/nanami-lab")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum LabCommand {
    /// Build the lab, wait for convergence, prove reachability, print the status.
    Up {
        /// The lab topology.
        #[arg(default_value = "examples/lab.yaml")]
        file: PathBuf,
    },
    /// Remove everything the lab created.
    Down,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

fn parse(path: &Path, text: &str) -> Result<Document, nanami_model::ParseError> {
    if path.extension().is_some_and(|e| e == "json") {
        Document::from_json(text)
    } else {
        Document::from_yaml(text)
    }
}

/// Loads and validates; on failure prints the problems and returns the exit code.
fn load(path: &Path) -> anyhow::Result<Result<Topology, ExitCode>> {
    let text = read(path)?;
    let doc = match parse(path, &text) {
        Ok(doc) => doc,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return Ok(Err(ExitCode::from(1)));
        }
    };
    match Topology::from_document(&doc) {
        Ok(t) => Ok(Ok(t)),
        Err(errors) => {
            eprintln!("{}: {errors}", path.display());
            Ok(Err(ExitCode::from(1)))
        }
    }
}

fn health(path: Option<&Path>) -> anyhow::Result<Health> {
    match path {
        None => Ok(Health::all_up()),
        Some(p) => serde_json::from_str(&read(p)?)
            .with_context(|| format!("reading health from {}", p.display())),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { file, format } => validate(&file, format),
        Command::Compile {
            file,
            gateway,
            health: h,
        } => {
            let gateway = GatewayId::new(&gateway).context("--gateway")?;
            let topology = match load(&file)? {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            let state = compile(&topology, &health(h.as_deref())?, &gateway)?;
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::ClientConfig {
            file,
            node,
            health: h,
            json,
        } => {
            let node = NodeId::new(&node).context("--node")?;
            let topology = match load(&file)? {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            let config = compile_node(&topology, &health(h.as_deref())?, &node)?;
            if json {
                println!("{}", config.to_json()?);
            } else {
                print!("{}", config.to_wg_quick(None));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { manager, json } => {
            status::status(&manager, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { command } => {
            explain::explain(&command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            file,
            gateway,
            observed,
            health: h,
            manager,
            json,
        } => {
            let gateway = GatewayId::new(&gateway).context("--gateway")?;
            match (file, observed) {
                (Some(file), Some(observed)) => {
                    let topology = match load(&file)? {
                        Ok(t) => t,
                        Err(code) => return Ok(code),
                    };
                    status::plan_local(
                        &file,
                        &topology,
                        &gateway,
                        &health(h.as_deref())?,
                        &observed,
                        json,
                    )?;
                }
                (Some(_), None) => anyhow::bail!("a local plan needs --observed FILE"),
                (None, _) => status::plan_remote(&manager, &gateway, json)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get {
            kind,
            id,
            workspace,
            manager,
            json,
        } => objects::get(&manager, kind, id.as_deref(), workspace.as_deref(), json),
        Command::Apply {
            file,
            write,
            manager,
            json,
        } => objects::apply(&manager, &file.file, &write, json),
        Command::Delete {
            kind,
            id,
            workspace,
            if_match,
            manager,
            json,
        } => objects::delete(
            &manager,
            kind,
            &id,
            workspace.as_deref(),
            if_match.as_deref(),
            json,
        ),
        Command::Node { command } => objects::node(&command),
        Command::Audit {
            after,
            limit,
            manager,
            json,
        } => objects::audit(&manager, after, limit, json),
        Command::Connect(args) => connect_command(args),
        Command::Lab {
            command,
            prefix,
            dir,
        } => {
            let lab = lab::Lab { prefix, dir };
            match command {
                LabCommand::Up { file } => lab::up(&lab, &file)?,
                LabCommand::Down => lab::down(&lab)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn connect_command(args: connect::ConnectArgs) -> anyhow::Result<ExitCode> {
    nanami_api::service::init_logging();
    if args.print_public_key {
        let dir = connect::state_dir(args.state_dir.clone());
        println!("{}", dir.ensure_key()?);
        return Ok(ExitCode::SUCCESS);
    }
    let settings = connect::Settings::from_args(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(connect::run(settings, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

fn validate(path: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let text = read(path)?;
    let result: Result<Topology, ValidationErrors> = match parse(path, &text) {
        Ok(doc) => Topology::from_document(&doc),
        Err(e) => Err(ValidationErrors(vec![nanami_model::Issue {
            path: "(document)".to_owned(),
            message: e.to_string(),
        }])),
    };
    match (result, format) {
        (Ok(t), Format::Text) => {
            let nodes = t.workspaces.values().map(|w| w.nodes.len()).sum::<usize>();
            let gateways = t
                .workspaces
                .values()
                .map(|w| w.gateways.len())
                .sum::<usize>();
            println!(
                "{}: valid ({} regions, {} workspaces, {nodes} nodes, {gateways} gateways)",
                path.display(),
                t.regions.len(),
                t.workspaces.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        (Ok(_), Format::Json) => {
            println!("{}", serde_json::json!({ "valid": true, "issues": [] }));
            Ok(ExitCode::SUCCESS)
        }
        (Err(errors), Format::Text) => {
            println!("{}: {errors}", path.display());
            Ok(ExitCode::from(1))
        }
        (Err(errors), Format::Json) => {
            println!(
                "{}",
                serde_json::json!({ "valid": false, "issues": errors.0 })
            );
            Ok(ExitCode::from(1))
        }
    }
}
