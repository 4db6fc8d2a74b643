//! Scenario `plan`: what a big cluster costs the engine and the state machine, with no I/O.
//!
//! ```text
//!  examples/catalog.json ─► lamp template, size max raised to 10,000
//!        │
//!        ├─► solve_layout(n nodes) ─► plan(CLUSTER_CREATE) ─► stages of tasks
//!        │
//!        └─► State (tenant + catalog) ─► encode_entry(CreateCluster) ─► State::apply
//! ```
//!
//! Each figure is the median of repeated runs (at least `--min-reps`, more while the per-size
//! budget lasts). `State::apply` runs on a fresh copy of a state holding only the tenant and its
//! catalog, so it is the cost of one create with nothing else in the shard.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use coopr_engine::{plan, solve_layout, LayoutRequest, NodeLayout, PlanInput};
use coopr_state::{encode_entry, ClusterSpec, Command, Entry, NodeSpec, State};
use coopr_types::{
    ClusterAction, ClusterId, ClusterTemplate, NodeId, Provider, ShardId, Tenant, UNLIMITED,
};
use serde_json::Value;

use crate::stats::{median, ms};

const CATALOG: &str = include_str!("../../../examples/catalog.json");
const TENANT: &str = "bench";
const TEMPLATE: &str = "lamp";

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Cluster sizes to plan.
    #[arg(long, value_delimiter = ',', default_values_t = [100u32, 1_000, 10_000])]
    nodes: Vec<u32>,
    /// Fewest repetitions per size.
    #[arg(long, default_value_t = 5)]
    min_reps: u32,
    /// Most repetitions per size.
    #[arg(long, default_value_t = 101)]
    max_reps: u32,
    /// Time budget per size (ms); repetitions stop once it is spent and `min_reps` are done.
    #[arg(long, default_value_t = 3_000)]
    budget_ms: u64,
}

/// The example catalog, parsed once.
pub(crate) struct Catalog {
    json: Value,
    template: ClusterTemplate,
    services: coopr_types::ServiceDefs,
    provider: Provider,
}

