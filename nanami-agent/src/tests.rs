//! The agent's rules on a virtual clock: `now` is a plain number of milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nanami_model::{GatewayChoice, GatewayId, NetworkId, NodeConfig, NodeId, ProbePolicy};
use nanami_model::{PrivateKey, WorkspaceId};
use proptest::prelude::*;

use crate::{
    by_generation, Action, Agent, Config, Credential, DesiredState, Event, Failure, Fatal,
    Freshness, Refusal, Start, VersionedConfig, BACKOFF_FIRST, BACKOFF_MAX,
};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// A gateway-like desired state: a generation that only grows, and content.
#[derive(Debug, Clone, PartialEq)]
struct Gen {
    generation: u64,
    content: &'static str,
}

impl DesiredState for Gen {
    type Version = u64;

    fn version(&self) -> u64 {
        self.generation
    }

    fn freshness(&self, held: &Self) -> Freshness {
        by_generation(
            self.generation,
            held.generation,
            self.content == held.content,
        )
    }

    fn check(&self) -> Result<(), String> {
        if self.content == "foreign" {
            Err("names objects Nanami does not own".into())
        } else {
            Ok(())
        }
    }
}

fn gen(generation: u64) -> Gen {
    Gen {
        generation,
        content: "ok",
    }
}

fn cred() -> Credential {
    Credential("nmn_secret".into())
}

fn resumed(lkg: Option<Gen>) -> Start<Gen> {
    Start {
        credential: Some(cred()),
        lkg,
        token: false,
    }
}

fn polls<D: DesiredState>(actions: &[Action<D>]) -> Vec<(usize, Option<D::Version>)> {
    actions
        .iter()
        .filter_map(|a| {
            if let Action::Poll { manager, after } = a {
                Some((*manager, after.clone()))
            } else {
                None
            }
        })
        .collect()
}

fn wait<D: DesiredState>(actions: &[Action<D>]) -> Option<Duration> {
    match actions.last() {
        Some(Action::Wait { until }) => Some(*until),
        _ => None,
    }
}

fn enrols<D: DesiredState>(actions: &[Action<D>]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Enrol { .. }))
}

fn applied<D: DesiredState>(actions: &[Action<D>]) -> Vec<D> {
    desired_in(actions, |a| matches!(a, Action::Apply(_)))
}

fn persisted<D: DesiredState>(actions: &[Action<D>]) -> Vec<D> {
    desired_in(actions, |a| matches!(a, Action::PersistLkg(_)))
}

