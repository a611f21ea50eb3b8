//! Client-side failover: which of a client's gateways it treats as dead, from its
//! own probes through the tunnel, with a hold-down before it trusts a gateway that
//! came back.
//!
//! A client agent probes every gateway of its failover lists
//! ([`crate::NodeConfig::gateways`]) every [`ProbePolicy::interval`], reports each
//! reply here, and routes each network to the first gateway of its list that
//! [`Failover`] does not call down ([`crate::NodeConfig::failed_over`]). So a dead
//! primary costs at most [`ProbePolicy::dead_after`] plus one probe interval, and
//! the manager is not needed for it.
//!
//! - A gateway is *down* once it has not answered for `dead_after` (counted from
//!   its last reply, or from when it started being watched).
//! - A down gateway that had answered before it went down is *up* again once it
//!   has answered without a gap of `dead_after` for `hold_down`: a gateway that
//!   flaps never gets its clients back until it has been steady that long.
//! - A gateway that had never answered (one that came up after the client, or that
//!   was slow to add the client as a peer) has no history of flapping: its first
//!   answer makes it *up*.
//!
//! The manager's view wins: the lists, their order and their members come from the
//! manager; local knowledge only ever skips a gateway that does not answer this
//! client. Forgetting a gateway the manager no longer lists also forgets its
//! history.
//!
//! Pure: time enters as a [`Duration`] since any fixed origin (a monotonic clock in
//! the agent, a counter in tests).
//!
//! ```
//! use std::time::Duration;
//! use nanami_model::{Failover, GatewayId, ProbePolicy};
//! let ms = Duration::from_millis;
//! let policy = ProbePolicy { interval: ms(500), dead_after: ms(1500), hold_down: ms(10_000) };
//! let gw = GatewayId::new("gw-a").unwrap();
//! let mut f = Failover::new(policy);
//! f.watch([gw.clone()], ms(0));
//! f.reply(&gw, ms(400));
//! assert!(f.evaluate(ms(1000)).is_empty());
//! assert!(f.evaluate(ms(1900)).contains(&gw)); // 1.5 s without a reply
//! for t in (2000..=12_000).step_by(500) {
//!     f.reply(&gw, ms(t));
//!     let down = f.evaluate(ms(t)).contains(&gw);
//!     assert_eq!(down, t < 12_000); // back only after 10 s of steady replies
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::config::GatewayChoice;
use crate::id::{GatewayId, NetworkId};

/// How a client probes its gateways and decides they are dead or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePolicy {
    /// Time between two probes of one gateway.
    pub interval: Duration,
    /// Silence after which a gateway is down.
    pub dead_after: Duration,
    /// Steady answers a down gateway needs before it is used again.
    pub hold_down: Duration,
}

impl Default for ProbePolicy {
    /// A probe every 500 ms, down after 1.5 s of silence (three probes lost in a
    /// row, so one lost packet never moves a client), back after 30 s of steady
    /// answers. An outage then lasts about `dead_after` plus one interval plus a
    /// route change: under 2.5 s. The probes cost a 28-byte ICMP echo (plus
    /// WireGuard's 32 bytes) per gateway per interval.
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            dead_after: Duration::from_millis(1500),
            hold_down: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Watch {
    /// The last reply, or when watching began.
    heard: Duration,
    /// It has answered at least once since watching began.
    answered: bool,
    down: bool,
    /// While down: it had answered before going down, so it serves a hold-down.
    held: bool,
    /// While down: the start of the current run of steady replies.
    steady_since: Option<Duration>,
}

/// What a client agent knows of its gateways from its own probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    policy: ProbePolicy,
    watched: BTreeMap<GatewayId, Watch>,
    down: BTreeSet<GatewayId>,
}

