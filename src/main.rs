//! The `ledger` command line: argument parsing only; the work is in `commands`.

mod commands;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ledger",
    version,
    about = "An embedded, event-sourced, content-addressed ledger for reproducible ML pipelines"
)]
struct Cli {
    /// The ledger directory.
    #[arg(long, global = true, env = "LEDGER_DIR", default_value = ".ledger")]
    ledger: PathBuf,
    /// Fail at once instead of waiting when another process is writing.
    #[arg(long, global = true)]
    no_wait: bool,
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an empty ledger.
    Init,
    /// Add files as artifacts; prints each hash.
    Add {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write an artifact's bytes to stdout.
    Cat { hash: String },
    /// What an artifact or run is, who produced it, from which inputs.
    Show {
        hash: String,
        #[arg(long)]
        json: bool,
    },
    /// Runs and events, oldest first.
    Log {
        /// Only the last N events.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// The full ancestry DAG of an artifact.
    Lineage {
        hash: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Execute an experiment config; cached actions are reused.
    Run {
        config: PathBuf,
        /// Hide progress bars.
        #[arg(long)]
        no_progress: bool,
        /// Units executing at once (default: one per core; a rollout's container counts as one).
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// Where units run: worker threads here, or Slurm array jobs (`[executor.slurm]`).
        #[arg(long, value_enum, default_value_t = ExecutorArg::Local)]
        executor: ExecutorArg,
        #[arg(long)]
        json: bool,
    },
    /// Run every arm of an ablation file in this ledger (shared steps come from the run cache)
    /// and print one row per arm, one column per metric.
    Ablate {
        file: PathBuf,
        /// Hide progress bars.
        #[arg(long)]
        no_progress: bool,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild an artifact from its lineage and check it bit for bit
    /// (exit 0 bit-identical, 3 not reproducible, 1 error).
    Replay {
        hash: String,
        /// Re-execute every step of the lineage, even where outputs are present.
        #[arg(long)]
        check: bool,
        /// Re-execute N times (all must agree).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Re-execute from this node id or stage name downstream.
        #[arg(long)]
        from: Option<String>,
        /// Also perform recorded actions again (rollout commands in fresh containers) and
        /// compare them with the record after normalizing timings.
        #[arg(long)]
        reexecute: bool,
        /// Where steps find external sources named by relative paths (a git clone); default:
        /// the recorded config's directory for this ledger's runs, an empty directory for
        /// imported ones.
        #[arg(long)]
        workdir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Compare two runs or two artifacts.
    Diff {
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
        /// Print the aligned lineages as Graphviz DOT (shared vs divergent steps).
        #[arg(long, conflicts_with = "json")]
        dot: bool,
    },
    /// Rehash every blob, walk the hash chain, check the index (exit 1 on any problem).
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Write an artifact with its whole lineage (events and blobs) to a bundle file.
    Export {
        hash: String,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Verify a bundle and add what this ledger lacks (all or nothing), as foreign events.
    Import {
        bundle: PathBuf,
        /// Vouch for the bundle: its steps answer this ledger's action cache and its
        /// observations answer requests (still recorded as foreign).
        #[arg(long)]
        trust: bool,
        /// Point this ledger's tags where the bundle's tags point (moving existing ones).
        #[arg(long)]
        adopt_tags: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove blobs that no tag or run reaches.
    Gc {
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Point a tag at an artifact.
    Tag { name: String, hash: String },
    /// Rebuild the index from the event log.
    Reindex,
    /// Execute one unit from a spec file and write its result (what a Slurm task runs).
    #[command(hide = true)]
    Unit { spec: PathBuf },
    /// Serve a read-only web interface to this ledger: runs, artifacts, lineage, comparisons,
    /// audits (on 127.0.0.1 unless --bind says otherwise; Ctrl-C stops it).
    Ui {
        /// The port (0: any free one; the address is printed).
        #[arg(long, default_value_t = 8377)]
        port: u16,
        /// Listen on this address instead of 127.0.0.1 (anyone who can reach it can read the
        /// ledger).
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
        /// An ablation file (`ledger ablate FILE`) whose table to show; repeatable.
        #[arg(long)]
        ablation: Vec<PathBuf>,
    },
    /// List the stages this build can run.
    Stages {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExecutorArg {
    Local,
    Slurm,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Dot,
    Json,
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when a reader closes the pipe (`ledger log | head`).
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    commands::init_logging(cli.verbose);
    let ctx = commands::Context {
        dir: cli.ledger,
        wait: if cli.no_wait {
            ledger::Wait::NoWait
        } else {
            ledger::Wait::Block
        },
    };
    let result = match cli.command {
        Command::Init => commands::init(&ctx),
        Command::Add { files } => commands::add(&ctx, &files),
        Command::Cat { hash } => commands::cat(&ctx, &hash),
        Command::Show { hash, json } => commands::show(&ctx, &hash, json),
        Command::Log { limit, json } => commands::log(&ctx, limit, json),
        Command::Lineage { hash, format } => commands::lineage(&ctx, &hash, format),
        Command::Run {
            config,
            no_progress,
            jobs,
            executor,
            json,
        } => commands::run(
            &ctx,
            &config,
            &ledger::runner::RunOptions {
                progress: !no_progress,
                jobs: jobs.unwrap_or_else(ledger::runner::default_jobs).max(1),
                executor: match executor {
                    ExecutorArg::Local => ledger::runner::Executor::Local,
                    ExecutorArg::Slurm => ledger::runner::Executor::Slurm,
                },
            },
            json,
        ),
        Command::Ablate {
            file,
            no_progress,
            json,
        } => commands::ablate(&ctx, &file, !no_progress, json),
        Command::Replay {
            hash,
            check,
            repeat,
            from,
            reexecute,
            workdir,
            json,
        } => {
            let options = replay::ReplayOptions {
                check,
                repeat,
                from,
                reexecute,
                workdir,
            };
            commands::replay(&ctx, &hash, &options, json)
        }
        Command::Diff { a, b, json, dot } => commands::diff(&ctx, &a, &b, json, dot),
        Command::Export { hash, output, json } => commands::export(&ctx, &hash, &output, json),
        Command::Import {
            bundle,
            trust,
            adopt_tags,
            json,
        } => commands::import(
            &ctx,
            &bundle,
            ledger::bundle::ImportOptions { trust, adopt_tags },
            json,
        ),
        Command::Verify { json } => commands::verify(&ctx, json),
        Command::Gc { dry_run, json } => commands::gc(&ctx, dry_run, json),
        Command::Tag { name, hash } => commands::tag(&ctx, &name, &hash),
        Command::Reindex => commands::reindex(&ctx),
        Command::Ui {
            port,
            bind,
            ablation,
        } => commands::ui(&ctx, port, bind, ablation),
        Command::Stages { json } => commands::stages(json),
        Command::Unit { spec } => commands::unit(&spec),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
