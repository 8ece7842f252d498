//! `edge-agent`: capture the topics of a Data Event Map into signed, encrypted chunk chains.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use edge_agent::backlog::Backlog;
use edge_agent::config::AgentConfig;
use edge_agent::import::{self, journal::Journal};
use edge_agent::metrics::Metrics;
use edge_agent::pipeline::{self, Backoff};
use edge_agent::spool::TopicSpool;
use edge_agent::{capture, metrics};
use keyd_proto::client::KeydClient;

#[derive(Parser)]
#[command(
    name = "edge-agent",
    version,
    about = "ROS 2 topics to signed, encrypted, chained chunks, through keyd"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Json, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Capture the map's topics until SIGTERM or SIGINT.
    Run {
        /// The Data Event Map (YAML).
        map: PathBuf,
    },
    /// Validate a map (keys, types, message definitions, paths) without starting.
    Check { map: PathBuf },
    /// Import recorded ROS 2 bags (MCAP or sqlite3, as a rosbag2 directory or one file)
    /// through the map's field rules, keyd and outputs, into chains of their own beside the
    /// live ones (`imports/<name>/<topic>`). A killed import resumes when run again.
    Import {
        /// The Data Event Map (YAML).
        #[arg(long)]
        map: PathBuf,
        /// The chains' directory name under `imports/` (default: the bag's name; one bag only).
        #[arg(long)]
        name: Option<String>,
        /// Never draw a progress bar (it is drawn only on a terminal anyway).
        #[arg(long)]
        no_progress: bool,
        #[arg(required = true)]
        bags: Vec<PathBuf>,
    },
}

