//! The client half of the `coopr` CLI: `coopr cluster ...` and `coopr admin ...` against the
//! user API (`<server>/v2`, see COOPR_API.md).
//!
//! ```text
//!  clap command ──► run_cluster / run_admin ──► http::Api (headers, Idempotency-Key, retries)
//!                          │                                 │
//!                          ▼                                 ▼
//!                   render (tables, JSON,           coopr server :55054/v2
//!                   wait verdicts; no I/O)
//! ```
//!
//! Output contract: results go to stdout (`cluster create` prints only the new id, so
//! `ID=$(coopr cluster create ...)` works); progress bars and errors go to stderr. A server error
//! is printed as `error: <status> <code>: <message>`.

mod http;
mod render;
mod views;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use coopr_types::{ClusterAction, ClusterId};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};

use self::http::Api;
use self::render::{
    format_cluster_table, format_maintenance_plan, format_tenant_table, judge, parse_duration_ms,
    parse_json_object, path_segment, status_filter, ClusterSummary, StatusReply, TenantSummary,
    Verdict, WaitGoal,
};

/// How often `--wait` polls `/status`.
const POLL_INTERVAL_MS: u64 = 250;

/// Where the server is and who is asking.
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// Server base URL (the user API, without /v2)
    #[arg(
        long,
        env = "COOPR_SERVER",
        default_value = "http://127.0.0.1:55054",
        global = true
    )]
    pub server: String,
    /// Tenant name (sent as Coopr-TenantID)
    #[arg(long, env = "COOPR_TENANT", default_value = "demo", global = true)]
    pub tenant: String,
    /// User id (sent as Coopr-UserID)
    #[arg(long, env = "COOPR_USER", default_value = "demo", global = true)]
    pub user: String,
    /// API key (sent as Coopr-ApiKey); it must be bound to the user above, or created for any
    /// user of the tenant, which never acts as `admin`
    #[arg(
        long = "api-key",
        env = "COOPR_API_KEY",
        default_value = "demo-key",
        global = true,
        hide_env_values = true
    )]
    pub api_key: String,
    /// Print the server's JSON instead of a table (for scripts)
    #[arg(long, global = true)]
    pub json: bool,
}

/// `--wait` and its bound, shared by every command that starts a job.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct WaitArgs {
    /// Wait until the job finishes, showing progress on stderr
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
}

/// A service job on a running cluster: all services, or one with `--service`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceJobArgs {
    /// Cluster id
    pub id: ClusterId,
    /// Act on this service only (default: all services)
    #[arg(long)]
    pub service: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `cluster create`: the body of `POST /clusters`.
