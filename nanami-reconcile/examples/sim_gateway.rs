//! Reconciles a gateway against the in-memory [`SimPlatform`] until it converges.
//!
//! Shows how an embedder drives a [`Reconciler`] by hand: compile a gateway's desired
//! state from the repository's example topology, print the [`plan`] from an empty
//! machine, then hand the state to a reconciler over a `watch` channel and run
//! passes (on a virtual clock: each pass's `now` is the previous pass's
//! `next_pass_at`) until the status is `Ready`. The second op is made to fail once,
//! so the output also shows the error policy's backoff and the retry. A real daemon
//! calls [`Reconciler::run`] instead, with the Linux platform.
//!
//! Run: `cargo run -p nanami-reconcile --example sim_gateway`.

use std::sync::Arc;
use std::time::Instant;

use nanami_model::{compile, GatewayId, Health, Topology};
use nanami_reconcile::sim::SimPlatform;
use nanami_reconcile::{plan, Condition, Config, Desired, Observed, Reconciler};
use rand::SeedableRng as _;
use tokio::sync::watch;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let topology = Topology::from_yaml(include_str!("../../examples/topology.yaml"))?;
    let gateway = GatewayId::new("gw-fra-1")?;
    let state = compile(&topology, &Health::all_up(), &gateway)?;

    let first = plan(&state, &Observed::default());
    println!(
        "plan for {gateway} from an empty machine: {} op(s)",
        first.len()
    );
    for op in &first {
        println!("  {op}");
    }

    let mut platform = SimPlatform::default();
    platform.fail_nth_op(2);
    let (_desired_tx, desired_rx) = watch::channel(Some(Arc::new(Desired {
        generation: 1,
        state: state.clone(),
    })));
    let rng = Box::new(rand::rngs::StdRng::from_entropy());
    let mut reconciler =
        Reconciler::new(platform, desired_rx, rng, Config::default(), Instant::now());

    let mut now = Instant::now();
    loop {
        let action = reconciler.pass(now).await;
        let status = reconciler.status();
        println!(
            "pass {}: {:?}, {} op(s) planned, next in {:?}",
            status.passes,
            status.condition,
            status.last_plan_len,
            action.requeue_after()
        );
        if status.condition == Condition::Ready || status.passes >= 10 {
            break;
        }
        now = reconciler.next_pass_at();
    }

    let platform = reconciler.platform();
    println!("applied {} op(s) in all", platform.applied().len());
    if reconciler.status().condition != Condition::Ready || platform.state().owned() != state {
        return Err("the simulated gateway did not converge".into());
    }
    println!("converged: the machine matches generation 1");
    Ok(())
}