fn init_logs(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("EDGE_AGENT_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,rustdds=error,ros2_client=warn")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { map } => match AgentConfig::load(&map) {
            Ok(config) => {
                println!("{}: ok", map.display());
                println!("keyd socket: {}", config.keyd_socket.display());
                println!("spool: {}", config.spool_dir.display());
                for t in &config.topics {
                    let c = &t.chunk;
                    println!(
                        "{} ({}, {:?} depth {}) -> {}  [chunk: {} bytes{}{}]",
                        t.topic,
                        t.type_name,
                        t.qos.profile,
                        t.qos.depth(),
                        t.output.display(),
                        c.max_bytes,
                        c.max_messages
                            .map(|m| format!(", {m} messages"))
                            .unwrap_or_default(),
                        c.max_age_ms
                            .map(|m| format!(", {m} ms"))
                            .unwrap_or_default(),
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("edge-agent: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { map } => {
            init_logs(cli.log_format);
            let config = match load_unprivileged(&map) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "stopped");
                    eprintln!("edge-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Import {
            map,
            name,
            no_progress,
            bags,
        } => {
            init_logs(cli.log_format);
            if name.is_some() && bags.len() > 1 {
                eprintln!(
                    "edge-agent: --name names one bag's chains: import one bag at a time with it"
                );
                return ExitCode::from(2);
            }
            let config = match load_unprivileged(&map) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let progress = !no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
            match import(config, &bags, name.as_deref(), progress) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    tracing::error!(error = %e, "import stopped");
                    eprintln!("edge-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The map, unless the agent runs as root (it refuses) or the map is invalid.
fn load_unprivileged(map: &std::path::Path) -> Result<AgentConfig, ExitCode> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("edge-agent: refusing to run as root: run it as its own unprivileged user (see policies/systemd/edge-agent.service)");
        return Err(ExitCode::from(2));
    }
    AgentConfig::load(map).map_err(|e| {
        eprintln!("edge-agent: {e}");
        ExitCode::from(2)
    })
}

/// Keeps the heap from growing with large messages: buffers above 256 KiB are mapped and
/// returned to the system when freed (glibc's threshold otherwise rises to 32 MiB after the
/// first large free), and two arenas serve every thread.
fn bound_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Lowers the calling thread's CPU priority (nice 10): when the cores are busy, capture,
/// signing and the spool go first and uploads take what is left; on an idle machine it
/// changes nothing.
fn yield_to_capture() {
    // SAFETY: setpriority has no memory effects; on Linux, PRIO_PROCESS with id 0 is the
    // calling thread.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "uploads keep the normal CPU priority");
    }
}

/// Connects to keyd, retrying with backoff until `stop`.
fn connect_keyd(config: &AgentConfig, metrics: &Metrics, stop: &AtomicBool) -> Option<KeydClient> {
    let mut backoff = Backoff::new(config.keyd_backoff_max_ms);
    let keyd = loop {
        match KeydClient::connect(&config.keyd_socket) {
            Ok(client) => break client,
            Err(e) => {
                tracing::warn!(error = %e, "waiting for keyd");
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                backoff.wait(stop);
            }
        }
    };
    metrics.observe_keyd(
        "identity",
        std::time::Duration::ZERO,
        metrics::KeydOutcome::Ok,
    );
    tracing::info!(did = %keyd.identity().did, backend = %keyd.identity().backend_detail, "connected to keyd");
    Some(keyd)
}

/// Opens (and recovers) every topic's spool for keyd's DID.
fn open_spools(
    config: &AgentConfig,
    keyd: &KeydClient,
) -> Result<Vec<TopicSpool>, Box<dyn std::error::Error>> {
    let did = keyd.identity().did.clone();
    Ok(config
        .topics
        .iter()
        .map(|t| {
            let storage = t.uploads.first().map(|u| u.path.clone());
            TopicSpool::open(&t.spool, &t.output, &did, t.chunk.max_bytes, storage).inspect(|s| {
                tracing::info!(topic = %t.topic, next_chunk = s.next_index(), open_packages = s.open_packages(), output = %t.output.display(), "spool recovered");
            })
        })
        .collect::<Result<Vec<_>, _>>()?)
}

/// Threads of the capture runtime: one per core, two to four.
fn capture_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4)
}

fn run(config: AgentConfig) -> Result<(), Box<dyn std::error::Error>> {
    bound_heap();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    // One agent per spool (a second one would interleave the queue and the chains); imports
    // lock their own directories below it and run beside.
    let _lock = edge_agent::spool::lock_dir(&config.spool_dir, "another edge-agent run")?;
    let metrics = Arc::new(Metrics::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // A worker per core (two at least): a heavy topic's decoding does not stall the
        // others' (each topic is its own task), nor the metrics endpoint.
        .worker_threads(capture_workers())
        .thread_name("capture")
        .enable_all()
        .build()?;
    if let Some(addr) = config.metrics {
        let m = metrics.clone();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|e| format!("metrics.listen {addr}: {e}"))?;
        runtime.spawn(async move {
            if let Err(e) = metrics::serve(listener, m).await {
                tracing::error!(error = %e, %addr, "metrics server stopped");
            }
        });
        tracing::info!(%addr, "metrics on /metrics, health on /health");
    }

    // keyd first: the spools need its DID, and nothing is accepted without it.
    let Some(keyd) = connect_keyd(&config, &metrics, &stop) else {
        return Ok(());
    };
    let mut spools = open_spools(&config, &keyd)?;
    let backlog = Arc::new(Backlog::new(
        &config.spool_dir,
        config.queue,
        config.batch.max_messages,
    )?);
    let context = {
        let _guard = runtime.enter();
        capture::start(&config, backlog.clone(), metrics.clone(), stop.clone())?
    };
    let result = run_pipeline(
        &config,
        &keyd,
        &mut spools,
        &backlog,
        &metrics,
        &stop,
        None,
        || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        },
    );
    drop(context);
    runtime.shutdown_timeout(Duration::from_secs(1));
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// Runs the signer, the writer and the uploads while `feed` fills the backlog; when `feed`
/// returns (or `stop`), drains the backlog, commits the open chunks and lets the uploads
/// catch up.
#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    config: &AgentConfig,
    keyd: &KeydClient,
    spools: &mut [TopicSpool],
    backlog: &Backlog,
    metrics: &Arc<Metrics>,
    stop: &AtomicBool,
    journal: Option<&Journal>,
    feed: impl FnOnce() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let uploads = edge_agent::outbox::open(config, spools)?;
    for t in &config.topics {
        for u in &t.uploads {
            tracing::info!(topic = %t.topic, output = %u.name, to = %u.path, "uploading committed chunks");
        }
    }
    let (sender, receiver) = crossbeam_channel::bounded(2);
    let writer_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let signer = std::thread::Builder::new()
            .name("signer".into())
            .spawn_scoped(scope, || {
                let r = pipeline::run_signer(config, backlog, keyd, metrics, sender, stop, journal);
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed);
                    backlog.close();
                }
                r
            })?;
        let writer = std::thread::Builder::new()
            .name("writer".into())
            .spawn_scoped(scope, || {
                let r = pipeline::run_writer(config, spools, keyd, metrics, receiver, stop);
                if r.is_err() {
                    metrics.pipeline_up.store(false, Ordering::Relaxed);
                    stop.store(true, Ordering::Relaxed);
                    backlog.close();
                }
                r
            })?;
        let uploader = (!uploads.is_empty())
            .then(|| {
                std::thread::Builder::new()
                    .name("uploads".into())
                    .spawn_scoped(scope, || {
                        yield_to_capture();
                        edge_agent::outbox::run(uploads, metrics.clone(), stop, &writer_done)
                    })
            })
            .transpose()?;
        let fed = feed();
        tracing::info!("stopping: draining the queue");
        backlog.close();
        let signed = signer.join().map_err(|_| "the signer thread panicked")?;
        let written = writer.join().map_err(|_| "the writer thread panicked")?;
        // The last chunks are committed: the uploads catch up for a few seconds more.
        writer_done.store(true, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        if let Some(uploader) = uploader {
            uploader.join().map_err(|_| "the upload thread panicked")?;
        }
        fed?;
        signed?;
        written?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

/// Imports `bags` one after another; `Ok(false)` when some messages did not decode.
fn import(
    config: AgentConfig,
    bags: &[PathBuf],
    name: Option<&str>,
    progress: bool,
) -> Result<bool, Box<dyn std::error::Error>> {
    bound_heap();
    let signalled = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::flag::register(signal, signalled.clone())?;
    }
    let metrics = Arc::new(Metrics::new());
    let mut clean = true;
    let mut keyd = None;
    for path in bags {
        // Per bag: the pipeline sets it when it finishes; a signal sets it and `signalled`.
        let stop = Arc::new(AtomicBool::new(signalled.load(Ordering::Relaxed)));
        for signal in [libc::SIGTERM, libc::SIGINT] {
            signal_hook::flag::register(signal, stop.clone())?;
        }
        let plan = import::Plan::new(&config, import::bag::Bag::open(path)?, name)?;
        let mut journal = Journal::open(
            &plan.journal_path(),
            &path.display().to_string(),
            plan.bag.bytes()?,
            &plan.topics(),
        )?;
        let chains = plan
            .config
            .topics
            .first()
            .and_then(|t| t.output.parent())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if journal.header().done {
            println!("{}: already imported into {chains}", path.display());
            continue;
        }
        if keyd.is_none() {
            keyd = connect_keyd(&config, &metrics, &stop);
        }
        let Some(keyd) = keyd.as_ref() else {
            return Ok(false); // stopped while waiting for keyd
        };
        let mut spools = open_spools(&plan.config, keyd)?;
        let last = spools
            .iter()
            .map(TopicSpool::last_sequence)
            .collect::<Result<Vec<_>, _>>()?;
        let next = import::resume_point(&plan, &journal, &last)?;
        if !journal.runs().is_empty() || next != journal.header().next {
            tracing::info!(bag = %path.display(), ?next, "resuming the import");
            journal.restart(next.clone())?;
        }
        let backlog = Backlog::new(
            &plan.root,
            plan.config.queue,
            plan.config.batch.max_messages,
        )?;
        let bar = if progress {
            let bar = indicatif::ProgressBar::new(plan.bag.work()?);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{elapsed_precise}] {wide_bar} {percent}% (eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(plan.name.clone());
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut fed = None;
        run_pipeline(
            &plan.config,
            keyd,
            &mut spools,
            &backlog,
            &metrics,
            &stop,
            Some(&journal),
            || {
                let f = import::feed(&plan, &next, &backlog, &metrics, &stop, |n| {
                    bar.set_position(n)
                })?;
                fed = Some(f);
                Ok(())
            },
        )?;
        bar.finish_and_clear();
        let Some(fed) = fed.filter(|f| !f.stopped) else {
            tracing::warn!(bag = %path.display(), "import stopped before the end: run it again to resume");
            return Ok(false);
        };
        if signalled.load(Ordering::Relaxed) {
            // Fed to the end, but the signer may have stopped with messages unsigned.
            tracing::warn!(bag = %path.display(), "stopped by a signal: run the import again to finish");
            return Ok(false);
        }
        if spools.iter().any(|s| s.open_packages() > 0) {
            tracing::warn!(bag = %path.display(), "keyd did not close the last chunks: run the import again to finish");
            return Ok(false);
        }
        let mut disk = pipeline::DiskPause::new(pipeline::DISK_BACKOFF_MAX_MS);
        if disk
            .retry(&metrics, &signalled, || journal.finish())?
            .is_none()
        {
            tracing::warn!(bag = %path.display(), "stopped while the disk is full: run the import again to finish");
            return Ok(false);
        }
        tracing::info!(bag = %path.display(), messages = fed.messages, imported = fed.queued, resumed_after = fed.skipped, undecodable = fed.undecodable, other_topics = fed.other_topics, chains = %chains, "imported");
        println!(
            "{}: {} messages into {chains} ({} already there, {} undecodable, {} of other topics)",
            path.display(),
            fed.queued,
            fed.skipped,
            fed.undecodable,
            fed.other_topics
        );
        clean &= fed.undecodable == 0;
    }
    Ok(clean)
}