#[derive(clap::Args, Debug, Clone)]
pub struct CreateArgs {
    /// Cluster name
    pub name: String,
    /// Cluster template name
    #[arg(long)]
    pub template: String,
    /// Number of machines
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub machines: u32,
    /// Services, comma-separated (default: the template's)
    #[arg(long, value_delimiter = ',')]
    pub services: Vec<String>,
    #[arg(long)]
    pub provider: Option<String>,
    #[arg(long)]
    pub hardwaretype: Option<String>,
    #[arg(long)]
    pub imagetype: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Initial lease, e.g. 2d or 12h (default: the template's)
    #[arg(long, value_parser = parse_duration_ms)]
    pub lease: Option<u64>,
    /// Cluster config, a JSON object
    #[arg(long, value_parser = parse_json_object)]
    pub config: Option<Value>,
    /// Provider fields (e.g. credentials), a JSON object
    #[arg(long, value_parser = parse_json_object)]
    pub provider_fields: Option<Value>,
    /// Idempotency key, so a retried create cannot make a second cluster
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Create a cluster from a template; prints the new cluster id
    Create(Box<CreateArgs>),
    /// List clusters as a table
    List {
        /// Only these statuses, comma-separated (pending,active,incomplete,inconsistent,terminated)
        #[arg(long, value_parser = status_filter)]
        status: Option<String>,
    },
    /// Show a cluster: summary, then its nodes with hostnames and addresses
    Show { id: ClusterId },
    /// Show the current job's progress
    Status {
        id: ClusterId,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show the cluster's job plans (JSON)
    Plans { id: ClusterId },
    /// Delete a cluster
    Delete {
        id: ClusterId,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show the cluster config (JSON)
    Config { id: ClusterId },
    /// Replace the cluster config
    Reconfigure {
        id: ClusterId,
        /// New cluster config, a JSON object
        #[arg(long, value_parser = parse_json_object)]
        config: Value,
        /// Do not restart services after configuring
        #[arg(long)]
        no_restart: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List the cluster's services
    Services { id: ClusterId },
    /// Add services to a cluster
    AddServices {
        id: ClusterId,
        /// Services to add
        #[arg(required = true, num_args = 1.., value_delimiter = ',')]
        services: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Start services
    StartServices(ServiceJobArgs),
    /// Stop services
    StopServices(ServiceJobArgs),
    /// Restart services
    RestartServices(ServiceJobArgs),
    /// Fail a running cluster create
    Abort { id: ClusterId },
    /// Pause the running job (no new tasks are handed out)
    Pause { id: ClusterId },
    /// Resume a paused job
    Resume { id: ClusterId },
    /// Set when the cluster's lease expires
    #[command(group = clap::ArgGroup::new("when").required(true).args(["at", "in_"]))]
    Expire {
        id: ClusterId,
        /// Absolute expiry time, in ms since the Unix epoch
        #[arg(long)]
        at: Option<u64>,
        /// Expiry relative to now, e.g. 2h or 1d12h
        #[arg(long = "in", id = "in_", value_parser = parse_duration_ms)]
        in_: Option<u64>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum AdminCommand {
    /// List tenants (superadmin)
    Tenants,
    /// Create a tenant (superadmin)
    CreateTenant {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        max_clusters: Option<u64>,
        #[arg(long)]
        max_nodes: Option<u64>,
        /// Provisioner workers reserved for the tenant
        #[arg(long, default_value_t = 0)]
        workers: u64,
        /// Copy the superadmin catalog and plugin resources into the tenant
        #[arg(long)]
        bootstrap: bool,
    },
    /// Show registered provisioners: address, capacity, use per tenant (superadmin)
    Provisioners,
    /// Replication per shard: owner, replica watermarks, lag_ms, unreplicated records/age.
    Replication,
    /// What this DC wrote as a shard's owner after another DC took the shard over (never
    /// replicated): shard, old epoch and seq, tenant, cluster, job, kind, time, new owner.
    LostOperations,
    /// The shard map: owner, replica DCs, epoch and status of every shard, the DC leases and
    /// the ownership history.
    Shards,
    /// Every node of every DC: its DC-log role, leader, term, placement role and readiness, or
    /// unreachable
    Dcs,
    /// Hand a cluster shard over to one of its replica DCs (graceful: nothing is lost; running
    /// operations finish at the old owner first)
    Handover {
        /// Shard number
        shard: u32,
        /// The DC that takes the shard over
        #[arg(long)]
        to: String,
    },
    /// Give up a handover in progress (the owner writes the shard again)
    AbortHandover {
        /// Shard number
        shard: u32,
    },
    /// Planned maintenance: hand every shard of a DC over to other DCs, a few at a time, and
    /// take no shard there until `undrain` (graceful: nothing is lost; each handover is bounded
    /// by handover_timeout_ms). Prints per shard the target and what blocks it.
    Drain {
        /// The DC to drain
        dc: String,
        /// Only show the plan: where each shard would go and what blocks it
        #[arg(long)]
        dry_run: bool,
    },
    /// End a DC's maintenance: it may take shards again, and its home shards (those of the
    /// initial placement) are handed back to it a few at a time.
    Undrain {
        /// The DC to undrain
        dc: String,
        /// Only show the plan
        #[arg(long)]
        dry_run: bool,
    },
    /// Replace the tenant's catalog with the one in a JSON file (the shape `export` prints)
    Import { file: std::path::PathBuf },
    /// Print the tenant's catalog as JSON
    Export,
}

/// Runs one `coopr cluster` command. Errors are printed to stderr as `error: ...` before being
/// returned, so the caller only needs to turn `Err` into a non-zero exit.
pub async fn run_cluster(conn: &Connection, cmd: ClusterCommand) -> anyhow::Result<()> {
    report(cluster(conn, cmd).await)
}

/// Runs one `coopr admin` command. Errors are printed like [`run_cluster`]'s.
pub async fn run_admin(conn: &Connection, cmd: AdminCommand) -> anyhow::Result<()> {
    report(admin(conn, cmd).await)
}

fn report(result: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = &result {
        eprintln!("error: {e:#}");
    }
    result
}

async fn cluster(conn: &Connection, cmd: ClusterCommand) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    match cmd {
        ClusterCommand::Create(args) => {
            let CreateArgs {
                name,
                template,
                machines,
                services,
                provider,
                hardwaretype,
                imagetype,
                description,
                lease,
                config,
                provider_fields,
                idempotency_key,
                wait,
            } = *args;
            let mut body =
                json!({ "name": name, "clusterTemplate": template, "numMachines": machines });
            let fields = [
                ("description", description.map(Value::from)),
                ("provider", provider.map(Value::from)),
                ("hardwaretype", hardwaretype.map(Value::from)),
                ("imagetype", imagetype.map(Value::from)),
                ("initialLeaseDuration", lease.map(Value::from)),
                ("config", config),
                ("providerFields", provider_fields),
                (
                    "services",
                    (!services.is_empty()).then(|| Value::from(services)),
                ),
            ];
            for (key, value) in fields {
                if let Some(value) = value {
                    body[key] = value;
                }
            }
            let reply = api
                .send(
                    Method::POST,
                    "/clusters",
                    Some(&body),
                    idempotency_key.as_deref(),
                )
                .await?;
            let id = reply
                .get("id")
                .and_then(Value::as_str)
                .with_context(|| format!("the create reply has no \"id\": {reply}"))?
                .to_owned();
            // Print the id before waiting: a script keeps it even if the wait fails.
            println!("{id}");
            if wait.wait {
                wait_for(&api, &id, WaitGoal::Job(ClusterAction::ClusterCreate), wait).await?;
            }
        }
        ClusterCommand::List { status } => {
            let path = match status {
                Some(filter) => format!("/clusters?status={filter}"),
                None => "/clusters".to_owned(),
            };
            let reply = api.get(&path).await?;
            let clusters: Vec<ClusterSummary> = serde_json::from_value(reply)
                .context("the cluster list is not an array of clusters")?;
            print!("{}", format_cluster_table(&clusters));
        }
        ClusterCommand::Show { id } => show(
            conn,
            &api.get(&format!("/clusters/{id}")).await?,
            views::format_cluster,
        )?,
        ClusterCommand::Status { id, wait } => {
            let id = id.to_string();
            let last = if wait.wait {
                wait_for(&api, &id, WaitGoal::CurrentJob, wait).await?
            } else {
                api.get(&format!("/clusters/{id}/status")).await?
            };
            show(conn, &last, views::format_status)?;
        }
        ClusterCommand::Plans { id } => {
            print_json(&api.get(&format!("/clusters/{id}/plans")).await?)?
        }
        ClusterCommand::Delete { id, wait } => {
            let id = id.to_string();
            api.send(Method::DELETE, &format!("/clusters/{id}"), None, None)
                .await?;
            if wait.wait {
                wait_for(&api, &id, WaitGoal::Terminated, wait).await?;
            }
        }
        ClusterCommand::Config { id } => {
            print_json(&api.get(&format!("/clusters/{id}/config")).await?)?
        }
        ClusterCommand::Reconfigure {
            id,
            config,
            no_restart,
            wait,
        } => {
            let id = id.to_string();
            let restart = !no_restart;
            let body = json!({ "config": config, "restart": restart });
            api.send(
                Method::PUT,
                &format!("/clusters/{id}/config"),
                Some(&body),
                None,
            )
            .await?;
            if wait.wait {
                let action = if restart {
                    ClusterAction::ClusterConfigureWithRestart
                } else {
                    ClusterAction::ClusterConfigure
                };
                wait_for(&api, &id, WaitGoal::Job(action), wait).await?;
            }
        }
        ClusterCommand::Services { id } => {
            let reply = api.get(&format!("/clusters/{id}/services")).await?;
            match serde_json::from_value::<Vec<String>>(reply.clone()) {
                Ok(services) => services.iter().for_each(|s| println!("{s}")),
                Err(_) => print_json(&reply)?,
            }
        }
        ClusterCommand::AddServices { id, services, wait } => {
            let id = id.to_string();
            let body = json!({ "services": services });
            api.send(
                Method::POST,
                &format!("/clusters/{id}/services"),
                Some(&body),
                None,
            )
            .await?;
            if wait.wait {
                wait_for(&api, &id, WaitGoal::Job(ClusterAction::AddServices), wait).await?;
            }
        }
        ClusterCommand::StartServices(args) => {
            service_job(&api, args, "start", ClusterAction::StartServices).await?
        }
        ClusterCommand::StopServices(args) => {
            service_job(&api, args, "stop", ClusterAction::StopServices).await?
        }
        ClusterCommand::RestartServices(args) => {
            service_job(&api, args, "restart", ClusterAction::RestartServices).await?
        }
        ClusterCommand::Abort { id } => {
            api.send(Method::POST, &format!("/clusters/{id}/abort"), None, None)
                .await?;
        }
        ClusterCommand::Pause { id } => {
            api.send(Method::POST, &format!("/clusters/{id}/pause"), None, None)
                .await?;
        }
        ClusterCommand::Resume { id } => {
            api.send(Method::POST, &format!("/clusters/{id}/resume"), None, None)
                .await?;
        }
        ClusterCommand::Expire { id, at, in_ } => {
            let expire_time_ms = match (at, in_) {
                (Some(at), _) => at,
                (None, Some(delta_ms)) => now_ms()?
                    .checked_add(delta_ms)
                    .context("the expiry time is too far in the future")?,
                (None, None) => bail!("give --at <ms> or --in <duration>"),
            };
            let body = json!({ "expireTime": expire_time_ms });
            api.send(Method::POST, &format!("/clusters/{id}"), Some(&body), None)
                .await?;
            eprintln!("cluster {id} expires at {expire_time_ms} ms");
        }
    }
    Ok(())
}

async fn service_job(
    api: &Api,
    args: ServiceJobArgs,
    verb: &str,
    action: ClusterAction,
) -> anyhow::Result<()> {
    let id = args.id.to_string();
    let path = match &args.service {
        Some(service) => {
            let service = path_segment("service name", service).map_err(anyhow::Error::msg)?;
            format!("/clusters/{id}/services/{service}/{verb}")
        }
        None => format!("/clusters/{id}/services/{verb}"),
    };
    api.send(Method::POST, &path, None, None).await?;
    if args.wait.wait {
        wait_for(api, &id, WaitGoal::Job(action), args.wait).await?;
    }
    Ok(())
}

async fn admin(conn: &Connection, cmd: AdminCommand) -> anyhow::Result<()> {
    let api = Api::new(conn)?;
    match cmd {
        AdminCommand::Tenants => {
            let reply = api.get("/tenants").await?;
            let tenants: Vec<TenantSummary> = serde_json::from_value(reply)
                .context("the tenant list is not an array of tenants")?;
            print!("{}", format_tenant_table(&tenants));
        }
        AdminCommand::CreateTenant {
            name,
            description,
            max_clusters,
            max_nodes,
            workers,
            bootstrap,
        } => {
            let mut tenant = json!({ "name": name, "workers": workers });
            let fields = [
                ("description", description.map(Value::from)),
                ("maxClusters", max_clusters.map(Value::from)),
                ("maxNodes", max_nodes.map(Value::from)),
            ];
            for (key, value) in fields {
                if let Some(value) = value {
                    tenant[key] = value;
                }
            }
            let body = json!({ "tenant": tenant, "bootstrap": bootstrap });
            api.send(Method::POST, "/tenants", Some(&body), None)
                .await?;
        }
        AdminCommand::Provisioners => show(
            conn,
            &api.get("/provisioners").await?,
            views::format_provisioners,
        )?,
        AdminCommand::Replication => show(
            conn,
            &api.get("/admin/replication").await?,
            views::format_replication,
        )?,
        AdminCommand::LostOperations => print_json(&api.get("/admin/lost-operations").await?)?,
        AdminCommand::Dcs => show(conn, &api.get("/admin/dcs").await?, views::format_dcs)?,
        AdminCommand::Shards => {
            let map = api.get("/admin/shards").await?;
            if conn.json {
                print_json(&map)?;
            } else {
                let replication = api.get("/admin/replication").await?;
                print!("{}", views::format_shards(&map, &replication));
            }
        }
        AdminCommand::Handover { shard, to } => {
            let body = json!({ "to": to });
            let path = format!("/admin/shards/{shard}/handover");
            print_json(&api.send(Method::POST, &path, Some(&body), None).await?)?;
        }
        AdminCommand::AbortHandover { shard } => {
            let path = format!("/admin/shards/{shard}/handover/abort");
            print_json(&api.send(Method::POST, &path, None, None).await?)?;
        }
        AdminCommand::Drain { dc, dry_run } => maintenance(&api, "drain", &dc, dry_run).await?,
        AdminCommand::Undrain { dc, dry_run } => maintenance(&api, "undrain", &dc, dry_run).await?,
        AdminCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let catalog: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", file.display()))?;
            if !catalog.is_object() {
                bail!(
                    "{} must hold a JSON object like the output of `coopr admin export`",
                    file.display()
                );
            }
            api.send(Method::POST, "/import", Some(&catalog), None)
                .await?;
        }
        AdminCommand::Export => print_json(&api.get("/export").await?)?,
    }
    Ok(())
}

/// `coopr admin drain|undrain DC [--dry-run]`: prints the plan the server answers.
async fn maintenance(api: &Api, action: &str, dc: &str, dry_run: bool) -> anyhow::Result<()> {
    let dc = path_segment("DC name", dc).map_err(anyhow::Error::msg)?;
    let path = format!("/admin/dcs/{dc}/{action}");
    let body = json!({ "dry_run": dry_run });
    let answer = api.send(Method::POST, &path, Some(&body), None).await?;
    print!("{}", format_maintenance_plan(&answer));
    Ok(())
}

/// Prints `value` as a table for people, or as the server's JSON with `--json`.
fn show(conn: &Connection, value: &Value, table: fn(&Value) -> String) -> anyhow::Result<()> {
    if conn.json {
        print_json(value)
    } else {
        print!("{}", table(value));
        Ok(())
    }
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn now_ms() -> anyhow::Result<u64> {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    u64::try_from(since_epoch.as_millis()).context("the system clock is out of range")
}

/// Polls `/status` every [`POLL_INTERVAL_MS`] until `goal` is reached, fails, or the timeout
/// passes; shows a progress bar on stderr (indicatif hides it when stderr is not a terminal).
/// Returns the last status reply.
async fn wait_for(api: &Api, id: &str, goal: WaitGoal, wait: WaitArgs) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(wait.timeout_secs);
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} {msg}")
            .context("progress bar template")?
            .progress_chars("=> ");
    bar.set_style(style);
    let path = format!("/clusters/{id}/status");
    let outcome = loop {
        let raw = match api.get(&path).await {
            Ok(raw) => raw,
            Err(e) => break Err(e),
        };
        let reply: StatusReply = match serde_json::from_value(raw.clone()) {
            Ok(reply) => reply,
            Err(e) => {
                break Err(anyhow::Error::new(e).context(format!("unexpected status reply: {raw}")))
            }
        };
        bar.set_length(reply.stepstotal);
        bar.set_position(reply.stepscompleted.min(reply.stepstotal));
        bar.set_message(format!(
            "{} {} (cluster {})",
            reply.action, reply.actionstatus, reply.status
        ));
        match judge(goal, &reply) {
            Verdict::Done => break Ok(raw),
            Verdict::Failed(why) => break Err(anyhow::Error::msg(why)),
            Verdict::KeepWaiting => {}
        }
        if Instant::now() >= deadline {
            break Err(anyhow::anyhow!(
                "timed out after {}s waiting for cluster {id}; last status: {}",
                wait.timeout_secs,
                reply.describe()
            ));
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    };
    bar.finish_and_clear();
    outcome
}

#[cfg(test)]
mod tests {
    use clap::{Parser, Subcommand};

    use super::*;

    /// A stand-in for the real `main.rs` wiring, to check the argument definitions.
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Subcommand, Debug)]
    enum Top {
        #[command(subcommand)]
        Cluster(ClusterCommand),
        #[command(subcommand)]
        Admin(AdminCommand),
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("coopr").chain(args.iter().copied()))
    }

    /// `admin drain` and `admin undrain` take a DC and `--dry-run`.
    #[test]
    fn drain_and_undrain_take_a_dc() {
        let cli = parse(&["admin", "drain", "b", "--dry-run"]).unwrap();
        assert!(
            matches!(&cli.command, Top::Admin(AdminCommand::Drain { dc, dry_run: true }) if dc == "b"),
            "{cli:?}"
        );
        let cli = parse(&["admin", "undrain", "b"]).unwrap();
        assert!(
            matches!(&cli.command, Top::Admin(AdminCommand::Undrain { dc, dry_run: false }) if dc == "b"),
            "{cli:?}"
        );
        assert!(parse(&["admin", "drain"]).is_err());
    }

    #[test]
    fn argument_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn create_parses_services_and_config() {
        let cli = parse(&[
            "cluster",
            "create",
            "dev",
            "--template",
            "hadoop",
            "--machines",
            "3",
            "--services",
            "zk,hdfs",
            "--config",
            r#"{"a":1}"#,
            "--wait",
            "--timeout-secs",
            "5",
        ])
        .expect("valid create");
        match cli.command {
            Top::Cluster(ClusterCommand::Create(args)) => {
                assert_eq!(args.services, ["zk", "hdfs"]);
                assert_eq!(args.machines, 3);
                assert_eq!(args.config, Some(json!({"a": 1})));
                assert!(args.wait.wait);
                assert_eq!(args.wait.timeout_secs, 5);
            }
            other => panic!("unexpected parse {other:?}"),
        }
        assert!(parse(&[
            "cluster",
            "create",
            "dev",
            "--template",
            "t",
            "--machines",
            "0"
        ])
        .is_err());
        assert!(parse(&[
            "cluster",
            "create",
            "dev",
            "--template",
            "t",
            "--machines",
            "1",
            "--config",
            "[]"
        ])
        .is_err());
    }

    #[test]
    fn expire_needs_exactly_one_of_at_and_in() {
        match parse(&["cluster", "expire", "00000079", "--in", "2h"])
            .expect("valid expire")
            .command
        {
            Top::Cluster(ClusterCommand::Expire {
                id,
                at: None,
                in_: Some(ms),
            }) => {
                assert_eq!(id.to_string(), "00000079");
                assert_eq!(ms, 7_200_000);
            }
            other => panic!("unexpected parse {other:?}"),
        }
        assert!(parse(&["cluster", "expire", "00000079"]).is_err());
        assert!(parse(&["cluster", "expire", "00000079", "--at", "1", "--in", "2h"]).is_err());
        assert!(parse(&["cluster", "expire", "00000079", "--in", "2"]).is_err());
    }

    #[test]
    fn ids_and_status_filters_are_checked_before_any_request() {
        assert!(parse(&["cluster", "show", "../tenants"]).is_err());
        assert!(parse(&["cluster", "list", "--status", "bogus"]).is_err());
        match parse(&[
            "--tenant",
            "acme",
            "cluster",
            "list",
            "--status",
            "Active,pending",
        ])
        .expect("valid list")
        {
            Cli {
                conn,
                command: Top::Cluster(ClusterCommand::List { status }),
            } => {
                assert_eq!(conn.tenant, "acme");
                assert_eq!(status.as_deref(), Some("active,pending"));
            }
            other => panic!("unexpected parse {other:?}"),
        }
    }

    #[test]
    fn service_jobs_and_admin_commands_parse() {
        assert!(parse(&[
            "cluster",
            "restart-services",
            "1",
            "--service",
            "zk",
            "--wait"
        ])
        .is_ok());
        assert!(parse(&["cluster", "add-services", "1"]).is_err());
        assert!(parse(&["cluster", "add-services", "1", "zk", "hdfs"]).is_ok());
        assert!(parse(&[
            "admin",
            "create-tenant",
            "acme",
            "--max-clusters",
            "3",
            "--workers",
            "2"
        ])
        .is_ok());
        assert!(parse(&["admin", "import", "catalog.json"]).is_ok());
    }
}