/// The desired states that the actions `which` carry.
fn desired_in<D: DesiredState>(actions: &[Action<D>], which: fn(&Action<D>) -> bool) -> Vec<D> {
    actions
        .iter()
        .filter(|a| which(a))
        .filter_map(|a| {
            if let Action::Apply(d) | Action::PersistLkg(d) = a {
                Some(d.clone())
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn enrols_once_then_follows_with_the_saved_credential() {
    let mut agent = Agent::<Gen>::new(Config::new(1), 1);
    let out = agent.handle_start(
        ms(0),
        Start {
            credential: None,
            lkg: None,
            token: true,
        },
    );
    assert_eq!(out, vec![Action::Enrol { manager: 0 }]);
    let out = agent.handle_enrolled(ms(10), 0, cred());
    assert_eq!(
        out[0],
        Action::PersistCredential(cred()),
        "saved before use"
    );
    assert!(out.contains(&Action::Notify(Event::Enrolled { manager: 0 })));
    assert_eq!(polls(&out), vec![(0, None)]);
    // A second answer to the enrolment (a late duplicate) is ignored.
    assert!(agent.handle_enrolled(ms(11), 0, cred()).is_empty());
    // Following from then on, whatever happens: never an enrolment again.
    let mut now = ms(20);
    for failure in [
        Failure::Unreachable,
        Failure::Rejected,
        Failure::Unauthorized,
    ] {
        let out = agent.handle_poll_failed(now, 0, failure);
        assert!(!enrols(&out));
        now = wait(&out).unwrap_or(now);
        let out = agent.handle_tick(now);
        assert!(!enrols(&out));
        assert_eq!(polls(&out).len(), 1, "asked again at {now:?}");
    }
}

#[test]
fn resumes_after_restart_with_the_saved_credential_and_lkg() {
    let mut agent = Agent::new(Config::new(1), 2);
    let out = agent.handle_start(ms(0), resumed(Some(gen(5))));
    assert_eq!(
        out,
        vec![
            Action::Notify(Event::ServingLastKnownGood { version: 5 }),
            Action::Apply(gen(5)),
            // The first long-poll asks for the current state.
            Action::Poll {
                manager: 0,
                after: None
            },
        ]
    );
    // The manager has the same: nothing applied, the next poll waits past it.
    let out = agent.handle_desired(ms(5), 0, gen(5));
    assert!(applied(&out).is_empty() && persisted(&out).is_empty());
    assert_eq!(polls(&out), vec![(0, Some(5))]);
    let out = agent.handle_unchanged(ms(30_000), 0);
    assert_eq!(polls(&out), vec![(0, Some(5))]);
}

#[test]
fn without_a_credential_or_a_token_it_stops() {
    let mut agent = Agent::<Gen>::new(Config::new(1), 3);
    let out = agent.handle_start(
        ms(0),
        Start {
            credential: None,
            lkg: None,
            token: false,
        },
    );
    assert_eq!(out, vec![Action::Stop(Fatal::NotEnrolled)]);
    assert!(agent.is_stopped());
    assert!(agent.handle_tick(ms(100_000)).is_empty());
}

#[test]
fn a_refused_token_stops_an_unreachable_manager_is_retried() {
    let mut agent = Agent::<Gen>::new(Config::new(2), 4);
    let start = Start {
        credential: None,
        lkg: None,
        token: true,
    };
    agent.handle_start(ms(0), start);
    // Unreachable: the token goes to the next manager (redeemed once, atomically).
    let out = agent.handle_enrol_failed(ms(1), 0, Failure::Unreachable);
    assert!(out.contains(&Action::Enrol { manager: 1 }));
    let out = agent.handle_enrol_failed(ms(2), 1, Failure::Unauthorized);
    assert_eq!(
        out,
        vec![Action::Stop(Fatal::EnrolmentRefused { manager: 1 })]
    );
}

#[test]
fn a_refused_credential_is_said_and_never_spends_a_new_enrolment() {
    let mut agent = Agent::new(Config::new(1), 5);
    agent.handle_start(ms(0), resumed(Some(gen(3))));
    let out = agent.handle_poll_failed(ms(100), 0, Failure::Unauthorized);
    let Some(Action::Notify(Event::CredentialRefused {
        manager: 0,
        retry_in,
    })) = out.iter().find(|a| matches!(a, Action::Notify(_))).cloned()
    else {
        panic!("no CredentialRefused in {out:?}");
    };
    assert_eq!(wait(&out), Some(ms(100) + retry_in));
    assert!(!enrols(&out) && applied(&out).is_empty());
    let out = agent.handle_tick(ms(100) + retry_in);
    assert_eq!(polls(&out), vec![(0, None)], "the same credential, again");
    assert_eq!(agent.held(), Some(&gen(3)), "the last-known-good stays");
}

#[test]
fn lkg_refuses_an_older_generation_and_a_forked_one() {
    let mut agent = Agent::new(Config::new(1), 6);
    agent.handle_start(ms(0), resumed(Some(gen(5))));
    // A manager restored from an old backup offers generation 4.
    let out = agent.handle_desired(ms(10), 0, gen(4));
    assert!(out.contains(&Action::Notify(Event::Refused {
        offered: 4,
        why: Refusal::Older
    })));
    assert!(applied(&out).is_empty() && persisted(&out).is_empty());
    assert!(polls(&out).is_empty(), "asked again only after the backoff");
    let retry = wait(&out).expect("a retry");
    let out = agent.handle_tick(retry);
    assert_eq!(polls(&out), vec![(0, Some(5))]);
    // Generation 5 with other content: a forked history.
    let forked = Gen {
        generation: 5,
        content: "other",
    };
    let out = agent.handle_desired(retry, 0, forked);
    assert!(out.contains(&Action::Notify(Event::Refused {
        offered: 5,
        why: Refusal::Forked
    })));
    assert!(applied(&out).is_empty());
    // A newer one is saved, then applied.
    let retry = wait(&out).expect("a retry");
    agent.handle_tick(retry);
    let out = agent.handle_desired(retry, 0, gen(6));
    let persist = out.iter().position(|a| *a == Action::PersistLkg(gen(6)));
    let apply = out.iter().position(|a| *a == Action::Apply(gen(6)));
    assert!(persist.is_some() && persist < apply, "{out:?}");
    assert_eq!(agent.held(), Some(&gen(6)));
    assert_eq!(polls(&out), vec![(0, Some(6))]);
}

#[test]
fn a_gateway_refuses_a_desired_state_it_could_not_save() {
    let config = Config {
        apply_unsaved: false,
        ..Config::new(1)
    };
    let mut agent = Agent::new(config, 11);
    agent.handle_start(ms(0), resumed(Some(gen(5))));
    // Generation 6 is saved first; nothing is applied nor asked before the save.
    let out = agent.handle_desired(ms(10), 0, gen(6));
    assert_eq!(persisted(&out), vec![gen(6)]);
    assert!(
        applied(&out).is_empty() && polls(&out).is_empty(),
        "{out:?}"
    );
    assert_eq!(agent.held(), Some(&gen(5)));
    // A late answer while saving changes nothing.
    assert!(agent.handle_unchanged(ms(11), 0).is_empty());
    // The save failed: refused, generation 5 stays in force, asked again after
    // the backoff (past 5, so generation 6 comes again and is saved again).
    let out = agent.handle_persist_failed(ms(20), "disk full".into());
    assert_eq!(
        out.first(),
        Some(&Action::Notify(Event::Refused {
            offered: 6,
            why: Refusal::Unsaved("disk full".into())
        }))
    );
    assert!(
        applied(&out).is_empty() && polls(&out).is_empty(),
        "{out:?}"
    );
    assert_eq!(agent.held(), Some(&gen(5)));
    let retry = wait(&out).expect("a retry");
    assert!(
        retry > ms(20) && retry <= ms(20) + BACKOFF_FIRST,
        "{retry:?}"
    );
    assert!(
        agent.handle_persisted(retry).is_empty(),
        "nothing is being saved"
    );
    let out = agent.handle_tick(retry);
    assert_eq!(polls(&out), vec![(0, Some(5))]);
    let out = agent.handle_desired(retry, 0, gen(6));
    assert_eq!(persisted(&out), vec![gen(6)]);
    // Saved this time: applied, then the manager is asked past it.
    let out = agent.handle_persisted(retry + ms(1));
    assert_eq!(applied(&out), vec![gen(6)]);
    assert_eq!(polls(&out), vec![(0, Some(6))]);
    assert_eq!(agent.held(), Some(&gen(6)));
}

#[test]
fn a_client_applies_a_desired_state_it_could_not_save() {
    let mut agent = Agent::new(Config::new(1), 12);
    agent.handle_start(ms(0), resumed(Some(gen(5))));
    let out = agent.handle_desired(ms(10), 0, gen(6));
    assert_eq!(persisted(&out), vec![gen(6)]);
    assert_eq!(applied(&out), vec![gen(6)]);
    assert_eq!(polls(&out), vec![(0, Some(6))]);
    assert!(agent
        .handle_persist_failed(ms(11), "disk full".into())
        .is_empty());
    assert!(agent.handle_persisted(ms(11)).is_empty());
    assert_eq!(agent.held(), Some(&gen(6)));
}

#[test]
fn a_desired_state_failing_its_checks_is_refused() {
    let mut agent = Agent::new(Config::new(1), 7);
    agent.handle_start(ms(0), resumed(None));
    let foreign = Gen {
        generation: 1,
        content: "foreign",
    };
    let out = agent.handle_desired(ms(1), 0, foreign);
    assert!(matches!(
        out.first(),
        Some(Action::Notify(Event::Refused {
            why: Refusal::Invalid(_),
            ..
        }))
    ));
    assert!(applied(&out).is_empty() && agent.held().is_none());
}

/// Fails every long-poll of an agent with one manager; the waits.
fn waits_of(seed: u64, failures: usize) -> Vec<Duration> {
    let mut agent = Agent::new(Config::new(1), seed);
    let mut now = ms(0);
    agent.handle_start(now, resumed(None));
    let mut waits = Vec::new();
    for _ in 0..failures {
        let out = agent.handle_poll_failed(now, 0, Failure::Unreachable);
        let until = wait(&out).unwrap_or(now);
        waits.push(until - now);
        now = until;
        agent.handle_tick(now);
    }
    waits
}

#[test]
fn backoff_is_bounded_jittered_and_reset_by_an_answer() {
    let waits = waits_of(8, 20);
    for (n, wait) in waits.iter().enumerate() {
        let nominal = BACKOFF_FIRST
            .saturating_mul(1 << n.min(31))
            .min(BACKOFF_MAX);
        assert!(
            *wait >= nominal / 2 && *wait <= nominal,
            "failure {}: {wait:?} of {nominal:?}",
            n + 1
        );
    }
    assert!(waits[waits.len() - 1] <= BACKOFF_MAX && waits[waits.len() - 1] >= BACKOFF_MAX / 2);
    // Jittered: agents seeded apart do not retry together; the same seed repeats.
    assert_eq!(waits, waits_of(8, 20));
    let firsts: BTreeSet<Duration> = (0..50).map(|seed| waits_of(seed, 1)[0]).collect();
    assert!(
        firsts.len() > 45,
        "{} distinct first waits of 50",
        firsts.len()
    );
    // An answer resets it.
    let mut agent = Agent::new(Config::new(1), 9);
    agent.handle_start(ms(0), resumed(None));
    let mut now = ms(0);
    for _ in 0..10 {
        let out = agent.handle_poll_failed(now, 0, Failure::Rejected);
        now = wait(&out).unwrap_or(now);
        agent.handle_tick(now);
    }
    agent.handle_unchanged(now, 0);
    let out = agent.handle_poll_failed(now, 0, Failure::Rejected);
    assert!(wait(&out).unwrap_or(now) - now <= BACKOFF_FIRST);
}

#[test]
fn managers_rotate_on_unreachable_and_the_one_that_answers_sticks() {
    let mut agent = Agent::new(Config::new(3), 10);
    let out = agent.handle_start(ms(0), resumed(None));
    assert_eq!(polls(&out), vec![(0, None)]);
    // Manager 0 is down: 1 is asked at once, without a wait.
    let out = agent.handle_poll_failed(ms(1), 0, Failure::Unreachable);
    assert_eq!(polls(&out), vec![(1, None)]);
    assert_eq!(wait(&out), None);
    // 1 answers: the agent stays with it.
    let out = agent.handle_desired(ms(2), 1, gen(1));
    assert!(out.contains(&Action::Notify(Event::SwitchedManager {
        from: None,
        to: 1
    })));
    assert_eq!(polls(&out), vec![(1, Some(1))]);
    let out = agent.handle_unchanged(ms(30_002), 1);
    assert_eq!(polls(&out), vec![(1, Some(1))]);
    assert_eq!(agent.manager(), 1);
    // A late answer from a manager not asked is ignored.
    assert!(agent.handle_desired(ms(30_003), 0, gen(9)).is_empty());
    // 1 refuses (not a reachability problem): the agent stays with 1.
    let out = agent.handle_poll_failed(ms(30_004), 1, Failure::Rejected);
    let retry = wait(&out).expect("a retry");
    assert_eq!(polls(&agent.handle_tick(retry)), vec![(1, Some(1))]);
    // Every manager down: 2, 0 at once, then a wait before 1 again.
    let out = agent.handle_poll_failed(retry, 1, Failure::Unreachable);
    assert_eq!(polls(&out), vec![(2, Some(1))]);
    let out = agent.handle_poll_failed(retry, 2, Failure::Unreachable);
    assert_eq!(polls(&out), vec![(0, Some(1))]);
    let out = agent.handle_poll_failed(retry, 0, Failure::Unreachable);
    assert!(polls(&out).is_empty());
    let until = wait(&out).expect("a wait after a whole round");
    assert!(until > retry);
    assert!(
        polls(&agent.handle_tick(until - ms(1))).is_empty(),
        "not early"
    );
    assert_eq!(polls(&agent.handle_tick(until)), vec![(1, Some(1))]);
    let out = agent.handle_unchanged(until, 1);
    assert!(
        !out.iter().any(|a| matches!(a, Action::Notify(_))),
        "{out:?}"
    );
}

#[test]
fn reports_go_out_periodically_and_at_once_after_a_change() {
    let config = Config {
        report_every: Some(ms(5000)),
        ..Config::new(2)
    };
    let mut agent = Agent::new(config, 11);
    let out = agent.handle_start(ms(0), resumed(Some(gen(1))));
    assert!(out.contains(&Action::Report { manager: 0 }));
    assert_eq!(wait(&out), Some(ms(5000)));
    assert!(agent
        .handle_tick(ms(4999))
        .iter()
        .all(|a| !matches!(a, Action::Report { .. })));
    assert!(agent
        .handle_tick(ms(5000))
        .contains(&Action::Report { manager: 0 }));
    let out = agent.handle_status_changed(ms(6000));
    assert!(out.contains(&Action::Report { manager: 0 }));
    assert_eq!(wait(&out), Some(ms(11_000)));
    // After a switch, reports go to the manager in use.
    agent.handle_poll_failed(ms(6001), 0, Failure::Unreachable);
    assert!(agent
        .handle_applied(ms(6002))
        .contains(&Action::Report { manager: 1 }));
}

// --- Failover ---

fn gw(id: &str) -> GatewayId {
    GatewayId::new(id).expect("gateway id")
}

fn client_config(version: &str, gateways: &[(&str, &str)]) -> VersionedConfig {
    let choices = gateways
        .iter()
        .map(|(id, address)| GatewayChoice {
            gateway: gw(id),
            public_key: PrivateKey::from_bytes([7; 32]).public_key(),
            endpoint: "192.0.2.1:51820".parse().expect("endpoint"),
            allowed_ips: BTreeSet::new(),
            exit_routes: BTreeSet::new(),
            addresses: [address.parse().expect("address")].into(),
        })
        .collect();
    VersionedConfig {
        version: version.into(),
        config: NodeConfig {
            node: NodeId::new("laptop-1").expect("node"),
            workspace: WorkspaceId::new("acme").expect("workspace"),
            public_key: PrivateKey::from_bytes([9; 32]).public_key(),
            addresses: BTreeSet::new(),
            mtu: 1420,
            peers: Vec::new(),
            unassigned: BTreeSet::new(),
            gateways: BTreeMap::from([(NetworkId::new("corp").expect("network"), choices)]),
            exit: None,
        },
    }
}

fn policy() -> ProbePolicy {
    ProbePolicy {
        interval: ms(500),
        dead_after: ms(1500),
        hold_down: ms(5000),
    }
}

fn switches(actions: &[Action<VersionedConfig>]) -> Vec<BTreeSet<GatewayId>> {
    actions
        .iter()
        .filter_map(|a| {
            if let Action::SwitchGateways { down } = a {
                Some(down.clone())
            } else {
                None
            }
        })
        .collect()
}

/// A client following `a` then `b`, its tunnel up at 0 ms.
fn client() -> Agent<VersionedConfig> {
    let config = Config {
        failover: Some(policy()),
        ..Config::new(1)
    };
    let mut agent = Agent::new(config, 12);
    let lkg = client_config("v1", &[("gw-a", "100.64.0.1"), ("gw-b", "100.64.0.2")]);
    let start = Start {
        credential: Some(cred()),
        lkg: Some(lkg),
        token: false,
    };
    let out = agent.handle_start(ms(0), start);
    assert!(
        !out.iter().any(|a| matches!(a, Action::Probe { .. })),
        "no probes before the tunnel is up"
    );
    let out = agent.handle_applied(ms(0));
    let Some(Action::Probe { targets }) = out.first() else {
        panic!("no probe at once: {out:?}");
    };
    assert_eq!(targets.len(), 2);
    assert_eq!(wait(&out), Some(ms(500)));
    agent
}

#[test]
fn failover_moves_off_a_silent_gateway_and_back_after_the_hold_down() {
    let mut agent = client();
    let mut moves = Vec::new();
    // Both answer until 1000 ms; then `a` goes silent.
    for t in (0..=20_000).step_by(250) {
        let now = ms(t);
        let mut out = Vec::new();
        if t <= 1000 || t >= 6000 {
            out.extend(agent.handle_probe_reply(now, &gw("gw-a")));
        }
        out.extend(agent.handle_probe_reply(now, &gw("gw-b")));
        out.extend(agent.handle_tick(now));
        for down in switches(&out) {
            moves.push((t, down));
        }
    }
    assert_eq!(
        moves,
        vec![
            // Silent since 1000 ms: down at 2500 ms (dead_after), not before.
            (2500, BTreeSet::from([gw("gw-a")])),
            // Answering again from 6000 ms: back only after 5 s of steady answers.
            (11_000, BTreeSet::new()),
        ]
    );
}

#[test]
fn failover_probes_every_interval_and_follows_a_new_configuration() {
    let mut agent = client();
    let probes = (1..=8u64)
        .map(|k| agent.handle_tick(ms(k * 250)))
        .filter(|out| out.iter().any(|a| matches!(a, Action::Probe { .. })))
        .count();
    assert_eq!(probes, 4, "every 500 ms over 2 s");
    // `b` answers, `a` does not: `a` is down.
    agent.handle_probe_reply(ms(2000), &gw("gw-b"));
    assert_eq!(agent.down(), BTreeSet::from([gw("gw-a")]));
    // The manager replaces `a` by `c`: `a` is forgotten, `c` watched from now.
    agent.handle_tick(ms(2000));
    let out = agent.handle_desired(
        ms(2100),
        0,
        client_config("v2", &[("gw-c", "100.64.0.3"), ("gw-b", "100.64.0.2")]),
    );
    assert_eq!(switches(&out), vec![BTreeSet::new()]);
    let out = agent.handle_tick(ms(2500));
    let Some(Action::Probe { targets }) = out.first() else {
        panic!("no probe: {out:?}");
    };
    assert_eq!(
        targets.keys().cloned().collect::<Vec<_>>(),
        vec![gw("gw-b"), gw("gw-c")]
    );
}

#[test]
fn with_every_gateway_down_the_steadiest_is_taken_back_at_once() {
    let mut agent = client();
    // Both silent: both down.
    let out = agent.handle_tick(ms(1500));
    assert_eq!(
        switches(&out),
        vec![BTreeSet::from([gw("gw-a"), gw("gw-b")])]
    );
    // `b` answers again: it had never answered (no flapping history) and is the
    // only one: back at once, without the hold-down.
    let out = agent.handle_probe_reply(ms(1600), &gw("gw-b"));
    assert_eq!(switches(&out), vec![BTreeSet::from([gw("gw-a")])]);
}

proptest! {
    /// Whatever generations the managers offer, in whatever order, what is
    /// applied and saved only ever goes up, and every wait is within the bounds.
    #[test]
    fn applied_generations_only_go_up(
        offers in proptest::collection::vec((0u64..20, 0usize..3, any::<bool>()), 1..60),
        seed in any::<u64>(),
    ) {
        let mut agent = Agent::new(Config::new(3), seed);
        let mut now = ms(0);
        let mut out = agent.handle_start(now, resumed(Some(gen(5))));
        let mut highest = 5;
        for (generation, manager_failure, fails) in offers {
            // Answer whatever long-poll is out (or wake the agent).
            let asked = polls(&out).last().map(|(m, _)| *m);
            let Some(manager) = asked else {
                let until = wait(&out).unwrap_or(now);
                prop_assert!(until >= now);
                prop_assert!(until - now <= BACKOFF_MAX);
                now = until;
                out = agent.handle_tick(now);
                continue;
            };
            out = if fails {
                let failure = [Failure::Unreachable, Failure::Rejected, Failure::Unauthorized][manager_failure];
                agent.handle_poll_failed(now, manager, failure)
            } else {
                agent.handle_desired(now, manager, gen(generation))
            };
            for d in applied(&out).iter().chain(&persisted(&out)) {
                prop_assert!(d.generation > highest, "{} after {}", d.generation, highest);
            }
            if let Some(d) = applied(&out).last() {
                highest = d.generation;
            }
            prop_assert!(!enrols(&out));
            prop_assert_eq!(agent.held().map(|d| d.generation), Some(highest));
        }
    }
}