impl Failover {
    /// Watching nothing yet.
    pub fn new(policy: ProbePolicy) -> Self {
        Self {
            policy,
            watched: BTreeMap::new(),
            down: BTreeSet::new(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> ProbePolicy {
        self.policy
    }

    /// Watches exactly `gateways` from now on: new ones start up, with `now` as
    /// their last sign of life; ones no longer listed are forgotten.
    pub fn watch(&mut self, gateways: impl IntoIterator<Item = GatewayId>, now: Duration) {
        let keep: BTreeSet<GatewayId> = gateways.into_iter().collect();
        self.watched.retain(|g, _| keep.contains(g));
        self.down.retain(|g| keep.contains(g));
        for g in keep {
            self.watched.entry(g).or_insert(Watch {
                heard: now,
                answered: false,
                down: false,
                held: false,
                steady_since: None,
            });
        }
    }

    /// `gateway` answered a probe at `now`. Replies from gateways not watched are
    /// ignored.
    pub fn reply(&mut self, gateway: &GatewayId, now: Duration) {
        let dead_after = self.policy.dead_after;
        if let Some(w) = self.watched.get_mut(gateway) {
            if w.down && (w.steady_since.is_none() || gap(w.heard, now) >= dead_after) {
                w.steady_since = Some(now);
            }
            w.heard = w.heard.max(now);
            w.answered = true;
        }
    }

    /// Updates who is down at `now` and returns the down set.
    pub fn evaluate(&mut self, now: Duration) -> &BTreeSet<GatewayId> {
        let ProbePolicy {
            dead_after,
            hold_down,
            ..
        } = self.policy;
        for (id, w) in &mut self.watched {
            let silent = gap(w.heard, now) >= dead_after;
            if !w.down {
                if silent {
                    w.down = true;
                    w.held = w.answered;
                    w.steady_since = None;
                    self.down.insert(id.clone());
                }
                continue;
            }
            if silent {
                w.steady_since = None;
            } else if !w.held
                || w.steady_since
                    .is_some_and(|since| gap(since, now) >= hold_down)
            {
                w.down = false;
                w.steady_since = None;
                self.down.remove(id);
            }
        }
        &self.down
    }

    /// The gateways down as of the last [`Failover::evaluate`].
    pub fn down(&self) -> &BTreeSet<GatewayId> {
        &self.down
    }

    /// The gateways a client with failover lists `lists` treats as dead: the down
    /// ones, except that when every gateway of a network is down, the one answering
    /// steadily the longest is taken back at once, without waiting out the
    /// hold-down (a gateway that may still flap beats none). Ties go to the earlier
    /// in the list. Such a gateway is then taken back for all its networks.
    ///
    /// Taking back only the steadiest keeps a client where it is: another gateway
    /// that starts answering later does not pull it away before its own hold-down.
    pub fn down_for(&self, lists: &BTreeMap<NetworkId, Vec<GatewayChoice>>) -> BTreeSet<GatewayId> {
        let mut down = self.down.clone();
        for list in lists.values() {
            if !list.iter().all(|c| self.down.contains(&c.gateway)) {
                continue;
            }
            let steadiest = list
                .iter()
                .filter_map(|c| Some((self.watched.get(&c.gateway)?.steady_since?, &c.gateway)))
                .min_by_key(|(since, _)| *since);
            if let Some((_, gateway)) = steadiest {
                down.remove(gateway);
            }
        }
        down
    }
}

fn gap(from: Duration, to: Duration) -> Duration {
    to.saturating_sub(from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn policy() -> ProbePolicy {
        ProbePolicy {
            interval: ms(500),
            dead_after: ms(1500),
            hold_down: ms(5000),
        }
    }

    fn gw(id: &str) -> GatewayId {
        GatewayId::new(id).unwrap()
    }

    #[test]
    fn a_single_lost_probe_moves_nobody() {
        let mut f = Failover::new(policy());
        f.watch([gw("a")], ms(0));
        for t in (0..10_000).step_by(500) {
            // Every third probe is lost.
            if t % 1500 != 0 {
                f.reply(&gw("a"), ms(t));
            }
            assert!(f.evaluate(ms(t)).is_empty(), "down at {t} ms");
        }
    }

    #[test]
    fn silence_marks_down_at_the_bound_not_before() {
        let mut f = Failover::new(policy());
        f.watch([gw("a"), gw("b")], ms(0));
        f.reply(&gw("a"), ms(1000));
        f.reply(&gw("b"), ms(1000));
        assert!(f.evaluate(ms(2499)).is_empty());
        f.reply(&gw("b"), ms(2400));
        assert_eq!(f.evaluate(ms(2500)), &BTreeSet::from([gw("a")]));
    }

    #[test]
    fn a_flapping_gateway_stays_down_until_steady_for_the_hold_down() {
        let mut f = Failover::new(policy());
        f.watch([gw("a")], ms(0));
        f.reply(&gw("a"), ms(0));
        assert!(f.evaluate(ms(1500)).contains(&gw("a")));
        // Answers for 4 s, silent for 2 s, answers again: the hold-down restarts.
        for t in (2000..6000).step_by(500) {
            f.reply(&gw("a"), ms(t));
            assert!(f.evaluate(ms(t)).contains(&gw("a")));
        }
        assert!(f.evaluate(ms(7600)).contains(&gw("a")));
        let mut back = None;
        for t in (8000..20_000).step_by(500) {
            f.reply(&gw("a"), ms(t));
            if back.is_none() && !f.evaluate(ms(t)).contains(&gw("a")) {
                back = Some(t);
            }
        }
        assert_eq!(back, Some(13_000));
    }

    #[test]
    fn with_every_gateway_down_an_answering_one_is_taken_back_at_once() {
        let lists = lists(&[("one", &["a", "b"]), ("two", &["c"])]);
        let mut f = Failover::new(policy());
        f.watch([gw("a"), gw("b"), gw("c")], ms(0));
        for g in ["a", "b", "c"] {
            f.reply(&gw(g), ms(0));
        }
        f.reply(&gw("b"), ms(1000));
        assert_eq!(f.evaluate(ms(2000)), &BTreeSet::from([gw("a"), gw("c")]));
        // `a` answers again while `b` is alive: the hold-down applies.
        f.reply(&gw("a"), ms(2000));
        f.reply(&gw("b"), ms(2000));
        f.evaluate(ms(2000));
        assert!(f.down_for(&lists).contains(&gw("a")));
        // `c` answers again and is its network's only gateway: back at once.
        f.reply(&gw("c"), ms(2000));
        f.evaluate(ms(2000));
        assert_eq!(f.down_for(&lists), BTreeSet::from([gw("a")]));
        assert!(f.down().contains(&gw("c")));
    }

    fn lists(networks: &[(&str, &[&str])]) -> BTreeMap<NetworkId, Vec<GatewayChoice>> {
        let choice = |id: &str| GatewayChoice {
            gateway: gw(id),
            public_key: crate::PrivateKey::from_bytes([7; 32]).public_key(),
            endpoint: "192.0.2.1:51820".parse().unwrap(),
            allowed_ips: BTreeSet::new(),
            exit_routes: BTreeSet::new(),
            addresses: BTreeSet::new(),
        };
        networks
            .iter()
            .map(|(n, gws)| {
                (
                    NetworkId::new(*n).unwrap(),
                    gws.iter().map(|g| choice(g)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_gateway_that_never_answered_is_up_at_its_first_answer() {
        let mut f = Failover::new(policy());
        f.watch([gw("a"), gw("b")], ms(0));
        f.reply(&gw("a"), ms(0));
        // `b` is slow to start: down, but with no history of flapping.
        assert_eq!(f.evaluate(ms(1500)), &BTreeSet::from([gw("a"), gw("b")]));
        f.reply(&gw("a"), ms(1600));
        f.reply(&gw("b"), ms(1600));
        assert_eq!(f.evaluate(ms(1600)), &BTreeSet::from([gw("a")]));
    }

    #[test]
    fn with_every_gateway_down_the_client_stays_on_the_steadiest() {
        // The primary `a` dies while the standby `b` is still serving its
        // hold-down; the client takes `b` back at once. When `a` answers again,
        // `b` has been steady longer: the client stays on `b`.
        let lists = lists(&[("one", &["a", "b"])]);
        let mut f = Failover::new(policy());
        f.watch([gw("a"), gw("b")], ms(0));
        for t in (0..=2000).step_by(500) {
            f.reply(&gw("a"), ms(t));
            f.reply(&gw("b"), ms(t.min(500)));
            f.evaluate(ms(t));
        }
        assert_eq!(f.down(), &BTreeSet::from([gw("b")]));
        for t in (2500..=4500).step_by(500) {
            f.reply(&gw("b"), ms(t));
            f.evaluate(ms(t));
        }
        assert_eq!(f.down(), &BTreeSet::from([gw("a"), gw("b")]));
        assert_eq!(f.down_for(&lists), BTreeSet::from([gw("a")]));
        for t in (5000..7500).step_by(500) {
            f.reply(&gw("a"), ms(t));
            f.reply(&gw("b"), ms(t));
            f.evaluate(ms(t));
            assert_eq!(f.down_for(&lists), BTreeSet::from([gw("a")]), "at {t} ms");
        }
        // `b`'s hold-down ends (steady since 2500 ms), then `a`'s (since 5000 ms).
        f.reply(&gw("b"), ms(7500));
        assert_eq!(f.evaluate(ms(7500)), &BTreeSet::from([gw("a")]));
        for t in (7500..=10_000).step_by(500) {
            f.reply(&gw("a"), ms(t));
            f.reply(&gw("b"), ms(t));
        }
        assert!(f.evaluate(ms(10_000)).is_empty());
    }

    #[test]
    fn forgetting_a_gateway_forgets_its_history() {
        let mut f = Failover::new(policy());
        f.watch([gw("a"), gw("b")], ms(0));
        assert_eq!(f.evaluate(ms(2000)).len(), 2);
        f.watch([gw("b")], ms(2000));
        assert_eq!(f.down(), &BTreeSet::from([gw("b")]));
        f.watch([gw("a"), gw("b")], ms(2000));
        assert_eq!(f.evaluate(ms(2100)), &BTreeSet::from([gw("b")]));
        f.reply(&gw("zz"), ms(2100));
        assert_eq!(f.evaluate(ms(2200)).len(), 1);
    }
}
