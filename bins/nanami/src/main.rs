//! `nanami`: the command-line tool.

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
                println!("{}", config.to_json());
            } else {
                print!("{}", config.to_wg_quick(None));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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