impl Catalog {
    pub(crate) fn load(max_nodes: u32) -> anyhow::Result<Catalog> {
        let json: Value = serde_json::from_str(CATALOG)?;
        let named = |kind: &str, name: &str| -> anyhow::Result<Value> {
            json[kind]
                .as_array()
                .and_then(|all| all.iter().find(|e| e["name"] == name))
                .cloned()
                .with_context(|| format!("examples/catalog.json has no {kind} {name}"))
        };
        let mut template: ClusterTemplate =
            serde_json::from_value(named("clustertemplates", TEMPLATE)?)?;
        // The shipped lamp template stops at 50 machines; raise it to plan big clusters.
        template.constraints.size.max = template.constraints.size.max.max(max_nodes);
        let provider: Provider =
            serde_json::from_value(named("providers", &template.defaults.provider)?)?;
        let services = json["services"]
            .as_array()
            .context("no services")?
            .iter()
            .map(|s| {
                Ok((
                    s["name"]
                        .as_str()
                        .context("service without name")?
                        .to_string(),
                    std::sync::Arc::new(serde_json::from_value(s.clone())?),
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Catalog {
            json,
            template,
            services,
            provider,
        })
    }

    pub(crate) fn layout(&self, nodes: u32) -> anyhow::Result<Vec<NodeLayout>> {
        solve_layout(&LayoutRequest {
            template: &self.template,
            num_machines: nodes,
            services: &[],
            hardwaretype: &self.template.defaults.hardwaretype,
            imagetype: &self.template.defaults.imagetype,
            catalog_services: &self.services,
        })
        .map_err(|e| anyhow!("layout of {nodes} nodes: {e}"))
    }

    /// A field of a hardware or image type's provider map (`flavor`, `image`, `sshuser`).
    fn provider_field(&self, kind: &str, name: &str, field: &str) -> String {
        self.json[kind]
            .as_array()
            .and_then(|all| all.iter().find(|e| e["name"] == name))
            .and_then(|e| e["providermap"][&self.provider.name][field].as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// The state a fresh node has after a tenant imported this catalog (64 shards).
    pub(crate) fn state(&self) -> anyhow::Result<State> {
        self.state_with(64)
    }

    /// [`Catalog::state`] with `shards` cluster shards.
    pub(crate) fn state_with(&self, shards: u32) -> anyhow::Result<State> {
        let mut state = State::new(shards);
        let tenant = Tenant {
            id: "00000000-0000-4000-8000-000000000001".into(),
            name: TENANT.into(),
            description: String::new(),
            workers: 0,
            max_clusters: UNLIMITED,
            max_nodes: UNLIMITED,
        };
        let entities = coopr_server::api::catalog::validate_import(&self.json)
            .map_err(|e| anyhow!("example catalog: {}", e.message))?;
        for command in [
            Command::PutTenant { tenant },
            Command::ImportCatalog {
                tenant: TENANT.into(),
                entities,
            },
        ] {
            state
                .apply(&Entry {
                    now_ms: 1,
                    idempotency_key: None,
                    fence: None,
                    command,
                })
                .map_err(|e| anyhow!("seeding the state: {e:?}"))?;
        }
        Ok(state)
    }

    /// The command `POST /v2/clusters` would propose for this layout (as the server builds it).
    pub(crate) fn create_entry(&self, layout: &[NodeLayout]) -> Entry {
        let t = &self.template;
        let flavor = self.provider_field("hardwaretypes", &t.defaults.hardwaretype, "flavor");
        let image = self.provider_field("imagetypes", &t.defaults.imagetype, "image");
        let sshuser = self.provider_field("imagetypes", &t.defaults.imagetype, "sshuser");
        let nodes = layout
            .iter()
            .map(|n| NodeSpec {
                nodenum: n.nodenum,
                services: n.services.clone(),
                hardwaretype: n.hardwaretype.clone(),
                imagetype: n.imagetype.clone(),
                flavor: flavor.clone(),
                image: image.clone(),
                sshuser: sshuser.clone(),
            })
            .collect();
        let spec = ClusterSpec {
            tenant: TENANT.into(),
            user: "bench".into(),
            name: "big".into(),
            description: String::new(),
            template: t.clone(),
            provider: self.provider.clone(),
            hardwaretype: t.defaults.hardwaretype.clone(),
            imagetype: t.defaults.imagetype.clone(),
            dns_suffix: t.defaults.dns_suffix.clone(),
            services: t.defaults.services.clone(),
            config: t.defaults.config.clone(),
            initial_lease_ms: t.administration.leaseduration.initial,
            nodes,
            tenant_incarnation: String::new(),
        };
        Entry {
            now_ms: 1_700_000_000_000,
            idempotency_key: None,
            fence: None,
            command: Command::CreateCluster {
                shard: ShardId(0),
                spec: Box::new(spec),
            },
        }
    }
}

/// Runs `f` at least `min_reps` times and then while the budget lasts; returns the median.
fn measure(
    args: &PlanArgs,
    mut f: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<(Duration, u32)> {
    let budget = Duration::from_millis(args.budget_ms);
    let started = Instant::now();
    let mut samples = Vec::new();
    while (samples.len() as u32) < args.max_reps.max(1)
        && ((samples.len() as u32) < args.min_reps.max(1) || started.elapsed() < budget)
    {
        samples.push(f()?);
    }
    let reps = samples.len() as u32;
    Ok((median(&mut samples), reps))
}

struct Row {
    nodes: u32,
    stages: usize,
    tasks: usize,
    layout: (Duration, u32),
    plan: (Duration, u32),
    encode: (Duration, u32),
    entry_bytes: usize,
    apply: (Duration, u32),
    apply_tasks: usize,
}

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let largest = args.nodes.iter().copied().max().unwrap_or(0);
    let catalog = Catalog::load(largest)?;
    let base_state = catalog.state()?;
    let mut rows = Vec::new();
    for &n in &args.nodes {
        eprintln!("-- {n} nodes");
        let layout_time = measure(&args, || {
            let started = Instant::now();
            let layout = catalog.layout(n)?;
            let elapsed = started.elapsed();
            assert_eq!(layout.len(), n as usize);
            Ok(elapsed)
        })?;
        let layout = catalog.layout(n)?;
        let nodes: Vec<(NodeId, Vec<String>)> = layout
            .iter()
            .map(|l| (NodeId::derive(ClusterId(1), l.nodenum), l.services.clone()))
            .collect();
        let input = PlanInput {
            action: ClusterAction::ClusterCreate,
            nodes: &nodes,
            catalog_services: &catalog.services,
            target_services: &[],
        };
        let stages = plan(&input);
        let plan_time = measure(&args, || {
            let started = Instant::now();
            let stages = plan(&input);
            let elapsed = started.elapsed();
            assert!(!stages.is_empty());
            Ok(elapsed)
        })?;
        let entry = catalog.create_entry(&layout);
        let entry_bytes = encode_entry(&entry).len();
        let encode_time = measure(&args, || {
            let started = Instant::now();
            let bytes = encode_entry(&entry);
            let elapsed = started.elapsed();
            assert_eq!(bytes.len(), entry_bytes);
            Ok(elapsed)
        })?;
        let mut apply_tasks = 0;
        let apply_time = measure(&args, || {
            let mut state = base_state.clone();
            let started = Instant::now();
            let outcome = state.apply(&entry);
            let elapsed = started.elapsed();
            outcome.map_err(|e| anyhow!("CreateCluster of {n} nodes rejected: {e:?}"))?;
            apply_tasks = state.queued_tasks().count();
            drop(state);
            Ok(elapsed)
        })?;
        rows.push(Row {
            nodes: n,
            stages: stages.len(),
            tasks: stages.iter().map(Vec::len).sum(),
            layout: layout_time,
            plan: plan_time,
            encode: encode_time,
            entry_bytes,
            apply: apply_time,
            apply_tasks,
        });
    }

    println!("## coopr-bench plan\n");
    println!(
        "template `{TEMPLATE}` of examples/catalog.json (services {:?}, mysql limited to 1 node), size max raised to {largest}; \
         median of repeated runs (reps in parentheses)\n",
        catalog.template.defaults.services
    );
    println!("| nodes | stages | tasks | solve_layout ms | plan ms | encode entry ms | entry KiB | State::apply(CreateCluster) ms | tasks queued by apply |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} ({}) | {} ({}) | {} ({}) | {:.1} | {} ({}) | {} |",
            r.nodes,
            r.stages,
            r.tasks,
            ms(r.layout.0),
            r.layout.1,
            ms(r.plan.0),
            r.plan.1,
            ms(r.encode.0),
            r.encode.1,
            r.entry_bytes as f64 / 1024.0,
            ms(r.apply.0),
            r.apply.1,
            r.apply_tasks,
        );
    }
    Ok(())
}
